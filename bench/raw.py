"""Baseline 1, the machine's practical limit: a plain urllib3 thread pool over 2 processes that only
GETs each URL and writes its bytes to disk. No checks, no database, no orchestration.

    python -m bench.raw --urls 2000          # against a throw-away nginx serving the image set

On the synthetic web (:mod:`bench.web`) give it ``ca_certs`` (the bench CA) and ``web=True``: it
then follows redirects (on any host) and retries a 429/503 once (after its Retry-After), as the
web's ``expected`` outcomes assume, and never retries a timeout or a reset (a stalled URL costs one
10 s read timeout). It has no per-host limit: it is the limit of the machine, not a polite client.
Each worker process reports its own CPU seconds and peak RSS (``getrusage``), and, with
``keep_urls=True``, which URLs ended in a 200 with a body.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_PROCESSES", "DEFAULT_THREADS", "run_in_processes", "run_raw"]

DEFAULT_PROCESSES = 2
DEFAULT_THREADS = 16  # per process; see `python -m bench.raw --threads` to check on another machine


def _reset_signals() -> None:
    # The parent may turn SIGTERM into an exception for its own cleanup; a pool worker must just exit.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker(args: tuple[list[tuple[int, str]], str, int, dict[str, Any]]) -> dict[str, Any]:
    import urllib3

    jobs, out_dir, threads, options = args
    web = bool(options.get("web"))
    retries: Any = (
        # Redirects followed (to any host), one retry of a 429/503 after its Retry-After, nothing else.
        urllib3.Retry(
            total=6,
            connect=0,
            read=0,
            other=0,
            redirect=5,
            status=1,
            status_forcelist=(429, 503),
            backoff_factor=0,
            respect_retry_after_header=True,
            raise_on_status=False,
            raise_on_redirect=False,
        )
        if web
        else False
    )
    pool = urllib3.PoolManager(
        num_pools=int(options.get("num_pools") or 10),
        maxsize=threads,
        block=True,
        retries=retries,
        ca_certs=options.get("ca_certs"),
    )
    timeout = urllib3.Timeout(connect=5, read=10)

    errors: dict[str, int] = {}
    fetched: list[int] = []

    def one(job: tuple[int, str]) -> tuple[int, int]:
        index, url = job
        try:
            response = pool.request("GET", url, timeout=timeout)
        except urllib3.exceptions.HTTPError as exc:
            reason = type(getattr(exc, "reason", None) or exc).__name__
            errors[reason] = errors.get(reason, 0) + 1
            return 0, 0
        if response.status != 200:
            errors[f"http {response.status}"] = errors.get(f"http {response.status}", 0) + 1
            return 0, 0
        with open(os.path.join(out_dir, f"{index}.bin"), "wb") as f:
            f.write(response.data)
        fetched.append(index)
        return 1, len(response.data)

    ok = size = 0
    with ThreadPoolExecutor(max_workers=threads) as executor:
        for good, n in executor.map(one, jobs):
            ok += good
            size += n
    pool.clear()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "urls": len(jobs),
        "ok": ok,
        "bytes": size,
        "errors": errors,
        "fetched": fetched if options.get("keep_urls") else [],
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "max_rss_bytes": usage.ru_maxrss * 1024,  # Linux: KiB
    }


def run_in_processes(
    worker: Callable[[Any], dict[str, Any]], shares: list[Any], *, start_method: str = "fork"
) -> tuple[list[dict[str, Any]], float]:
    """``worker(share)`` in one new process per share, all at once; (their returns, wall seconds).

    ``start_method="spawn"`` starts clean interpreters: a fork copies whatever the parent holds,
    and after a Celery client ran in it (the chord) kombu's after-fork hook blocks the child on a
    broker connection. Spawned processes import their modules first: time inside the worker then.
    """
    context = multiprocessing.get_context(start_method)
    started = time.perf_counter()
    pool = context.Pool(len(shares), initializer=_reset_signals)
    try:
        parts = pool.map(worker, shares)
        seconds = time.perf_counter() - started
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    return parts, seconds


def run_raw(
    urls: list[str],
    *,
    out_dir: Path | None = None,
    processes: int = DEFAULT_PROCESSES,
    threads: int = DEFAULT_THREADS,
    ca_certs: str | None = None,
    web: bool = False,
    keep_urls: bool = False,
) -> dict[str, Any]:
    """GET every URL and write its body to ``out_dir`` (a temporary folder, removed, by default).

    ``web``: follow redirects and retry a 429/503 once (see the module's doc); ``keep_urls``: return
    the URLs that ended in a 200 as ``fetched_urls``.
    """
    own_dir = out_dir is None
    target = Path(tempfile.mkdtemp(prefix="harvest-bench-raw-")) if out_dir is None else out_dir
    target.mkdir(parents=True, exist_ok=True)
    indexed = list(enumerate(urls))
    hosts = len({u.partition("://")[2].partition("/")[0] for u in urls})
    options: dict[str, Any] = {
        "web": web,
        "ca_certs": ca_certs,
        "keep_urls": keep_urls,
        # One pool per host (urllib3 keeps 10 by default and drops the least recently used).
        "num_pools": max(10, hosts + 8),
    }
    shares = [(indexed[p::processes], str(target), threads, options) for p in range(processes)]
    try:
        parts, seconds = run_in_processes(_worker, shares)
    finally:
        if own_dir:
            shutil.rmtree(target, ignore_errors=True)
    errors: dict[str, int] = {}
    for part in parts:
        for reason, count in part["errors"].items():
            errors[reason] = errors.get(reason, 0) + count
    result: dict[str, Any] = {
        "name": "raw",
        "urls": len(urls),
        "ok": sum(p["ok"] for p in parts),
        "bytes": sum(p["bytes"] for p in parts),
        "seconds": round(seconds, 3),
        "urls_per_s": round(len(urls) / seconds, 1),
        "processes": processes,
        "threads_per_process": threads,
        "errors": errors,
        # CPU of the worker processes (they do all the work; the parent only waits)
        "cpu_s": round(sum(p["cpu_s"] for p in parts), 2),
        # the sum of each worker's own peak (forked: the parent's pages they share are counted in each)
        "peak_rss_bytes": sum(p["max_rss_bytes"] for p in parts),
        "web": web,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if keep_urls:
        result["fetched_urls"] = [urls[i] for p in parts for i in p["fetched"]]
    return result


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
