"""Airflow's own API server app, built in this process with the repository's plugins folder.

The app is what ``airflow api-server`` serves: ``airflow.api_fastapi.app.create_app`` with the
plugins loaded by Airflow's plugins manager, the simple auth manager (the project's, with a
random JWT secret), its JWT refresh middleware and its token revocation check. Its metadata DB is
a throw-away SQLite file with Airflow's tables (the auth checks read ``dag``, ``team`` and
``revoked_token``); the ``harvest_db`` Connection points at a fresh results database with one run.
Everything patched is restored afterwards.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from include.harvest.migrations import apply_migrations
from include.harvest.models import Result, Status
from include.harvest.results import RunInfo, record_run

REPO = Path(__file__).resolve().parents[2]
RUN_ID = "manual__2026-03-01T10:00:00+00:00"  # ':' and '+' as in Airflow's run ids


@dataclass
class AirflowAPI:
    client: TestClient
    app: FastAPI
    plugin_app: FastAPI  # the Harvest app, as Airflow's plugins manager loaded it
    url_prefix: str
    jwt_secret: str
    run_id: str

    def token(self, username: str, role: str | None) -> str:
        """A JWT as the UI gets it at login, from the running auth manager."""
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

        return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=username, role=role))


@pytest.fixture(scope="module")
def results_dsn() -> Iterator[str]:
    """A migrated results DB holding one recorded manual run, for the module."""
    from tests.include.db_fixtures import ADMIN_DSN  # here: pytest registers that module as a plugin

    name = f"harvest_test_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(ADMIN_DSN, connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        dsn = urlunsplit(urlsplit(ADMIN_DSN)._replace(path=f"/{name}"))
        apply_migrations(dsn)
        conn = psycopg2.connect(dsn)
        try:
            record_run(
                conn,
                RunInfo(RUN_ID, RUN_ID, "manual", None, "urls param", datetime.now(UTC)),
                [
                    Result(
                        url="http://127.0.0.1:9/a.jpg",
                        status=Status.CONNECTION_ERROR,
                        error="refused",
                        attempts=1,
                    ),
                    Result(url="not a url", status=Status.REJECTED, error="line 2: contains whitespace"),
                ],
                batches=1,
            )
        finally:
            conn.close()
        yield dsn
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@pytest.fixture(scope="module")
def airflow_api(tmp_path_factory: pytest.TempPathFactory, results_dsn: str) -> Iterator[AirflowAPI]:
    import airflow.models
    from airflow import plugins_manager, settings
    from airflow.api_fastapi import app as api_app
    from airflow.models.base import Base
    from sqlalchemy import create_engine
    from sqlalchemy.orm import scoped_session, sessionmaker

    home = tmp_path_factory.mktemp("airflow-home")
    jwt_secret = secrets.token_urlsafe(64)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(
            "AIRFLOW__CORE__AUTH_MANAGER",
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        )
        patch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,viewer:viewer")
        patch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
        patch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(home / "passwords.json"))
        patch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", jwt_secret)
        patch.setenv("AIRFLOW_CONN_HARVEST_DB", results_dsn)
        # Airflow's metadata tables in a throw-away SQLite file (what `airflow db migrate` creates).
        airflow.models.import_all_models()
        engine = create_engine(f"sqlite:///{home / 'airflow.db'}")
        Base.metadata.create_all(engine)
        session = scoped_session(sessionmaker(bind=engine, expire_on_commit=False))
        patch.setattr(settings, "engine", engine)
        patch.setattr(settings, "Session", session)
        patch.setattr(settings, "NonScopedSession", sessionmaker(bind=engine, expire_on_commit=False))
        patch.setattr(settings, "PLUGINS_FOLDER", str(REPO / "plugins"))
        _clear_plugin_caches(plugins_manager)
        api_app.purge_cached_app()
        try:
            app = api_app.create_app("core")
            (plugin,) = [p for p in plugins_manager.get_fastapi_plugins()[0] if p["name"] == "Harvest report"]
            with TestClient(app, base_url="http://127.0.0.1:8080") as client:  # runs the app's lifespan
                yield AirflowAPI(client, app, plugin["app"], plugin["url_prefix"], jwt_secret, RUN_ID)
        finally:
            api_app.purge_cached_app()
            _clear_plugin_caches(plugins_manager)
            session.remove()
            engine.dispose()


def _clear_plugin_caches(plugins_manager: Any) -> None:
    for name in dir(plugins_manager):
        cached = getattr(plugins_manager, name)
        if callable(getattr(cached, "cache_clear", None)):
            cached.cache_clear()
