"""Baseline 2, the original design (the seed project Harvest grew from): one Celery task per URL
in a ``chord`` whose callback inserts every result into Postgres.

``download_image(url)`` GETs the URL and writes the bytes to a file (as the seed's
``urlretrieve`` did, but over a pooled keep-alive connection so the baseline is not handicapped by
the HTTP client); ``record_downloads(results)`` is the callback: one ``INSERT`` of all the rows.
The worker is a real ``celery worker`` subprocess with the default prefork pool and default
concurrency (one process per core), the broker and result backend are the same Redis as the
stack's (own database numbers), and the database is a throw-away Postgres database.

The time measured is from the first ``apply_async`` to the callback's result: what a user of the
chord waits for.

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

        _pool = urllib3.PoolManager(maxsize=4, retries=False)
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
) -> dict[str, Any]:
    """Run the chord over ``urls`` with a fresh worker, database and folder; clean all of it up.

    ``sampler`` (optional) is called with the worker's pid to start sampling its memory, and must
    return an object whose ``stop()`` gives the peak RSS in bytes.
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
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BENCH_CHORD_BROKER": broker,
        "BENCH_CHORD_BACKEND": backend,
        "BENCH_CHORD_DSN": dsn,
        "BENCH_CHORD_OUT": str(out_dir),
        "BENCH_CHORD_CLIENT": client,
    }
    worker: subprocess.Popen[bytes] | None = None
    peak_rss = None
    succeeded = False
    try:
        with log_file.open("wb") as log:
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "bench.chord",
                    "worker",
                    "--loglevel=WARNING",
                    "--pool=prefork",
                    "--without-gossip",
                    "--without-mingle",
                    "--hostname",
                    f"bench-{database}@%h",
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        app_client = Celery("bench_chord_client", broker=broker, backend=backend)
        app_client.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
        deadline = time.monotonic() + 120
        while not app_client.control.ping(timeout=1.0):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the chord worker did not start; see {log_file}")
        monitor = sampler(worker.pid) if sampler else None
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        header = [app_client.signature("bench.download_image", args=(url,)) for url in urls]
        result = chord(header)(app_client.signature("bench.record_downloads"))
        submitted = time.perf_counter() - started
        written = _wait_for_callback(redis.Redis.from_url(backend), result.id, timeout)
        seconds = time.perf_counter() - started
        if monitor is not None:
            peak_rss = monitor.stop()
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT status, count(*) FROM downloads GROUP BY status")
            counts = dict(cur.fetchall())
        files = sum(1 for _ in out_dir.iterdir())
        succeeded = True
    finally:
        if worker is not None:
            _stop(worker)
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
        for db in (broker, backend):
            redis.Redis.from_url(db).flushdb()
        shutil.rmtree(out_dir, ignore_errors=True)
        if succeeded:  # keep the worker's log only when something went wrong
            log_file.unlink(missing_ok=True)
    return {
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
        "worker": f"celery prefork, default concurrency ({os.cpu_count() or 1} processes)",
        "peak_rss_bytes": peak_rss,
        "load_avg_1m_before": round(load_before, 2),
    }


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
