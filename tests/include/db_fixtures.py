"""Fresh Postgres databases for tests: one per test, created and dropped around it.

Postgres at 127.0.0.1:5432 with trust auth (the project's machines); override the server with
``HARVEST_TEST_PG_ADMIN_DSN``. Test modules load these fixtures with
``pytest_plugins = ["tests.include.db_fixtures"]``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from include.harvest.migrations import apply_migrations

ADMIN_DSN = os.environ.get("HARVEST_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin_connection() -> Any:
    try:
        conn = psycopg2.connect(ADMIN_DSN, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"these tests need Postgres at {ADMIN_DSN} (set HARVEST_TEST_PG_ADMIN_DSN): {exc}")
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    return conn


@pytest.fixture
def empty_db_dsn() -> Iterator[str]:
    """DSN of a new, empty database named ``harvest_test_<8 hex>``; dropped after the test."""
    name = f"harvest_test_{uuid.uuid4().hex[:8]}"
    admin = _admin_connection()
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(ADMIN_DSN)
        yield urlunsplit(parts._replace(path=f"/{name}"))
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@pytest.fixture
def harvest_db_dsn(empty_db_dsn: str) -> str:
    """DSN of a new database with every harvest migration applied."""
    apply_migrations(empty_db_dsn)
    return empty_db_dsn


@pytest.fixture(params=["psycopg2", "psycopg"])
def harvest_conn(request: pytest.FixtureRequest, harvest_db_dsn: str) -> Iterator[Any]:
    """A connection to a migrated, empty harvest database, once per driver.

    psycopg 3 too, because Airflow's PostgresHook returns psycopg 3 connections when it is installed.
    """
    if request.param == "psycopg":
        psycopg = pytest.importorskip("psycopg")
        conn = psycopg.connect(harvest_db_dsn)
    else:
        conn = psycopg2.connect(harvest_db_dsn)
    try:
        yield conn
    finally:
        conn.close()
