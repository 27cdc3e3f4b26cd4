"""Baseline 2, the original design (the seed project Harvest grew from): one Celery task per URL
in a ``chord`` whose callback inserts every result into Postgres.

``download_image(url)`` GETs the URL and writes the bytes to a file (as the seed's
``urlretrieve`` did, but over a pooled keep-alive connection so the baseline is not handicapped by
the HTTP client); ``record_downloads(results)`` is the callback: one ``INSERT`` of all the rows.
The worker is a real ``celery worker`` subprocess with the default prefork pool and default
concurrency (one process per core), the broker and result backend are the same Redis as the
stack's (own database numbers), and the database is a throw-away Postgres database.

The time measured is from the first ``apply_async`` to the callback's result: what a user of the
chord waits for. CPU seconds are the worker processes' (their whole trees, from psutil, between the
first ``apply_async`` and the callback's result) plus the submitting thread's.

On a latency-bound web (:mod:`bench.web`) a prefork pool of one process per core has as many
requests in flight as cores, and would take an hour over 20,000 URLs. ``pool="threads"`` with
``workers`` worker processes of ``concurrency`` threads each gives the chord the same concurrency
budget as Harvest (worker slots × fetch threads per batch); ``ca_bundle`` makes its client trust the
bench CA. Either client follows redirects (as the seed's ``urlretrieve`` did) and retries nothing;
every request has a 5 s connect and 10 s read timeout.

    python -m bench.chord --urls 2000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery, chord

__all__ = ["app", "download_image", "record_downloads", "run_chord"]

REPO = Path(__file__).resolve().parents[1]

# The worker subprocess reads its settings from the environment the benchmark gives it.
app = Celery(
    "bench_chord",
    broker=os.environ.get("BENCH_CHORD_BROKER", "redis://127.0.0.1:6379/8"),
    backend=os.environ.get("BENCH_CHORD_BACKEND", "redis://127.0.0.1:6379/9"),
)
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])

_pool: Any = None


def _http() -> Any:
    global _pool
    if _pool is None:  # one pool per worker process, created after the fork
        import urllib3

        _pool = urllib3.PoolManager(
            # one pool per host (200 on the synthetic web), one connection per thread of this process
            num_pools=int(os.environ.get("BENCH_CHORD_NUM_POOLS", "10")),
            maxsize=int(os.environ.get("BENCH_CHORD_POOL_MAXSIZE", "4")),
            # redirects followed (urlretrieve did), nothing retried
            retries=urllib3.Retry(total=5, connect=0, read=0, other=0, status=0, redirect=5),
            ca_certs=os.environ.get("BENCH_CHORD_CA") or None,
        )
    return _pool


@app.task(name="bench.download_image")
def download_image(url: str) -> dict[str, Any]:
    """GET ``url`` and write its bytes under ``BENCH_CHORD_OUT``; return a small record."""
    import urllib3

    if os.environ.get("BENCH_CHORD_CLIENT") == "urlretrieve":
        return _download_like_the_seed(url)
    try:
        response = _http().request("GET", url, timeout=urllib3.Timeout(connect=5, read=10))
    except urllib3.exceptions.HTTPError as exc:
        return _record(url, "connection_error", error=str(exc))
    if response.status != 200:
        return _record(url, "http_error", http_status=response.status)
    if not response.data:
        return _record(url, "empty", http_status=200)
    return _stored(url, response.data)


def _download_like_the_seed(url: str) -> dict[str, Any]:
    """The seed's literal client: ``urllib.request`` with a new connection for every URL."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as exc:
        return _record(url, "connection_error", error=str(exc))
    return _stored(url, data)


def _stored(url: str, data: bytes) -> dict[str, Any]:
    """Write ``data`` under its sha256 (as the seed wrote a file per URL); return its ok record."""
    sha256 = hashlib.sha256(data).hexdigest()
    (Path(os.environ["BENCH_CHORD_OUT"]) / f"{sha256}{Path(url).suffix}").write_bytes(data)
    return _record(url, "ok", http_status=200, size=len(data), sha256=sha256)


def _record(
    url: str,
    status: str,
    *,
    http_status: int | None = None,
    size: int = 0,
    sha256: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "url": url,
        "status": status,
        "http_status": http_status,
        "bytes": size,
        "sha256": sha256,
        "error": error,
    }


@app.task(name="bench.record_downloads")
def record_downloads(results: list[dict[str, Any]]) -> int:
    """The chord callback: insert every result in one transaction; return the rows written."""
    import psycopg2
    from psycopg2.extras import execute_values

    with psycopg2.connect(os.environ["BENCH_CHORD_DSN"]) as conn, conn.cursor() as cur:
        execute_values(
            cur,
            "INSERT INTO downloads (url, status, http_status, bytes, sha256, error) VALUES %s",
            [(r["url"], r["status"], r["http_status"], r["bytes"], r["sha256"], r["error"]) for r in results],
            page_size=1000,
        )
    return len(results)


def _admin(pg_server: str) -> Any:
    import psycopg2

    from scripts.stack import with_database

    conn = psycopg2.connect(with_database(pg_server, "postgres"))
    conn.autocommit = True
    return conn


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Stop the worker by its pid (warm shutdown), then its process group if anything is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def tree_cpu_seconds(pid: int) -> float:
    """User + system seconds of a process and its descendants (reaped children included)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _wait_for_callback(backend: Any, task_id: str, timeout: float) -> int:
    """Poll the callback's result key (one GET per 50 ms).

    ``AsyncResult.get()`` on a chord re-checks every one of the N header results on each wake-up
    (``_maybe_reraise_parent_error``), which costs the measuring process a whole core at 20,000
    URLs: CPU the worker would otherwise have. A user waiting on the chord would not pay that.
    """
    import json

    deadline = time.monotonic() + timeout
    key = f"celery-task-meta-{task_id}"
    while time.monotonic() < deadline:
        raw = backend.get(key)
        if raw:
            meta = json.loads(raw)
            if meta["status"] == "SUCCESS":
                return int(meta["result"])
            if meta["status"] in ("FAILURE", "REVOKED"):
                raise RuntimeError(f"the chord callback ended {meta['status']}: {meta.get('result')}")
        time.sleep(0.05)
    raise TimeoutError(f"the chord callback did not finish within {timeout:.0f}s")


def run_chord(
    urls: list[str],
    *,
    redis_server: str = "redis://127.0.0.1:6379",
    broker_db: int = 8,
    backend_db: int = 9,
    pg_server: str = "postgresql://postgres@127.0.0.1:5432",
    timeout: float = 1800,
    sampler: Any = None,
    client: str = "pooled",
    pool: str = "prefork",
    workers: int = 1,
    concurrency: int | None = None,
    ca_bundle: Path | str | None = None,
    keep_urls: bool = False,
) -> dict[str, Any]:
    """Run the chord over ``urls`` with fresh workers, database and folder; clean all of it up.

    ``sampler`` (optional) is called with each worker's pid to start sampling its memory, and must
    return an object whose ``stop()`` gives the peak RSS in bytes (summed over workers).
    ``pool``/``workers``/``concurrency``: ``workers`` celery worker processes with that pool and
    concurrency (None: Celery's default, one per core). ``keep_urls``: return the URLs that ended
    ``ok`` as ``fetched_urls``.
    """
    import psycopg2
    import redis

    from scripts.stack import with_database

    database = f"harvest_bench_{uuid.uuid4().hex[:8]}_chord"
    broker = f"{redis_server}/{broker_db}"
    backend = f"{redis_server}/{backend_db}"
    out_dir = Path(tempfile.mkdtemp(prefix="harvest-bench-chord-"))
    log_file = out_dir.parent / f"{out_dir.name}.worker.log"
    for db in (broker, backend):
        redis.Redis.from_url(db).flushdb()
    admin = _admin(pg_server)
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{database}"')
    dsn = with_database(pg_server, database)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE downloads (id bigserial PRIMARY KEY, url text NOT NULL, status text NOT NULL, "
            "http_status int, bytes bigint, sha256 text, error text)"
        )
    hosts = len({u.partition("://")[2].partition("/")[0] for u in urls})
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BENCH_CHORD_BROKER": broker,
        "BENCH_CHORD_BACKEND": backend,
        "BENCH_CHORD_DSN": dsn,
        "BENCH_CHORD_OUT": str(out_dir),
        "BENCH_CHORD_CLIENT": client,
        "BENCH_CHORD_NUM_POOLS": str(max(10, hosts + 8)),
        "BENCH_CHORD_POOL_MAXSIZE": str(concurrency if pool == "threads" and concurrency else 4),
    }
    if ca_bundle:
        # the pooled client's ca_certs; urllib.request (urlretrieve) reads SSL_CERT_FILE
        env.update({"BENCH_CHORD_CA": str(ca_bundle), "SSL_CERT_FILE": str(ca_bundle)})
    procs: list[subprocess.Popen[bytes]] = []
    monitors: list[Any] = []
    peak_rss = None
    succeeded = False
    try:
        with log_file.open("wb") as log:
            for n in range(workers):
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "celery",
                            "-A",
                            "bench.chord",
                            "worker",
                            "--loglevel=WARNING",
                            f"--pool={pool}",
                            *([f"--concurrency={concurrency}"] if concurrency else []),
                            "--without-gossip",
                            "--without-mingle",
                            "--hostname",
                            f"bench{n}-{database}@%h",
                        ],
                        cwd=REPO,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        app_client = Celery("bench_chord_client", broker=broker, backend=backend)
        app_client.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
        deadline = time.monotonic() + 120
        while len(app_client.control.ping(timeout=1.0) or []) < workers:
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise RuntimeError(f"the chord workers did not start; see {log_file}")
        monitors = [sampler(p.pid) for p in procs] if sampler else []
        load_before = os.getloadavg()[0]
        cpu_before = sum(tree_cpu_seconds(p.pid) for p in procs)
        client_cpu_before = time.thread_time()
        started = time.perf_counter()
        header = [app_client.signature("bench.download_image", args=(url,)) for url in urls]
        result = chord(header)(app_client.signature("bench.record_downloads"))
        submitted = time.perf_counter() - started
        submit_cpu = time.thread_time() - client_cpu_before
        written = _wait_for_callback(redis.Redis.from_url(backend), result.id, timeout)
        seconds = time.perf_counter() - started
        client_cpu = time.thread_time() - client_cpu_before
        worker_cpu = sum(tree_cpu_seconds(p.pid) for p in procs) - cpu_before
        if monitors:
            peak_rss = sum(m.stop() for m in monitors)
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT status, count(*) FROM downloads GROUP BY status")
            counts = dict(cur.fetchall())
            fetched_urls: list[str] = []
            if keep_urls:
                cur.execute("SELECT url FROM downloads WHERE status = 'ok'")
                fetched_urls = [u for (u,) in cur.fetchall()]
        files = sum(1 for _ in out_dir.iterdir())
        succeeded = True
    finally:
        for m in monitors:
            m.stop()
        stoppers = [threading.Thread(target=_stop, args=(p,)) for p in procs]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
        for db in (broker, backend):
            redis.Redis.from_url(db).flushdb()
        shutil.rmtree(out_dir, ignore_errors=True)
        if succeeded:  # keep the worker's log only when something went wrong
            log_file.unlink(missing_ok=True)
    slots = concurrency or (os.cpu_count() or 1)
    figures: dict[str, Any] = {
        "name": "chord",
        "client": client,
        "urls": len(urls),
        "ok": counts.get("ok", 0),
        "rows": written,
        "status_counts": counts,
        "files": files,
        "seconds": round(seconds, 3),
        "submit_seconds": round(submitted, 3),
        "urls_per_s": round(len(urls) / seconds, 1),
        "pool": pool,
        "workers": workers,
        "concurrency": slots,
        "worker": f"{workers} celery worker(s), {pool} pool of {slots}"
        + ("" if concurrency else " (Celery's default: one per core)"),
        # the workers' process trees, and the thread that built and submitted the chord
        "cpu_s": round(worker_cpu + client_cpu, 2),
        "worker_cpu_s": round(worker_cpu, 2),
        "submit_cpu_s": round(submit_cpu, 2),
        "peak_rss_bytes": peak_rss,
        "load_avg_1m_before": round(load_before, 2),
    }
    if keep_urls:
        figures["fetched_urls"] = fetched_urls
    return figures


def main(argv: list[str] | None = None) -> int:
    from bench.imageset import build_imageset
    from bench.nginx import Nginx

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--urls", type=int, default=2000)
    parser.add_argument("--client", choices=["pooled", "urlretrieve"], default="pooled")
    args = parser.parse_args(argv)
    images = build_imageset(args.urls)
    with Nginx(images.root) as server:
        print(run_chord(images.urls(server.base_url), client=args.client))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
