"""Every DAG imports cleanly, is documented and retried, and parses without touching the network or loading the engine."""

from __future__ import annotations

import socket
import subprocess
import sys
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


def test_parsing_does_not_load_the_engine():
    # The DAG processor parses the file every few seconds: the library (Pillow, urllib3, database
    # drivers, Redis) is imported inside the tasks, never at parse time. A fresh interpreter tells.
    heavy = ["PIL", "include.harvest.fetch", "include.harvest.results", "psycopg", "psycopg2", "redis"]
    script = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "print(','.join(m for m in sys.argv[2:] if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script, str(DAGS / "harvest.py"), *heavy],
        capture_output=True,
        text=True,
        check=True,
        cwd=DAGS.parent,
    ).stdout.strip()
    assert loaded == "", f"imported at parse time: {loaded}"


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
