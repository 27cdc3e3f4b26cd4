"""Faults injected into running DAG runs on the several-workers stack: nothing lost, nothing twice.

Each test starts a run whose images answer slowly (so the fault lands while batches are still
downloading), injects one fault, and then checks the same invariants
(:func:`~tests.cluster.conftest.assert_recorded_exactly`): the run succeeds, one row per URL with
its status and sha256, the store and ``harvest.objects`` agree, one summary in ``harvest.runs``.
Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

import psutil
import psycopg2
import pytest

from include.harvest.workfiles import RunWorkspace, read_results
from scripts.stack import TASK_HEARTBEAT_TIMEOUT_S
from tests.cluster.conftest import Cluster, assert_recorded_exactly

pytestmark = pytest.mark.e2e

# Lost worker: the heartbeat timeout, the detection interval, the retry delay and the rerun.
RECOVERY_TIMEOUT = TASK_HEARTBEAT_TIMEOUT_S + 180


def kill_program(cluster: Cluster, program: str) -> None:
    """SIGKILL a supervised program's whole process group and every descendant, as a machine dies."""
    pid = cluster.stack.program_pid(program)
    tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    os.killpg(pid, signal.SIGKILL)
    for proc in tree:  # children that moved to a group of their own (task runners)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def running(cluster: Cluster, run_id: str, task_id: str) -> list[dict[str, Any]]:
    return [ti for ti in cluster.task_instances(run_id, task_id) if ti["state"] == "running"]


def slow_run(cluster: Cluster, prefix: str, count: int, *, seed: int, delay: float, **conf: Any):
    expected = cluster.site.add_images(prefix, count, seed=seed, delay=delay)
    run_id = cluster.trigger({"urls": "\n".join(expected), **conf})
    return run_id, expected


def checkpointed_urls(cluster: Cluster, run_id: str, batch: int) -> set[str]:
    """URLs the batch's attempts have reported stored so far (its checkpoint parts in S3)."""
    workspace = RunWorkspace(cluster.uri("work"), run_id)
    folder = workspace.partial_uri(batch).removeprefix(cluster.uri() + "/")
    parts = [cluster.uri(key) for key in cluster.keys(folder) if key.endswith(".jsonl.gz")]
    return {r.url for r in read_results(parts) if str(r.status) == "ok"}


def test_worker_killed_mid_batch_is_retried_and_stored_urls_are_not_downloaded_again(cluster: Cluster):
    run_id, expected = slow_run(
        cluster, "killed", 160, seed=601, delay=0.4, batch_size=40, concurrency=2
    )  # 4 batches of about 8 s each

    def batch_with_progress() -> tuple[int, set[str]] | None:
        for ti in running(cluster, run_id, "download_batch"):
            if done := checkpointed_urls(cluster, run_id, ti["map_index"]):
                return ti["map_index"], done
        return None

    index, _ = cluster.wait_until("a batch reported URLs done", batch_with_progress, timeout=180)
    (victim,) = [ti for ti in cluster.task_instances(run_id, "download_batch") if ti["map_index"] == index]
    kill_program(cluster, victim["hostname"])  # the worker program is named after its hostname
    stored_before_the_kill = checkpointed_urls(cluster, run_id, index)

    cluster.api.wait_for_run("harvest", run_id, timeout=RECOVERY_TIMEOUT)
    assert_recorded_exactly(cluster, run_id, expected)
    (retried,) = [ti for ti in cluster.task_instances(run_id, "download_batch") if ti["map_index"] == index]
    assert retried["try_number"] == 2
    assert stored_before_the_kill
    assert {url: cluster.site.requests_for(url) for url in stored_before_the_kill} == dict.fromkeys(
        stored_before_the_kill, 1
    )
    # The supervisor brought the worker back.
    cluster.wait_until(
        "the worker is running again", lambda: cluster.stack.program_states()[victim["hostname"]] == "RUNNING"
    )


def test_broker_restarted_mid_run(cluster: Cluster):
    run_id, expected = slow_run(cluster, "broker", 60, seed=602, delay=0.3, batch_size=10, concurrency=2)
    cluster.wait_until("batches are downloading", lambda: running(cluster, run_id, "download_batch"))

    cluster.broker.restart(down_for=2.0)

    cluster.api.wait_for_run("harvest", run_id, timeout=300)
    assert_recorded_exactly(cluster, run_id, expected)


def test_results_db_lost_during_the_reduce_is_retried_and_never_half_visible(cluster: Cluster):
    run_id, expected = slow_run(cluster, "dbcut", 20, seed=603, delay=0.05, batch_size=10)

    # Hold harvest.runs: the reduce writes downloads and objects, then waits on its last statement.
    blocker = psycopg2.connect(cluster.stack.results_url)
    try:
        with blocker.cursor() as cur:
            cur.execute("LOCK TABLE harvest.runs IN ACCESS EXCLUSIVE MODE")

        def reduce_waiting() -> int | None:
            # (The driver binds parameters server-side: the run key is not in the query text.
            # This run is the only one writing now.)
            rows = cluster.query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE '%%INSERT INTO harvest.runs%%'"
            )
            return rows[0][0] if rows else None

        pid = cluster.wait_until("record_results is writing", reduce_waiting, timeout=180)
        # Mid-transaction: its rows exist only inside it.
        assert cluster.query("SELECT count(*) FROM harvest.downloads WHERE run_key = %s", run_id) == [(0,)]
        assert cluster.query("SELECT pg_terminate_backend(%s)", pid) == [(True,)]
    finally:
        blocker.rollback()
        blocker.close()

    cluster.wait_until(
        "record_results failed its first try",
        lambda: cluster.task_instances(run_id, "record_results")[0]["state"] == "up_for_retry",
        timeout=120,
    )
    assert cluster.query("SELECT count(*) FROM harvest.downloads WHERE run_key = %s", run_id) == [(0,)]
    assert cluster.work_keys(run_id), "a failed reduce keeps the work folder for its retry"

    cluster.api.wait_for_run("harvest", run_id, timeout=300)
    assert_recorded_exactly(cluster, run_id, expected)
    assert cluster.task_instances(run_id, "record_results")[0]["try_number"] == 2
    assert cluster.work_keys(run_id) == []


def test_scheduler_killed_while_batches_run(cluster: Cluster):
    run_id, expected = slow_run(cluster, "scheduler", 60, seed=604, delay=0.3, batch_size=15, concurrency=2)
    cluster.wait_until("batches are downloading", lambda: running(cluster, run_id, "download_batch"))

    kill_program(cluster, "scheduler")

    cluster.api.wait_for_run("harvest", run_id, timeout=300)
    assert_recorded_exactly(cluster, run_id, expected)


def test_two_runs_for_the_same_date_at_once_leave_the_last_ones_rows(cluster: Cluster):
    day = "2026-06-01"
    expected = cluster.site.add_images("same-date", 30, seed=605, delay=0.2)
    cluster.write_list(day, expected)
    response = cluster.api.request(
        "POST",
        "/backfills",
        json={"dag_id": "harvest", "from_date": f"{day}T00:00:00Z", "to_date": f"{day}T00:00:00Z",
              "dag_run_conf": {"batch_size": 10, "concurrency": 2}},
    )  # fmt: skip
    assert response.status_code == 200, response.text

    def backfill_run() -> str | None:
        runs = [
            r
            for r in cluster.api.runs("harvest")
            if r["run_type"] == "backfill" and r["logical_date"][:10] == day
        ]
        return runs[0]["dag_run_id"] if runs and runs[0]["state"] == "running" else None

    backfill = cluster.wait_until("the backfill runs", backfill_run, timeout=120)
    # A person re-runs the same date by hand while the backfill is still downloading.
    manual = cluster.trigger({"batch_size": 10, "concurrency": 2}, logical_date=f"{day}T12:00:00Z")
    for run_id in (backfill, manual):
        cluster.api.wait_for_run("harvest", run_id, timeout=300)

    assert_recorded_exactly(cluster, day, expected, status={"ok", "not_modified"})
    finished = {
        run_id: cluster.task_instances(run_id, "record_results")[0]["end_date"]
        for run_id in (backfill, manual)
    }
    last = max(finished, key=finished.__getitem__)
    assert cluster.query("SELECT DISTINCT dag_run_id FROM harvest.downloads WHERE run_key = %s", day) == [
        (last,)
    ]
    assert cluster.query("SELECT dag_run_id FROM harvest.runs WHERE run_key = %s", day) == [(last,)]


def test_download_retried_after_writing_its_results_gives_the_same_rows(cluster: Cluster):
    fast = cluster.site.add_images("rewritten-fast", 10, seed=606)
    slow = cluster.site.add_images("rewritten-slow", 20, seed=607, delay=0.5)
    expected = {**fast, **slow}
    run_id = cluster.trigger({"urls": "\n".join(expected), "batch_size": 10, "concurrency": 1})

    def first_batch_done() -> bool:
        batch0 = [ti for ti in cluster.task_instances(run_id, "download_batch") if ti["map_index"] == 0]
        return bool(batch0) and batch0[0]["state"] == "success"

    cluster.wait_until("batch 0 wrote its results", first_batch_done, timeout=180)
    assert running(cluster, run_id, "download_batch"), "the slow batches must still be running"
    response = cluster.api.request(
        "POST",
        "/dags/harvest/clearTaskInstances",
        json={"dry_run": False, "dag_run_id": run_id, "task_ids": [["download_batch", 0]],
              "only_failed": False, "reset_dag_runs": False},
    )  # fmt: skip
    assert response.status_code == 200, response.text

    cluster.api.wait_for_run("harvest", run_id, timeout=300)
    (batch0,) = [ti for ti in cluster.task_instances(run_id, "download_batch") if ti["map_index"] == 0]
    assert batch0["try_number"] == 2
    assert_recorded_exactly(cluster, run_id, expected)
