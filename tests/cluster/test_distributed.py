"""Harvest on several machines: S3 for blobs, work files and lists; batches spread over workers."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import BUCKET, GONE_BUCKET, WORKERS, Cluster, assert_recorded_exactly

pytestmark = pytest.mark.e2e


def test_a_run_on_s3_keeps_everything_in_the_bucket_and_nothing_on_local_disk(cluster: Cluster):
    day = "2026-05-01"
    expected = cluster.site.add_images("s3-run", 12, seed=501)
    cluster.write_list(day, expected)

    run_id = cluster.trigger({"batch_size": 4}, logical_date=f"{day}T00:00:00Z")
    cluster.api.wait_for_run("harvest", run_id, timeout=300)

    # Every blob is in the bucket under ab/cd/<sha256>.<ext> with the right bytes, and
    # harvest.objects points at those s3:// URIs.
    assert_recorded_exactly(cluster, day, expected)
    uris = {sha: uri for uri, sha in cluster.query("SELECT storage_uri, sha256 FROM harvest.objects")}
    uris = {sha: uris[sha] for sha in expected.values()}
    assert all(uri.startswith(f"s3://{BUCKET}/storage/") for uri in uris.values())
    # The list came from the bucket, the work files went there, and nothing touched local disk.
    assert cluster.query("SELECT source FROM harvest.runs WHERE run_key = %s", day)[0][0].startswith("s3://")
    assert cluster.local_files() == []
    # The run's work folder is gone once record_results committed.
    assert cluster.work_keys(run_id) == []
    # Nothing burned a retry on the way (the stack's execution-API timeouts ride out a busy box).
    assert {ti["try_number"] for ti in cluster.task_instances(run_id)} == {1}

    # Re-running the date: the server's validators answer 304, nothing is downloaded again.
    def uploads() -> dict[str, tuple[str, object]]:
        """Each blob's ETag and Last-Modified: a second PUT would change the latter."""
        heads = {
            sha: cluster.s3.head(BUCKET, uri.removeprefix(f"s3://{BUCKET}/")) for sha, uri in uris.items()
        }
        return {sha: (head["ETag"], head["LastModified"]) for sha, head in heads.items()}

    uploaded = uploads()
    rerun = cluster.trigger({"batch_size": 4}, logical_date=f"{day}T06:00:00Z")
    cluster.api.wait_for_run("harvest", rerun, timeout=300)
    assert_recorded_exactly(cluster, day, expected, status="not_modified")

    # Forced: every body is downloaded again, but a blob already in the bucket is not uploaded again.
    forced = cluster.trigger({"batch_size": 4, "force": True}, logical_date=f"{day}T12:00:00Z")
    cluster.api.wait_for_run("harvest", forced, timeout=300)
    assert_recorded_exactly(cluster, day, expected)
    assert uploads() == uploaded  # no second PUT
    assert cluster.local_files() == []


def test_batches_run_on_both_workers_and_every_url_is_recorded_once(cluster: Cluster):
    # Slow answers keep all 8 batches in flight at once, so both workers must take some.
    expected = cluster.site.add_images("spread", 40, seed=502, delay=0.3)
    run_id = cluster.trigger({"urls": "\n".join(expected), "batch_size": 5, "concurrency": 1})
    cluster.api.wait_for_run("harvest", run_id, timeout=300)

    batches = cluster.task_instances(run_id, "download_batch")
    assert len(batches) == 8
    assert {ti["hostname"] for ti in batches} == set(WORKERS)
    assert {ti["try_number"] for ti in cluster.task_instances(run_id)} == {1}
    assert_recorded_exactly(cluster, run_id, expected)
    assert all(cluster.site.requests_for(url) == 1 for url in expected)


def test_a_list_in_a_bucket_that_does_not_exist_fails_the_run_at_once_naming_it(cluster: Cluster):
    source = f"s3://{GONE_BUCKET}/lists/today.txt"  # an allowed root (HARVEST_LIST_ROOTS), no bucket
    run_id = cluster.trigger({"source": source})
    cluster.api.wait_for_run("harvest", run_id, timeout=180, expect="failed")

    (read,) = cluster.task_instances(run_id, "read_sources")
    assert (read["state"], read["try_number"]) == ("failed", 1)  # no retries: waiting cannot fix it
    log = cluster.api.request(
        "GET",
        f"/dags/harvest/dagRuns/{run_id}/taskInstances/read_sources/logs/1",
        params={"full_content": True},
    )
    assert log.status_code == 200, log.text
    assert (
        f"source={source}: bucket 'harvest-no-such-bucket' does not exist: create it or point source"
        in log.text
    )
    assert cluster.query("SELECT count(*) FROM harvest.downloads WHERE run_key = %s", run_id) == [(0,)]
