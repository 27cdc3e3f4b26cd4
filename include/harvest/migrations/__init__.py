"""Versioned schema migrations for the results database.

Files named ``NNNN_description.sql`` in this folder are applied in version order, each once, and
recorded in ``harvest.schema_migrations``. Setup (``make setup``, test fixtures) runs them; tasks
never create tables. All pending files are applied in one transaction under a Postgres advisory
lock, so two setups started at once do not race: the second waits, then finds nothing to do.

Command line::

    python -m include.harvest.migrations [--dsn postgresql://user:pass@host:5432/db]

The DSN defaults to the Airflow connection URI in ``AIRFLOW_CONN_HARVEST_DB``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

__all__ = [
    "MIGRATIONS_DIR",
    "Migration",
    "MigrationError",
    "apply_migrations",
    "available_migrations",
    "dsn_from_airflow_conn",
    "pending_migrations",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent

# Any fixed 64-bit key works as long as every setup uses the same one; this spells "harvest!".
_ADVISORY_LOCK_KEY = int.from_bytes(b"harvest!", "big") & 0x7FFF_FFFF_FFFF_FFFF
_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[A-Za-z0-9_]+)\.sql$")
# libpq URI parameters; Airflow connection URIs may carry others (extras) that libpq would refuse.
_LIBPQ_PARAMS = frozenset(
    {
        "application_name",
        "connect_timeout",
        "keepalives",
        "keepalives_idle",
        "options",
        "sslcert",
        "sslkey",
        "sslmode",
        "sslrootcert",
        "target_session_attrs",
    }
)

_CREATE_LEDGER = """
CREATE SCHEMA IF NOT EXISTS harvest;
CREATE TABLE IF NOT EXISTS harvest.schema_migrations (
    version    text        PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


class MigrationError(RuntimeError):
    """A migration could not be applied; nothing of this setup was committed."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str  # "0001"
    name: str  # "0001_initial"
    path: Path


def available_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every ``NNNN_*.sql`` file in ``directory``, in version order."""
    found: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files must be named NNNN_description.sql")
        version = match["version"]
        if version in found:
            raise MigrationError(f"{path.name} and {found[version].path.name} share version {version}")
        found[version] = Migration(version=version, name=path.stem, path=path)
    return [found[v] for v in sorted(found)]


def pending_migrations(dsn: str, *, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Names of the migrations not yet applied to the database at ``dsn``."""
    conn = _connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass('harvest.schema_migrations') IS NOT NULL")
            row = cur.fetchone()
            applied: set[str] = set()
            if row and row[0]:
                cur.execute("SELECT version FROM harvest.schema_migrations")
                applied = {version for (version,) in cur.fetchall()}
    finally:
        conn.close()
    return [m.name for m in available_migrations(directory) if m.version not in applied]


def apply_migrations(dsn: str, *, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration; return the names applied (``[]`` when up to date)."""
    import psycopg2

    migrations = available_migrations(directory)
    conn = _connect(dsn)
    try:
        with conn, conn.cursor() as cur:  # one transaction: all pending files, or none
            # Transaction-scoped: released at commit or rollback, even if this process dies.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK_KEY,))
            cur.execute(_CREATE_LEDGER)
            cur.execute("SELECT version FROM harvest.schema_migrations")
            applied = {version for (version,) in cur.fetchall()}
            done: list[str] = []
            for migration in migrations:
                if migration.version in applied:
                    continue
                try:
                    cur.execute(migration.path.read_text(encoding="utf-8"))
                except psycopg2.Error as exc:
                    detail = (exc.pgerror or str(exc)).strip().splitlines()[0]
                    raise MigrationError(f"{migration.path.name} failed, nothing applied: {detail}") from exc
                cur.execute(
                    "INSERT INTO harvest.schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                done.append(migration.name)
        return done
    finally:
        conn.close()


def _connect(dsn: str) -> Any:
    import psycopg2

    try:
        return psycopg2.connect(dsn, connect_timeout=10)
    except psycopg2.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MigrationError(f"cannot connect to {_redact(dsn)}: {first_line}") from exc


def dsn_from_airflow_conn(value: str) -> str:
    """A libpq DSN from an Airflow connection value (``AIRFLOW_CONN_HARVEST_DB``).

    Accepts ``postgresql://`` and ``postgres://`` URIs (Airflow extras in the query string that
    libpq does not know are dropped) and Airflow's JSON form (``{"conn_type": "postgres", ...}``).
    """
    value = value.strip()
    if value.startswith("{"):
        conn = json.loads(value)
        userinfo = quote(str(conn.get("login") or ""), safe="")
        if conn.get("password"):
            userinfo += ":" + quote(str(conn["password"]), safe="")
        netloc = f"{userinfo}@" if userinfo else ""
        netloc += str(conn.get("host") or "localhost")
        if conn.get("port"):
            netloc += f":{conn['port']}"
        extra = conn.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra) if extra.strip() else {}
        query = urlencode({k: v for k, v in extra.items() if k in _LIBPQ_PARAMS})
        database = conn.get("schema") or conn.get("database") or ""
        return urlunsplit(("postgresql", netloc, f"/{database}", query, ""))
    parts = urlsplit(value)
    if parts.scheme not in {"postgresql", "postgres"}:
        raise ValueError(
            f"expected a postgresql://user:pass@host:port/db URI, got scheme {parts.scheme or 'none'!r}"
        )
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k in _LIBPQ_PARAMS])
    return urlunsplit(("postgresql", parts.netloc, parts.path, query, ""))


def _redact(dsn: str) -> str:
    """The DSN without its password, fit for an error message."""
    parts = urlsplit(dsn)
    if parts.scheme and parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    return re.sub(r"password=\S+", "password=***", dsn)
