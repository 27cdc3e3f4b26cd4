"""Harvest end to end on the real Airflow + CeleryExecutor stack."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import ImageSite, RunningStack

pytestmark = pytest.mark.e2e


def stored_path(storage_uri: str) -> Path:
    return Path(urlsplit(storage_uri).path)


def test_manual_run_downloads_every_url_on_celery_workers(harvest_stack: RunningStack, image_site: ImageSite):
    expected = image_site.add_images("manual", 30, seed=1)
    api = harvest_stack.api

    response = api.trigger("harvest", {"urls": "\n".join(expected), "batch_size": 10})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    api.wait_for_run("harvest", run_id, timeout=300)

    batches = [ti for ti in api.task_instances("harvest", run_id) if ti["task_id"] == "download_batch"]
    assert len(batches) == 3
    assert {ti["state"] for ti in batches} == {"success"}
    assert all(ti["rendered_map_index"].startswith("batch ") for ti in batches)
    # No task burned a retry on the way (the stack's Execution-API timeout rides out a busy box).
    assert {ti["try_number"] for ti in api.task_instances("harvest", run_id)} == {1}

    # The batches ran as Celery tasks: each left its result in Celery's result backend.
    with harvest_stack.metadata_db() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")
        assert cur.fetchone()[0] >= len(batches)

    with harvest_stack.results_db() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT url, status, sha256, storage_uri FROM harvest.downloads WHERE run_key = %s", (run_id,)
        )
        rows = {url: (status, sha, uri) for url, status, sha, uri in cur.fetchall()}
        cur.execute(
            "SELECT urls_total, status_counts, bytes_total, batches, run_type FROM harvest.runs WHERE run_key = %s",
            (run_id,),
        )
        urls_total, counts, bytes_total, batch_count, run_type = cur.fetchone()

    assert set(rows) == set(expected)
    for url, sha in expected.items():
        status, stored_sha, storage_uri = rows[url]
        assert (status, stored_sha) == ("ok", sha), url
        assert stored_path(storage_uri).exists()
        assert stored_path(storage_uri).name.startswith(sha)
    assert (urls_total, counts, batch_count, run_type) == (30, {"ok": 30}, 3, "manual")
    assert bytes_total == sum(stored_path(uri).stat().st_size for _, _, uri in rows.values())
