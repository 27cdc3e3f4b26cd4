"""The Airflow end of the library: the results DB connection and deployment settings.

This is the one module that imports Airflow; everything else is plain Python and receives what
this module builds (a connection factory, URIs, settings).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_CONN_ID",
    "deployment_uris",
    "fail_fast_on_permanent_storage_errors",
    "fail_fast_on_refused_sources",
    "keep_work_files",
    "machine_hostname",
    "results_db_connection",
    "worker_slots",
]

RESULTS_CONN_ID = "harvest_db"

_REPO_DATA = Path(__file__).resolve().parents[2] / "data"


def results_db_connection() -> Any:
    """A new psycopg2 connection to the results DB, from the Airflow Connection ``harvest_db``."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    return PostgresHook(postgres_conn_id=RESULTS_CONN_ID).get_conn()


def deployment_uris() -> dict[str, str]:
    """Where lists are read and blobs and work files are written: ``HARVEST_*_URI`` or ``data/``."""
    return {
        "url_list_uri": os.environ.get("HARVEST_URL_LIST_URI") or (_REPO_DATA / "url_lists").as_uri(),
        "storage_uri": os.environ.get("HARVEST_STORAGE_URI") or (_REPO_DATA / "storage").as_uri(),
        "work_uri": os.environ.get("HARVEST_WORK_URI") or (_REPO_DATA / "work").as_uri(),
    }


def keep_work_files(environ: Mapping[str, str] | None = None) -> bool:
    """``HARVEST_KEEP_WORK_FILES``: keep a run's work folder after its results are recorded (debugging).

    ``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``); unset or empty is false.
    """
    from include.harvest.settings import _parse  # the one parser of HARVEST_* switches, same wording

    raw = (os.environ if environ is None else environ).get("HARVEST_KEEP_WORK_FILES", "").strip()
    return bool(_parse("keep_work_files", raw, bool)) if raw else False


def worker_slots(environ: Mapping[str, str] | None = None) -> int:
    """Celery task slots over all workers, for sizing batches: ``HARVEST_WORKER_SLOTS``, else this
    worker's ``[celery] worker_concurrency`` (right for one machine; set the variable with several).
    """
    from include.harvest.settings import _parse

    raw = (os.environ if environ is None else environ).get("HARVEST_WORKER_SLOTS", "").strip()
    if raw:
        slots = int(_parse("worker_slots", raw, int))
        if slots < 1:
            raise ValueError(f"HARVEST_WORKER_SLOTS={raw!r} must be at least 1")
        return slots
    from airflow.configuration import conf

    return max(1, conf.getint("celery", "worker_concurrency", fallback=16))


def machine_hostname() -> str:
    """The hostname task instances report (``[core] hostname_callable``).

    ``HARVEST_HOSTNAME`` when set, else Airflow's default (the machine's FQDN). The local stack
    sets it per Celery worker when several run on one machine, so the UI and the tests can tell
    which worker ran a batch, as they could tell two machines apart.
    """
    from airflow.utils.net import getfqdn

    return os.environ.get("HARVEST_HOSTNAME") or getfqdn()


@contextlib.contextmanager
def fail_fast_on_permanent_storage_errors() -> Iterator[None]:
    """Turn a :class:`StorageUnavailable` that waiting cannot fix (a missing bucket, refused
    credentials) into Airflow's "fail without retrying", keeping its message; an unreachable
    endpoint is raised as it is, so the task's retries cover a blip."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.harvest.errors import StorageUnavailable

    try:
        yield
    except StorageUnavailable as exc:
        if exc.retryable:
            raise
        raise AirflowFailException(str(exc)) from exc


@contextlib.contextmanager
def fail_fast_on_refused_sources() -> Iterator[None]:
    """Turn a source outside the allowed roots, or an explicit list that does not exist, into
    Airflow's "fail without retrying", keeping its message: waiting fixes neither."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.harvest.sources import SourceNotAllowed, SourceNotFound

    try:
        yield
    except (SourceNotAllowed, SourceNotFound) as exc:
        raise AirflowFailException(str(exc)) from exc
