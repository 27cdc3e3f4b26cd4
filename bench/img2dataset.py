"""Contender: img2dataset, the usual tool for downloading image URL lists, on the same URLs as raw.

img2dataset (a pinned version, :data:`IMG2DATASET_VERSION`) runs in its own virtualenv,
``bench/.venvs/img2dataset/`` (git-ignored), made once by :func:`ensure_img2dataset` from
``bench/img2dataset-requirements.txt``; it never enters the project's lock. :func:`run_img2dataset`
runs it as a subprocess with ``processes × threads`` like Harvest's worker slots × fetch threads,
``files`` output and no resizing *nor re-encoding* (``--disable_all_reencoding True``: the stored
bytes are the served bytes), then reads its per-shard parquet files for what happened to each URL.

    python -m bench.img2dataset --urls 2000     # raw and img2dataset, 2 processes × 32 threads
    python -m bench.img2dataset --urls 20000 --json bench/tmp/img2dataset-20000.json

Like :mod:`bench.e2e`, the CLI serves the image set with a local nginx (a stub_status location is
added to read the peak number of open connections: all URLs are on one host, so that is the peak
per-host concurrency the server saw), warms the page cache and the server with 500 raw GETs, runs raw (best of
:data:`bench.e2e.RAW_THREADS`) and then img2dataset, and checks every file img2dataset stored
against the image set (sha256 of all, byte for byte for a sample).

What img2dataset is asked to do, and why:

- ``--resize_mode no`` alone still decodes and re-encodes every image to JPEG (PNGs included);
  ``--disable_all_reencoding True`` returns the received bytes untouched (no decode, so no check
  that they are an image at all: "success" means "a body arrived"). Files are named ``<key>.jpg``
  whatever their format (its ``encode_format``).
- ``--extract_exif False`` by default (Harvest parses no EXIF); ``extract_exif=True`` is
  img2dataset's own default and costs CPU. ``--compute_hash sha256`` is its default and kept
  (Harvest hashes every body too).
- X-Robots-Tag: img2dataset's default (skip ``noai``, ``noimageai``, ``noindex``, ``noimageindex``)
  is kept; nginx sends no such header here, so it changes nothing.
- Shards: one shard is one process's work, so ``number_sample_per_shard`` is
  ``ceil(N / processes)`` capped at img2dataset's default of 10,000 (with the default, 2,000 URLs
  would be one shard and one busy process).
- ``--retries``: :data:`DEFAULT_RETRIES` (Harvest makes up to 4 attempts); img2dataset retries at
  once, on any error. Its default is 0.
- ``NO_ALBUMENTATIONS_UPDATE=1`` (else every process asks PyPI for a newer albumentations at import)
  and ``WANDB_MODE=disabled``.
- With ``ca_bundle``, ``SSL_CERT_FILE`` points at it: img2dataset fetches with ``urllib.request``
  and OpenSSL's default verify paths read that variable.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import http.client
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.e2e import RssSampler
from bench.nginx import Nginx, NginxError

__all__ = [
    "ConnectionProbe",
    "DEFAULT_PROCESSES",
    "DEFAULT_RETRIES",
    "DEFAULT_THREADS",
    "IMG2DATASET_VERSION",
    "StatusNginx",
    "ensure_img2dataset",
    "run_img2dataset",
    "start_status_server",
    "verify_files",
]

IMG2DATASET_VERSION = "1.47.0"
BENCH_DIR = Path(__file__).resolve().parent
VENV_DIR = BENCH_DIR / ".venvs" / "img2dataset"
REQUIREMENTS = BENCH_DIR / "img2dataset-requirements.txt"
# Harvest's bench setting: 2 worker slots × 32 fetch threads (= the 64 requests per host e2e allows).
DEFAULT_PROCESSES = 2
DEFAULT_THREADS = 32
DEFAULT_RETRIES = 3  # Harvest: max_attempts = 4, the first one included
MAX_SAMPLES_PER_SHARD = 10_000  # img2dataset's default number_sample_per_shard
OOM_SHARD_COUNT = 5  # img2dataset's default: shard folders are named 00000, 00001, ...
ENCODE_FORMAT = "jpg"  # img2dataset's default: the extension of every stored file
CHILD_ENV = {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "WANDB_MODE": "disabled",
    "WANDB_SILENT": "true",
    "PYTHONUNBUFFERED": "1",
}

# Run inside img2dataset's venv (pyarrow is there, not in the project's): one JSON object per URL.
_READ_PARQUET = r"""
import glob, json, sys
import pyarrow.parquet as pq
for path in sorted(glob.glob(sys.argv[1] + "/*.parquet")):
    table = pq.read_table(path)
    columns = [c for c in ("url", "key", "status", "error_message", "sha256") if c in table.schema.names]
    for row in table.select(columns).to_pylist():
        print(json.dumps(row))
"""


# ---- the virtualenv ---------------------------------------------------------------------------
def _base_python() -> str:
    # img2dataset imports imghdr, which Python 3.13 removed.
    if sys.version_info < (3, 13):
        return sys.executable
    for name in ("python3.12", "python3.11"):
        if found := shutil.which(name):
            return found
    raise RuntimeError("img2dataset needs Python 3.11 or 3.12 (imghdr): install one and retry")


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(CHILD_ENV)
    env.update(extra or {})
    return env


def ensure_img2dataset(*, log: bool = True) -> Path:
    """The python of ``bench/.venvs/img2dataset/``, made (once) with the pinned requirements.

    A stamp holding the requirements file's sha256 makes a second call free; changing the pins
    reinstalls. Concurrent callers wait on a lock file instead of installing twice.
    """
    python = VENV_DIR / "bin" / "python"
    stamp = VENV_DIR / ".installed"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()

    def ready() -> bool:
        return python.exists() and stamp.exists() and stamp.read_text().strip() == wanted

    if ready():
        return python
    VENV_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV_DIR.parent / "img2dataset.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready():
            return python
        if log:
            print(f"img2dataset: installing {IMG2DATASET_VERSION} into {VENV_DIR}", flush=True)
        stamp.unlink(missing_ok=True)
        if not python.exists():
            subprocess.run([_base_python(), "-m", "venv", str(VENV_DIR)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True, env=_child_env())
        check = subprocess.run(
            [
                str(python),
                "-c",
                "import importlib.metadata as m, img2dataset.main; print(m.version('img2dataset'))",
            ],
            capture_output=True,
            text=True,
            env=_child_env(),
        )
        if check.returncode != 0 or check.stdout.strip() != IMG2DATASET_VERSION:
            raise RuntimeError(f"img2dataset does not import in {VENV_DIR}:\n{check.stderr[-2000:]}")
        stamp.write_text(wanted + "\n")
    return python


# ---- one run --------------------------------------------------------------------------------------
def _error_kind(message: str | None) -> str:
    """img2dataset keeps ``str(exception)``; fold it into a few kinds (no URLs, no ports)."""
    if not message:
        return "unknown"
    if m := re.match(r"HTTP Error (\d+)", message):
        return f"http {m.group(1)}"
    if "timed out" in message:
        return "timeout"
    if m := re.match(r"<urlopen error (.*)>$", message, re.S):
        inner = m.group(1)
        if ssl := re.search(r"\[SSL: ([A-Z_]+)\]", inner):
            return f"ssl {ssl.group(1)}"
        if errno := re.match(r"\[Errno -?\d+\] (.*)", inner):
            return errno.group(1)
        return inner[:80]
    return message[:80]


def _shard_size(count: int, processes: int) -> int:
    return max(1, min(MAX_SAMPLES_PER_SHARD, math.ceil(count / max(1, processes))))


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM then SIGKILL to the process group we gave img2dataset (its pid), then reap it."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def run_img2dataset(
    urls: list[str],
    out_dir: Path,
    *,
    processes: int = DEFAULT_PROCESSES,
    threads: int = DEFAULT_THREADS,
    ca_bundle: Path | None = None,
    timeout: float = 10,
    retries: int = DEFAULT_RETRIES,
    extract_exif: bool = False,
    number_sample_per_shard: int | None = None,
    wall_timeout: float | None = None,
) -> dict[str, Any]:
    """Download ``urls`` with img2dataset into ``out_dir/dataset``; return its figures.

    ``out_dir`` gets ``urls.txt`` (the list), ``img2dataset.log`` (its output) and ``dataset/``
    (which must not hold an earlier run: img2dataset would skip the shards it finds done). CPU
    seconds are the user+system time of its whole process tree (``RUSAGE_CHILDREN`` around the
    wait: exact, as img2dataset reaps its pool and logger); the peak RSS is sampled every 0.2 s.
    """
    python = ensure_img2dataset()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = out_dir / "dataset"
    if dataset.exists() and any(dataset.iterdir()):
        raise ValueError(f"{dataset} is not empty: img2dataset would skip the shards it finds there")
    url_list = out_dir / "urls.txt"
    url_list.write_text("".join(u + "\n" for u in urls))
    per_shard = number_sample_per_shard or _shard_size(len(urls), processes)
    cmd = [
        str(python.parent / "img2dataset"),
        "--url_list",
        str(url_list),
        "--input_format",
        "txt",
        "--output_folder",
        str(dataset),
        "--output_format",
        "files",
        "--resize_mode",
        "no",
        "--disable_all_reencoding",
        "True",
        "--extract_exif",
        str(extract_exif),
        "--processes_count",
        str(processes),
        "--thread_count",
        str(threads),
        "--number_sample_per_shard",
        str(per_shard),
        "--timeout",
        str(timeout),
        "--retries",
        str(retries),
    ]
    env = _child_env({"SSL_CERT_FILE": str(ca_bundle)} if ca_bundle else None)
    log_path = out_dir / "img2dataset.log"
    limit = wall_timeout or max(600.0, len(urls) / 20)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=out_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        sampler = RssSampler(proc.pid)
        try:
            code = proc.wait(limit)
        except BaseException:
            _stop_group(proc)
            raise
        finally:
            sampler.stop()
        seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if code != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"img2dataset exited with {code} (log {log_path}):\n{tail}")

    read = subprocess.run(
        [str(python), "-c", _READ_PARQUET, str(dataset)], capture_output=True, text=True, env=_child_env()
    )
    if read.returncode != 0:
        raise RuntimeError(f"could not read img2dataset's parquet files:\n{read.stderr[-2000:]}")
    rows = {}
    for line in read.stdout.splitlines():
        row = json.loads(line)
        rows[row["url"]] = row
    fetched_urls: list[str] = []
    files: dict[str, str] = {}
    errors: Counter[str] = Counter()
    for url in urls:
        row = rows.get(url)
        if row is None:
            errors["no result (shard failed)"] += 1
        elif row["status"] == "success":
            fetched_urls.append(url)
            key = row["key"]
            files[url] = str(dataset / key[:OOM_SHARD_COUNT] / f"{key}.{ENCODE_FORMAT}")
        else:
            errors[_error_kind(row.get("error_message"))] += 1
    stats = [json.loads(p.read_text()) for p in sorted(dataset.glob("*_stats.json"))]
    window = max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats) if stats else None
    rss = sampler.figures()
    return {
        "name": "img2dataset",
        "version": IMG2DATASET_VERSION,
        "urls": len(urls),
        "seconds": round(seconds, 3),
        "urls_per_s": round(len(urls) / seconds, 1),
        # From the first shard's start to the last one's end: without interpreter start and imports.
        "download_window_s": round(window, 3) if window else None,
        "download_window_urls_per_s": round(len(urls) / window, 1) if window else None,
        "fetched": len(fetched_urls),
        "fetched_urls": fetched_urls,
        "files": files,
        "errors": errors,
        "shards": len(stats),
        "stats_successes": sum(s["successes"] for s in stats),
        "cpu_s": round(cpu_s, 2),
        "peak_rss_mb": round(rss["peak_rss_bytes"] / 2**20, 1),
        "peak_single_process_rss_mb": round(rss["peak_single_process_rss_bytes"] / 2**20, 1),
        "peak_processes": rss["peak_processes"],
        "processes": processes,
        "threads_per_process": threads,
        "number_sample_per_shard": per_shard,
        "retries": retries,
        "extract_exif": extract_exif,
        "command": cmd,
        "dataset": str(dataset),
        "log": str(log_path),
    }


def verify_files(
    result: dict[str, Any], root: Path, url_to_spec: dict[str, Any], *, sample: int = 200
) -> dict[str, Any]:
    """Every stored file against the image set's sha256; a random sample byte for byte."""
    files: dict[str, str] = result["files"]
    mismatched: list[str] = []
    for url, path in files.items():
        spec = url_to_spec[url]
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            mismatched.append(f"missing {path}")
            continue
        if hashlib.sha256(data).hexdigest() != spec.sha256:
            mismatched.append(path)
    picked = random.Random(0).sample(sorted(files), min(sample, len(files)))
    identical = sum(
        1 for url in picked if Path(files[url]).read_bytes() == (root / url_to_spec[url].path).read_bytes()
    )
    return {
        "files": len(files),
        "sha256_match": len(files) - len(mismatched),
        "byte_compared": len(picked),
        "byte_identical": identical,
        "mismatched": mismatched[:5],
    }


# ---- the server's view: open connections -------------------------------------------------------------
STATUS_PATH = "/.bench-stub-status"


class StatusNginx(Nginx):
    """bench.nginx's server plus nginx's stub_status at :data:`STATUS_PATH` (same port)."""

    def config(self, prefix: Path) -> str:
        text = super().config(prefix)
        anchor = "location / { }"
        return text.replace(anchor, f"{anchor}\n    location = {STATUS_PATH} {{ stub_status; }}", 1)


class ConnectionProbe:
    """Polls stub_status for the peak of open connections (and of requests being read or written).

    Every URL is on the one server, so the peak of open connections is the peak per-host concurrency
    the server saw. For a keep-alive client (raw: urllib3 pools) it includes idle pooled connections;
    img2dataset's urllib opens one connection per request (``Connection: close``), so there it counts
    requests between connect and close. Reading + Writing stays near 0 on loopback: nginx reads a
    request and sendfile()s a small file within one event-loop turn. The probe's own connection and
    request are subtracted. A poll every 20 ms sees a sustained level, not a shorter spike.
    """

    def __init__(self, base_url: str, interval: float = 0.02) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.interval = interval
        self.peak_in_flight = 0
        self.peak_connections = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="connection-probe", daemon=True)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            try:
                conn = conn or http.client.HTTPConnection(self.host, self.port, timeout=2)
                conn.request("GET", STATUS_PATH)
                text = conn.getresponse().read().decode()
                active = re.search(r"Active connections:\s*(\d+)", text)
                rw = re.search(r"Reading:\s*(\d+)\s*Writing:\s*(\d+)", text)
                if active and rw:
                    in_flight = int(rw.group(1)) + int(rw.group(2)) - 1
                    self.peak_in_flight = max(self.peak_in_flight, in_flight)
                    self.peak_connections = max(self.peak_connections, int(active.group(1)) - 1)
                    self.samples += 1
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(self.interval)
        if conn is not None:
            conn.close()

    @contextmanager
    def watch(self) -> Iterator[ConnectionProbe]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(5)

    def figures(self) -> dict[str, int | None]:
        ok = self.samples > 0
        return {
            "peak_in_flight": self.peak_in_flight if ok else None,
            "peak_connections": self.peak_connections if ok else None,
            "probe_samples": self.samples,
        }


# ---- the CLI --------------------------------------------------------------------------------------
def _raw_with_figures(server: Nginx, urls: list[str], threads: int, processes: int) -> dict[str, Any]:
    from bench.raw import run_raw

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler = RssSampler(os.getpid(), exclude=(server.pid,) if server.pid else ())
    probe = ConnectionProbe(server.base_url)
    try:
        with probe.watch():
            result = run_raw(urls, processes=processes, threads=threads)
    finally:
        sampler.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu_s"] = round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 2)
    result["peak_rss_mb"] = round(sampler.peak_total / 2**20, 1)
    result.update(probe.figures())
    return result


def start_status_server(root: Path) -> Nginx:
    """A :class:`StatusNginx` serving ``root``, or a plain :class:`Nginx` when stub_status is missing."""
    server = StatusNginx(root)
    try:
        return server.start()
    except NginxError as exc:  # an nginx without stub_status: no connection figures, same benchmark
        server.stop()
        print(f"nginx without stub_status ({str(exc).splitlines()[0]}): no connection figures", flush=True)
        return Nginx(root).start()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.e2e import RAW_THREADS, _warm_page_cache
    from bench.imageset import build_imageset
    from bench.raw import DEFAULT_PROCESSES as RAW_PROCESSES
    from bench.raw import run_raw

    ensure_img2dataset()
    images = build_imageset(args.urls)
    _warm_page_cache(images)
    report: dict[str, Any] = {
        "urls": args.urls,
        "imageset": images.summary(),
        "cpus": os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    server = start_status_server(images.root)
    try:
        urls = images.urls(server.base_url)
        print(f"nginx {server.base_url} (pid {server.pid}) serving {images.summary()}", flush=True)
        run_raw(urls[:500], threads=RAW_THREADS[0])  # warm-up: connections, nginx's file cache
        raw_threads = args.raw_threads or list(RAW_THREADS)
        report["raw_all"] = [_raw_with_figures(server, urls, t, RAW_PROCESSES) for t in raw_threads]
        report["raw"] = max(report["raw_all"], key=lambda r: r["urls_per_s"])
        out = Path(tempfile.mkdtemp(prefix="harvest-bench-img2dataset-", dir=args.tmp))
        try:
            probe = ConnectionProbe(server.base_url)
            with probe.watch():
                result = run_img2dataset(
                    urls,
                    out,
                    processes=args.processes,
                    threads=args.threads,
                    timeout=args.timeout,
                    retries=args.retries,
                    extract_exif=args.extract_exif,
                )
            result.update(probe.figures())
            by_url = dict(zip(urls, images.specs, strict=True))
            result["verify"] = verify_files(result, images.root, by_url)
        finally:
            if args.keep:
                print(f"kept img2dataset's output in {out}")
            else:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        server.stop()
    result["errors"] = dict(result["errors"])
    del result["fetched_urls"], result["files"]
    report["img2dataset"] = result
    report["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["img2dataset_over_raw"] = round(result["urls_per_s"] / report["raw"]["urls_per_s"], 3)
    return report


def format_report(report: dict[str, Any]) -> str:
    raw, i2d = report["raw"], report["img2dataset"]
    v = i2d["verify"]
    lines = [
        f"{report['urls']} URLs: {report['imageset']}; {report['cpus']} CPUs, load average "
        f"{report['load_avg_at_start'][0]} at start, {report['load_avg_at_end'][0]} at end",
        f"{'':13}{'URLs/s':>9}{'fetched':>15}{'CPU s':>8}{'peak RSS':>10}{'peak conns':>11}  notes",
    ]
    for r in report["raw_all"]:
        ok = f"{r['ok']}/{r['urls']}"
        lines.append(
            f"{'raw':13}{r['urls_per_s']:>9.0f}{ok:>15}{r['cpu_s']:>8.1f}"
            f"{r['peak_rss_mb']:>7.0f} MB{str(r['peak_connections']):>11}  "
            f"{r['processes']} processes × {r['threads_per_process']} threads, urllib3 keep-alive"
        )
    fetched = f"{i2d['fetched']}/{i2d['urls']}"
    lines.append(
        f"{'img2dataset':13}{i2d['urls_per_s']:>9.0f}{fetched:>15}{i2d['cpu_s']:>8.1f}"
        f"{i2d['peak_rss_mb']:>7.0f} MB{str(i2d['peak_connections']):>11}  "
        f"{i2d['version']}, {i2d['processes']} processes × {i2d['threads_per_process']} threads, "
        f"{i2d['shards']} shards of ≤{i2d['number_sample_per_shard']}; "
        f"{i2d['download_window_urls_per_s']} URLs/s between its first shard's start and last one's end"
    )
    lines.append(
        f"img2dataset/raw = {report['img2dataset_over_raw']}  (raw: best of {len(report['raw_all'])}, "
        f"{raw['threads_per_process']} threads)"
    )
    lines.append(
        "peak conns: open connections nginx saw (one host: the per-host concurrency), polled every 20 ms"
    )
    if i2d["errors"]:
        lines.append(f"img2dataset errors: {i2d['errors']}")
    lines.append(
        f"img2dataset's files: {v['sha256_match']}/{v['files']} match the image set's sha256, "
        f"{v['byte_identical']}/{v['byte_compared']} sampled byte-identical to the served files"
        + (f"; mismatched: {v['mismatched']}" if v["mismatched"] else "")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.e2e import _terminate_cleanly

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--urls", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=DEFAULT_PROCESSES)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="per process")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES)
    parser.add_argument("--timeout", type=float, default=10)
    parser.add_argument(
        "--extract-exif", action="store_true", help="img2dataset's default, off here (Harvest parses none)"
    )
    parser.add_argument(
        "--raw-threads", type=int, nargs="+", help="raw's thread counts (default: bench.e2e's)"
    )
    parser.add_argument("--tmp", type=Path, default=None, help="where img2dataset writes (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep img2dataset's output folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    with _terminate_cleanly():
        report = run(args)
    text = format_report(report)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**report, "table": text}, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
