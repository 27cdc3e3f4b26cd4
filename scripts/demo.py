"""``make run``: start the local stack, run Harvest on the bundled demo, print what Postgres recorded.

The demo images are served on loopback by the stack's ``demo-images`` process; the URL list mixes
them with a few URLs that must fail in telling ways (a missing file, an HTML page named .jpg, a
malformed URL, an unsupported scheme), so the summary shows how each outcome is recorded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import psycopg2

from scripts.airflow_api import AirflowAPI, RunFailed
from scripts.stack import DEMO_PORT, REPO, Stack, StackError


def write_demo_list(stack: Stack) -> Path:
    base = f"http://127.0.0.1:{DEMO_PORT}"
    images = sorted((REPO / "data" / "demo" / "site" / "images").glob("photo-*"))
    lines = ["# Harvest demo list: the bundled images, then URLs that must fail in telling ways"]
    lines += [f"{base}/images/{image.name}" for image in images]
    lines += [
        f"{base}/images/photo-00.jpg#same-image-again",  # a duplicate once the fragment is dropped
        f"{base}/images/missing.jpg",  # 404 -> http_error
        f"{base}/images/not-really.jpg",  # HTML named .jpg -> invalid_content
        "ftp://example.com/photo.jpg",  # scheme -> rejected
        "http://exa mple.com/photo.jpg",  # space in the host -> rejected
    ]
    path = stack.home / "demo" / "urls.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def print_summary(stack: Stack, run_id: str) -> None:
    with psycopg2.connect(stack.results_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT urls_total, status_counts, bytes_total, duration_s, urls_per_s, p50_ms, p95_ms "
            "FROM harvest.runs WHERE dag_run_id = %s",
            (run_id,),
        )
        row = cur.fetchone()
        if row is None:
            raise StackError(f"no summary in harvest.runs for run {run_id}")
        total, counts, size, duration, rate, p50, p95 = row
        cur.execute(
            "SELECT status, count(*), min(error) FROM harvest.downloads WHERE dag_run_id = %s "
            "GROUP BY status ORDER BY count(*) DESC",
            (run_id,),
        )
        by_status = cur.fetchall()
    print(
        f"\nHarvest demo run {run_id}: {total} URLs, {size / 1024:.0f} KiB stored, "
        f"{duration or 0:.1f}s ({rate or 0:.1f} URLs/s, p50 {p50} ms, p95 {p95} ms)"
    )
    print(f"  {'status':<18} {'urls':>5}  example error")
    for status, count, error in by_status:
        print(f"  {status:<18} {count:>5}  {(error or '')[:90]}")
    print(f"\nRows: {stack.results_url} -> harvest.downloads, harvest.runs, harvest.objects")


def main() -> int:
    stack = Stack(demo_port=DEMO_PORT)
    try:
        stack.setup()
        created_now = not stack.running_pid()
        if created_now:
            stack.start()
        print("Waiting for the Airflow stack to become healthy ...", flush=True)
        stack.wait_healthy()
        demo_list = write_demo_list(stack)
        api = AirflowAPI(stack.api_url, "admin", stack.admin_password())
        api.wait_for_dag("harvest")
        response = api.trigger("harvest", {"source": demo_list.as_uri()})
        response.raise_for_status()
        run_id = response.json()["dag_run_id"]
        print(f"Triggered harvest run {run_id} on {demo_list}", flush=True)
        api.wait_for_run("harvest", run_id, timeout=600)
        print_summary(stack, run_id)
    except (StackError, RunFailed, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"\nThe Airflow UI is up at http://localhost:{stack.api_port} "
        f"(user admin, password in {stack.password_file}).\n"
        "Stop everything with: make stop"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
