"""Every DAG imports cleanly, is documented and retried, and parses fast without touching the network."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import psycopg2
import pytest
from airflow.dag_processing.dagbag import DagBag

DAGS = Path(__file__).resolve().parents[2] / "dags"


class NetworkUsedAtParseTime(AssertionError):
    pass


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> DagBag:
    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag: DagBag):
    assert dagbag.import_errors == {}
    assert "harvest" in dagbag.dags


def test_every_dag_has_tags_docs_and_retries(dagbag: DagBag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md and len(dag.doc_md) > 200, f"{dag_id} has no doc_md"
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} is not retried"


def test_parsing_opens_no_connection(monkeypatch: pytest.MonkeyPatch):
    def refuse(*args: object, **kwargs: object) -> None:
        raise NetworkUsedAtParseTime(f"network used at parse time: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(psycopg2, "connect", refuse)  # libpq opens its sockets in C
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}


def test_parsing_is_fast():
    started = time.perf_counter()
    DagBag(dag_folder=str(DAGS))
    # Parsing takes tens of milliseconds; seconds would mean work at module level.
    assert time.perf_counter() - started < 2.0


def test_harvest_shape(dagbag: DagBag):
    dag = dagbag.dags["harvest"]
    assert {t.task_id for t in dag.tasks} == {
        "read_sources",
        "plan_batches",
        "download_batch",
        "record_results",
    }
    record = dag.get_task("record_results")
    assert record.trigger_rule == "none_failed"  # an empty list skips the mapped task, not the reduce
    assert not dag.catchup
