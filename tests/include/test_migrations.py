from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from include.harvest.migrations import (
    MIGRATIONS_DIR,
    MigrationError,
    apply_migrations,
    dsn_from_airflow_conn,
    pending_migrations,
)
from include.harvest.models import Status

pytest_plugins = ["tests.include.db_fixtures"]

REPO = Path(__file__).resolve().parents[2]


def query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


ALL_MIGRATIONS = [
    "0001_initial",
    "0002_report_indexes",
    "0003_internal_error_status",
    "0004_staged_results",
    "0005_staged_attempts",
]


def test_fresh_database_gets_every_table_and_a_ledger(empty_db_dsn: str) -> None:
    assert pending_migrations(empty_db_dsn) == ALL_MIGRATIONS

    applied = apply_migrations(empty_db_dsn)

    assert applied == ALL_MIGRATIONS
    tables = query(
        empty_db_dsn,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'harvest' ORDER BY 1",
    )
    assert tables == [
        ("downloads",),
        ("objects",),
        ("runs",),
        ("schema_migrations",),
        ("staged_batches",),
        ("staged_results",),
        ("url_sources",),
    ]
    assert query(empty_db_dsn, "SELECT version, name FROM harvest.schema_migrations ORDER BY 1") == [
        ("0001", "0001_initial"),
        ("0002", "0002_report_indexes"),
        ("0003", "0003_internal_error_status"),
        ("0004", "0004_staged_results"),
        ("0005", "0005_staged_attempts"),
    ]
    assert pending_migrations(empty_db_dsn) == []


def test_applying_twice_is_a_no_op(empty_db_dsn: str) -> None:
    apply_migrations(empty_db_dsn)
    before = query(empty_db_dsn, "SELECT version, applied_at FROM harvest.schema_migrations")

    assert apply_migrations(empty_db_dsn) == []
    assert query(empty_db_dsn, "SELECT version, applied_at FROM harvest.schema_migrations") == before


def test_concurrent_setups_apply_once(empty_db_dsn: str) -> None:
    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(lambda _: apply_migrations(empty_db_dsn), range(6)))

    assert sorted(outcomes) == [[]] * 5 + [ALL_MIGRATIONS]
    assert query(empty_db_dsn, "SELECT count(*) FROM harvest.schema_migrations") == [(len(ALL_MIGRATIONS),)]


def test_batches_staged_before_the_upgrade_to_attempts_still_count(empty_db_dsn: str, tmp_path: Path) -> None:
    """A run in flight across the upgrade: its batches staged whole under version 4 are recorded."""
    from include.harvest.results import RunInfo, record_staged_run

    for name in ALL_MIGRATIONS[:4]:
        shutil.copy(MIGRATIONS_DIR / f"{name}.sql", tmp_path)
    apply_migrations(empty_db_dsn, directory=tmp_path)
    query(
        empty_db_dsn,
        "INSERT INTO harvest.staged_results (dag_run_id, batch, seq, url, status, attempts, elapsed_ms)"
        " VALUES ('manual__1', 0, 0, 'https://a.example.com/1.jpg', 'ok', 1, 5),"
        " ('manual__1', 0, 1, 'https://a.example.com/2.jpg', 'http_error', 1, 5) RETURNING 1",
    )

    assert apply_migrations(empty_db_dsn) == ["0005_staged_attempts"]

    run = RunInfo(
        run_key="manual__1",
        dag_run_id="manual__1",
        run_type="manual",
        logical_date=None,
        source="manual",
        started_at=datetime.now(UTC),
    )
    conn = psycopg2.connect(empty_db_dsn)
    try:
        summary = record_staged_run(conn, run, batches=1, expected_urls=2)
    finally:
        conn.close()
    assert summary.counts == {"ok": 1, "http_error": 1}


def test_only_new_files_are_applied_in_version_order(empty_db_dsn: str, tmp_path: Path) -> None:
    shutil.copy(MIGRATIONS_DIR / "0001_initial.sql", tmp_path)
    apply_migrations(empty_db_dsn, directory=tmp_path)
    (tmp_path / "0003_notes.sql").write_text("ALTER TABLE harvest.runs ADD COLUMN notes text;")
    (tmp_path / "0002_index.sql").write_text("CREATE INDEX runs_finished ON harvest.runs (finished_at);")

    assert apply_migrations(empty_db_dsn, directory=tmp_path) == ["0002_index", "0003_notes"]
    assert apply_migrations(empty_db_dsn, directory=tmp_path) == []


def test_a_failing_migration_names_its_file_and_applies_nothing(empty_db_dsn: str, tmp_path: Path) -> None:
    shutil.copy(MIGRATIONS_DIR / "0001_initial.sql", tmp_path)
    (tmp_path / "0002_broken.sql").write_text("ALTER TABLE harvest.nope ADD COLUMN x int;")

    with pytest.raises(MigrationError, match=r"0002_broken.sql failed, nothing applied: .*harvest.nope"):
        apply_migrations(empty_db_dsn, directory=tmp_path)

    assert query(empty_db_dsn, "SELECT to_regclass('harvest.downloads') IS NULL") == [(True,)]


def test_badly_named_files_are_refused(empty_db_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "2_add_things.sql").write_text("SELECT 1;")

    with pytest.raises(MigrationError, match="NNNN_description.sql"):
        apply_migrations(empty_db_dsn, directory=tmp_path)


def test_unreachable_database_is_one_clear_line() -> None:
    with pytest.raises(MigrationError) as caught:
        apply_migrations("postgresql://harvest:s3cret@127.0.0.1:1/harvest")

    message = str(caught.value)
    assert message.startswith("cannot connect to postgresql://harvest:***@127.0.0.1:1/harvest: ")
    assert "s3cret" not in message and "\n" not in message


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "include.harvest.migrations", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_uses_the_airflow_connection_env_var(empty_db_dsn: str) -> None:
    airflow_uri = empty_db_dsn.replace("postgresql://", "postgres://", 1) + "?__extra__=%7B%7D"

    first = _cli(env={"AIRFLOW_CONN_HARVEST_DB": airflow_uri})
    second = _cli(env={"AIRFLOW_CONN_HARVEST_DB": airflow_uri})

    assert (first.returncode, first.stdout.strip()) == (
        0,
        f"applied {len(ALL_MIGRATIONS)} migration(s): {', '.join(ALL_MIGRATIONS)}",
    )
    assert (second.returncode, second.stdout.strip()) == (0, "schema up to date, nothing to apply")


def test_cli_reports_an_unreachable_database_without_a_traceback() -> None:
    result = _cli("--dsn", "postgresql://postgres@127.0.0.1:1/harvest", env={})

    assert result.returncode == 1
    assert result.stderr.startswith(
        "harvest migrations: cannot connect to postgresql://postgres@127.0.0.1:1/harvest"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("postgresql://u:p%40ss@db:5432/harvest", "postgresql://u:p%40ss@db:5432/harvest"),
        (
            "postgres://u:p@db/harvest?sslmode=require&__extra__=%7B%7D",
            "postgresql://u:p@db/harvest?sslmode=require",
        ),
        (
            '{"conn_type": "postgres", "login": "u", "password": "p@ss", "host": "db", "port": 5433,'
            ' "schema": "harvest", "extra": {"sslmode": "disable", "cursor": "dictcursor"}}',
            "postgresql://u:p%40ss@db:5433/harvest?sslmode=disable",
        ),
    ],
)
def test_dsn_from_airflow_conn(value: str, expected: str) -> None:
    assert dsn_from_airflow_conn(value) == expected


def test_dsn_from_airflow_conn_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="expected a postgresql://"):
        dsn_from_airflow_conn("mysql://u@db/x")


def test_the_schema_accepts_every_status(empty_db_dsn: str) -> None:
    apply_migrations(empty_db_dsn)
    rows = ", ".join(f"('k', 'http://x/{status}', '{status}', 'r')" for status in Status)

    query(
        empty_db_dsn,
        f"INSERT INTO harvest.downloads (run_key, url, status, dag_run_id) VALUES {rows} RETURNING 1",
    )

    assert query(empty_db_dsn, "SELECT count(*) FROM harvest.downloads") == [(len(Status),)]
