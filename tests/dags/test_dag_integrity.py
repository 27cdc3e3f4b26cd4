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


def _parsed_harvest(monkeypatch: pytest.MonkeyPatch, **env: str) -> object:
    for name in ("HARVEST_URL_LIST_URI", "HARVEST_LIST_ROOTS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.dags["harvest"]


def _accepts(dag: object, source: object) -> bool:
    from airflow.sdk.exceptions import ParamValidationError

    try:
        dag.params.get_param("source").resolve(source)  # type: ignore[attr-defined]
    except ParamValidationError:
        return False
    return True


def test_the_source_param_refuses_files_outside_the_list_roots_at_trigger_time(
    monkeypatch: pytest.MonkeyPatch,
):
    # Airflow validates a trigger's conf against these Params: a refusal is a form error / HTTP 400.
    dag = _parsed_harvest(
        monkeypatch,
        HARVEST_URL_LIST_URI="file:///srv/url_lists/",
        HARVEST_LIST_ROOTS="file:///srv/more,s3://b/lists",
    )
    for allowed in (
        None,
        "file",
        "table",
        "https://lists.example.com/today.txt",
        "file:///srv/url_lists/extra.txt",
        "file:///srv/more/2026/a.csv.gz",
        "s3://b/lists/today.txt",
    ):
        assert _accepts(dag, allowed), allowed
    for refused in (
        "file:///etc/passwd",
        "file:///proc/self/environ",
        "/etc/passwd",
        "file:///srv/url_lists/../../etc/passwd",
        "file:///srv/url_lists/sub/..",
        "file:///srv/url_lists",
        "file:///srv/url_lists-private/a.txt",
        "s3://b/lists-private/a.txt",
        "s3://other/lists/a.txt",
        "file:///srv/more/a.txt::file:///etc/passwd",
        "memory://x/a.txt",
        "not a uri",
        "",
    ):
        assert not _accepts(dag, refused), refused


def test_without_settings_only_the_repos_url_list_folder_is_a_root(monkeypatch: pytest.MonkeyPatch):
    dag = _parsed_harvest(monkeypatch)
    base = (DAGS.parent / "data" / "url_lists").as_uri()
    assert _accepts(dag, f"{base}/today.txt")
    assert not _accepts(dag, (DAGS / "harvest.py").as_uri())
