"""Baseline 1, the machine's practical limit: a plain urllib3 thread pool over 2 processes that only
GETs each URL and writes its bytes to disk. No checks, no database, no orchestration.

    python -m bench.raw --urls 2000          # against a throw-away nginx serving the image set
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_PROCESSES", "DEFAULT_THREADS", "run_raw"]

DEFAULT_PROCESSES = 2
DEFAULT_THREADS = 16  # per process; see `python -m bench.raw --threads` to check on another machine


def _reset_signals() -> None:
    # The parent may turn SIGTERM into an exception for its own cleanup; a pool worker must just exit.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker(args: tuple[list[tuple[int, str]], str, int]) -> tuple[int, int, int, dict[str, int]]:
    import urllib3

    jobs, out_dir, threads = args
    pool = urllib3.PoolManager(maxsize=threads, block=True, retries=False)

    errors: dict[str, int] = {}

    def one(job: tuple[int, str]) -> tuple[int, int]:
        index, url = job
        try:
            response = pool.request("GET", url, timeout=urllib3.Timeout(connect=5, read=10))
        except urllib3.exceptions.HTTPError as exc:
            reason = type(getattr(exc, "reason", None) or exc).__name__
            errors[reason] = errors.get(reason, 0) + 1
            return 0, 0
        if response.status != 200:
            errors[f"http {response.status}"] = errors.get(f"http {response.status}", 0) + 1
            return 0, 0
        with open(os.path.join(out_dir, f"{index}.bin"), "wb") as f:
            f.write(response.data)
        return 1, len(response.data)

    ok = size = 0
    with ThreadPoolExecutor(max_workers=threads) as executor:
        for good, n in executor.map(one, jobs, chunksize=64):
            ok += good
            size += n
    pool.clear()
    return len(jobs), ok, size, errors


def run_raw(
    urls: list[str],
    *,
    out_dir: Path | None = None,
    processes: int = DEFAULT_PROCESSES,
    threads: int = DEFAULT_THREADS,
) -> dict[str, Any]:
    """GET every URL and write its body to ``out_dir`` (a temporary folder, removed, by default)."""
    own_dir = out_dir is None
    target = Path(tempfile.mkdtemp(prefix="harvest-bench-raw-")) if out_dir is None else out_dir
    target.mkdir(parents=True, exist_ok=True)
    indexed = list(enumerate(urls))
    shares = [(indexed[p::processes], str(target), threads) for p in range(processes)]
    context = multiprocessing.get_context("fork")
    try:
        started = time.perf_counter()
        pool = context.Pool(processes, initializer=_reset_signals)
        try:
            parts = pool.map(_worker, shares)
            seconds = time.perf_counter() - started
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    finally:
        if own_dir:
            shutil.rmtree(target, ignore_errors=True)
    ok = sum(p[1] for p in parts)
    size = sum(p[2] for p in parts)
    errors: dict[str, int] = {}
    for part in parts:
        for reason, count in part[3].items():
            errors[reason] = errors.get(reason, 0) + count
    return {
        "name": "raw",
        "urls": len(urls),
        "ok": ok,
        "bytes": size,
        "seconds": round(seconds, 3),
        "urls_per_s": round(len(urls) / seconds, 1),
        "processes": processes,
        "threads_per_process": threads,
        "errors": errors,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    from bench.imageset import build_imageset
    from bench.nginx import Nginx

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--urls", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=DEFAULT_PROCESSES)
    parser.add_argument("--threads", type=int, nargs="+", default=[DEFAULT_THREADS])
    args = parser.parse_args(argv)
    images = build_imageset(args.urls)
    with Nginx(images.root) as server:
        urls = images.urls(server.base_url)
        run_raw(urls[: min(500, len(urls))], processes=args.processes, threads=args.threads[0])  # warm-up
        for threads in args.threads:
            result = run_raw(urls, processes=args.processes, threads=threads)
            print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
