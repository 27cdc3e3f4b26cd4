"""The Airflow end of the library: the results DB connection and deployment settings.

This is the one module that imports Airflow; everything else is plain Python and receives what
this module builds (a connection factory, URIs, settings).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["RESULTS_CONN_ID", "deployment_uris", "results_db_connection"]

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
