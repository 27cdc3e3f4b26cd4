"""Benchmark: the Harvest engine vs a plain urllib3 thread pool, same URLs, same nginx, one run.

    .venv/bin/python -m bench.engine                 # 20,000 JPEGs, results in bench/results/engine.json
    .venv/bin/python -m bench.engine --urls 2000 --rounds 1 --no-save

The baseline only GETs each URL and writes the bytes to a file. The engine does everything it does
in production: URL checks, address guard (127.0.0.1 allowed explicitly), per-host slots, streaming
with caps and deadlines, SHA-256, sniffing, Pillow verification, atomic content-addressed storage.
Rounds alternate baseline / engine and start from empty output directories.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3

from bench.imageset import ImageSpec, build_imageset
from bench.nginx import Nginx
from include.harvest.fetch import fetch_batch
from include.harvest.settings import FetchSettings
from include.harvest.storage import ContentAddressedStore

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "tmp"


def run_baseline(urls: list[str], out: Path, concurrency: int) -> tuple[float, int]:
    """Plain urllib3: GET, write the bytes. Returns (seconds, URLs fetched with 200)."""
    http = urllib3.PoolManager(maxsize=concurrency, block=False)
    timeout = urllib3.Timeout(connect=5, read=10)

    def one(item: tuple[int, str]) -> bool:
        index, url = item
        response = http.request("GET", url, timeout=timeout, retries=False)
        if response.status != 200:
            return False
        with open(out / f"{index}.jpg", "wb") as file:
            file.write(response.data)
        return True

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as executor:
        ok = sum(executor.map(one, enumerate(urls)))
    return time.perf_counter() - started, ok


def run_engine(urls: list[str], out: Path, settings: FetchSettings) -> tuple[float, Counter[str]]:
    store = ContentAddressedStore(f"file://{out}")
    started = time.perf_counter()
    results = fetch_batch(urls, settings, store=store)
    elapsed = time.perf_counter() - started
    return elapsed, Counter(str(r.status) for r in results)


def _engine_process(share: tuple[list[str], str, FetchSettings]) -> dict[str, Any]:
    urls, out_dir, settings = share
    store = ContentAddressedStore(Path(out_dir).as_uri())
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.time()  # wall clock: comparable across the processes
    results = fetch_batch(urls, settings, store=store)
    finished = time.time()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "started": started,
        "finished": finished,
        "statuses": Counter(str(r.status) for r in results),
        "fetched": [r.url for r in results if r.ok],
        # the batch's CPU, without the interpreter's start and imports
        "cpu_s": usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime,
        "max_rss_bytes": usage.ru_maxrss * 1024,  # Linux: KiB
    }


def run_engine_processes(
    urls: list[str], settings: FetchSettings, *, processes: int, out_dir: Path | None = None
) -> dict[str, Any]:
    """Harvest's engine without Airflow: ``fetch_batch`` over a share of ``urls`` in each of
    ``processes`` new processes (as many as Harvest's worker slots), storing into ``out_dir`` (a
    temporary folder, removed, by default).

    The same work per URL as a batch task, with nothing around it: no task life cycle, no list
    reading or planning, no checkpoints, no staging in Postgres. Its rate is the ceiling of Harvest
    on the same machine with the same settings; what Harvest loses to it is orchestration.
    """
    from bench.raw import run_in_processes

    target = Path(tempfile.mkdtemp(prefix="harvest-bench-engine-")) if out_dir is None else out_dir
    try:
        parts, _ = run_in_processes(
            _engine_process,
            [(urls[p::processes], str(target), settings) for p in range(processes)],
            start_method="spawn",
        )
    finally:
        if out_dir is None:
            shutil.rmtree(target, ignore_errors=True)
    # From the first batch's start to the last one's end: process start and imports are not the
    # engine's (Harvest's worker processes are up before a run).
    seconds = max(p["finished"] for p in parts) - min(p["started"] for p in parts)
    statuses: Counter[str] = Counter()
    for part in parts:
        statuses.update(part["statuses"])
    return {
        "name": "engine",
        "urls": len(urls),
        "ok": statuses.get("ok", 0),
        "seconds": round(seconds, 3),
        "urls_per_s": round(len(urls) / seconds, 1),
        "processes": processes,
        "threads_per_process": settings.concurrency,
        "statuses": dict(statuses),
        "cpu_s": round(sum(p["cpu_s"] for p in parts), 2),
        "peak_rss_bytes": sum(p["max_rss_bytes"] for p in parts),
        "fetched_urls": [url for p in parts for url in p["fetched"]],
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def jpegs(count: int) -> list[ImageSpec]:
    """The first ``count`` JPEGs of the shared benchmark image set (about one image in five is a PNG)."""
    wanted = int(count * 1.3) + 50
    while True:
        found = [spec for spec in build_imageset(wanted) if spec.format == "JPEG"]
        if len(found) >= count:
            return found[:count]
        wanted = int(wanted * 1.2)


def remove_files(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            os.unlink(os.path.join(folder, name))


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--urls", type=int, default=20_000, help="number of distinct JPEGs (default 20000)")
    parser.add_argument("--concurrency", type=int, default=32, help="threads on both sides (default 32)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="baseline/engine pairs (default 5: single rounds vary by ±10%%)"
    )
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument(
        "--redis-url", default=None, help="coordinate per-host slots through this Redis (default: in-process)"
    )
    parser.add_argument(
        "--out-dir",
        default=str(WORK),
        help="where both sides write what they download (default bench/tmp; try a tmpfs such as /dev/shm)",
    )
    parser.add_argument(
        "--store",
        choices=("fresh", "established"),
        default="fresh",
        help="engine store starts empty (every blob creates its ab/cd/ directory) or with its "
        "directories already there, as in a store in daily use (default fresh)",
    )
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "engine.json"))
    parser.add_argument("--no-save", action="store_true", help="print only, do not write --output")
    args = parser.parse_args(argv)
    # On SIGTERM, unwind normally so nginx is stopped and the output folders removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    specs = jpegs(args.urls)
    images_dir = build_imageset(0).root
    names = [spec.path for spec in specs]
    size = sum(spec.size for spec in specs)
    print(
        f"{len(specs)} distinct JPEGs under {images_dir}: {size / 1e6:.0f} MB, "
        f"{size / len(specs) / 1024:.0f} KiB average",
        flush=True,
    )

    settings = FetchSettings(
        concurrency=args.concurrency,
        # One host serves everything here; the per-host cap must not be what is measured.
        per_host_concurrency=args.concurrency,
        allow_hosts=("127.0.0.1",),
        redis_url=args.redis_url,
        progress_interval=60,
    )
    baseline_rates: list[float] = []
    engine_rates: list[float] = []
    statuses: Counter[str] = Counter()
    with Nginx(images_dir, worker_processes=args.nginx_workers) as server:
        urls = [f"{server.base_url}/{name}" for name in names]
        out = Path(args.out_dir)
        run_baseline(urls[:500], fresh(out / "warmup"), args.concurrency)
        if args.store == "established":
            # A store in daily use already has its shard directories: create them (untimed).
            run_engine(urls, fresh(out / "out-engine"), settings)
        for round_number in range(1, args.rounds + 1):
            # Alternate who goes first, and start each run with the previous run's writes flushed,
            # so neither side pays for the other's disk writeback.
            order = ("baseline", "engine") if round_number % 2 else ("engine", "baseline")
            for side in order:
                if side == "engine" and args.store == "established":
                    remove_files(out / "out-engine")  # keep the ab/cd/ directories
                else:
                    fresh(out / f"out-{side}")
                os.sync()
                if side == "baseline":
                    seconds, ok = run_baseline(urls, out / "out-baseline", args.concurrency)
                    baseline_rates.append(ok / seconds)
                    print(
                        f"round {round_number}: baseline {ok / seconds:7.0f} URLs/s ({ok} ok in {seconds:.1f}s)",
                        flush=True,
                    )
                else:
                    seconds, statuses = run_engine(urls, out / "out-engine", settings)
                    engine_rates.append(len(urls) / seconds)
                    print(
                        f"round {round_number}: engine   {len(urls) / seconds:7.0f} URLs/s "
                        f"({dict(statuses)} in {seconds:.1f}s)",
                        flush=True,
                    )
    for leftover in ("warmup", "out-baseline", "out-engine"):
        shutil.rmtree(out / leftover, ignore_errors=True)

    # Each round's engine against the baseline run right next to it: the box's speed drifts by more
    # than the gap between rounds, and adjacent runs share the same moment of it.
    paired = [e / b for e, b in zip(engine_rates, baseline_rates, strict=True)]
    summary = {
        "command": "python -m bench.engine " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "urllib3": urllib3.__version__,
            "nginx": _nginx_version(),
            "nginx_workers": args.nginx_workers,
        },
        "urls": args.urls,
        "bytes": size,
        "concurrency": args.concurrency,
        "redis_url": args.redis_url,
        "out_dir": args.out_dir,
        "store": args.store,
        "baseline_urls_per_s": [round(r, 1) for r in baseline_rates],
        "engine_urls_per_s": [round(r, 1) for r in engine_rates],
        "baseline_median": round(statistics.median(baseline_rates), 1),
        "engine_median": round(statistics.median(engine_rates), 1),
        "ratio_median": round(statistics.median(engine_rates) / statistics.median(baseline_rates), 3),
        "ratio_best": round(max(engine_rates) / max(baseline_rates), 3),
        "ratios_paired": [round(ratio, 3) for ratio in paired],
        "ratio_paired_median": round(statistics.median(paired), 3),
        "engine_statuses_last_round": dict(statuses),
    }
    print(
        f"baseline {summary['baseline_median']} URLs/s, engine {summary['engine_median']} URLs/s, "
        f"ratio {summary['ratio_median']} (median of {args.rounds}), {summary['ratio_best']} (best), "
        f"{summary['ratio_paired_median']} (median of the rounds' own ratios {summary['ratios_paired']})"
    )
    if not args.no_save:
        save(Path(args.output), summary)
        print(f"saved {args.output}")
    return 0 if statuses.get("ok") == len(names) else 1


def save(path: Path, summary: dict[str, object]) -> None:
    """Keep one run per (urls, concurrency, output directory, redis) in ``path``: the latest."""
    runs: list[dict[str, object]] = []
    if path.exists():
        try:
            runs = list(json.loads(path.read_text()).get("runs", []))
        except (ValueError, AttributeError):
            runs = []
    key = ("urls", "concurrency", "out_dir", "store", "redis_url")
    runs = [run for run in runs if any(run.get(k) != summary.get(k) for k in key)] + [summary]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")


def _nginx_version() -> str:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    try:
        return subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stderr.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
