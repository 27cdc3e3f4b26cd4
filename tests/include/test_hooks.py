"""The Airflow end of the library: deployment settings from the environment, storage errors into task outcomes."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from include.harvest.errors import StorageUnavailable
from include.harvest.hooks import fail_fast_on_permanent_storage_errors, keep_work_files, worker_slots


@pytest.mark.parametrize(
    ("value", "keep"),
    [(None, False), ("", False), ("  ", False), ("true", True), ("1", True), ("Yes", True),
     ("false", False), ("0", False), ("no", False)],
)  # fmt: skip
def test_keep_work_files_reads_true_and_false_and_defaults_to_false(value: str | None, keep: bool):
    environ = {} if value is None else {"HARVEST_KEEP_WORK_FILES": value}
    assert keep_work_files(environ) is keep


def test_a_value_that_is_not_a_boolean_names_the_variable():
    with pytest.raises(
        ValueError, match=r"^HARVEST_KEEP_WORK_FILES='keep' is not a boolean \(use true or false\)$"
    ):
        keep_work_files({"HARVEST_KEEP_WORK_FILES": "keep"})


def test_a_storage_error_waiting_cannot_fix_fails_the_task_without_retries_and_keeps_its_message():
    error = StorageUnavailable(
        "HARVEST_STORAGE_URI=s3://x/p: bucket 'x' does not exist", uri="s3://x/p", setting="S"
    )
    with (
        pytest.raises(AirflowFailException, match="bucket 'x' does not exist"),
        fail_fast_on_permanent_storage_errors(),
    ):
        raise error


def test_an_unreachable_endpoint_keeps_the_tasks_retries():
    error = StorageUnavailable("endpoint unreachable", uri="s3://x/p", setting="S", retryable=True)
    with pytest.raises(StorageUnavailable), fail_fast_on_permanent_storage_errors():
        raise error


def test_worker_slots_come_from_the_variable_else_from_the_workers_own_concurrency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert worker_slots({"HARVEST_WORKER_SLOTS": "12"}) == 12
    monkeypatch.setenv("AIRFLOW__CELERY__WORKER_CONCURRENCY", "6")
    assert worker_slots({"HARVEST_WORKER_SLOTS": ""}) == 6  # empty: the default, as everywhere
    with pytest.raises(ValueError, match="HARVEST_WORKER_SLOTS='many' is not a whole number"):
        worker_slots({"HARVEST_WORKER_SLOTS": "many"})
    with pytest.raises(ValueError, match="HARVEST_WORKER_SLOTS='0' must be at least 1"):
        worker_slots({"HARVEST_WORKER_SLOTS": "0"})
