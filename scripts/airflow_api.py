"""A small client for Airflow 3's REST API v2, used by the demo, the end-to-end tests and the benchmark.

It logs in through the auth manager's ``/auth/token`` endpoint (the JWT the UI uses), triggers runs
and waits for them. It only speaks HTTP, so it works against any Harvest deployment.
"""

from __future__ import annotations

import time
from typing import Any

import requests

__all__ = ["AirflowAPI", "RunFailed"]

FINISHED = {"success", "failed"}


class RunFailed(RuntimeError):
    """A DAG run ended in a state other than the one waited for."""


class AirflowAPI:
    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.timeout = timeout
        response = self.session.post(
            f"{self.base_url}/auth/token", json={"username": username, "password": password}, timeout=timeout
        )
        response.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.base_url}/api/v2{path}", timeout=self.timeout, **kwargs)

    def get(self, path: str, **params: Any) -> Any:
        response = self.request("GET", path, params=params)
        response.raise_for_status()
        return response.json()

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict[str, Any]:
        """Wait until the dag-processor has parsed the DAG; unpause it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.request("GET", f"/dags/{dag_id}")
            if response.status_code == 200:
                if response.json().get("is_paused"):
                    self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
                return dict(response.json())
            time.sleep(2)
        errors = self.get("/importErrors")
        raise TimeoutError(f"DAG {dag_id!r} was not parsed within {timeout:.0f}s; import errors: {errors}")

    def trigger(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        *,
        logical_date: str | None = None,
        run_id: str | None = None,
    ) -> requests.Response:
        """POST a new run; the raw response, so callers can check a refusal (400) too."""
        body: dict[str, Any] = {"logical_date": logical_date, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.get(f"/dags/{dag_id}/dagRuns/{run_id}"))

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/dags/{dag_id}/dagRuns", limit=100)["dag_runs"])

    def wait_for_run(
        self, dag_id: str, run_id: str, *, timeout: float = 600, expect: str = "success"
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        state = "unknown"
        while time.monotonic() < deadline:
            run = self.run(dag_id, run_id)
            state = run["state"]
            if state in FINISHED:
                if state != expect:
                    raise RunFailed(f"run {run_id} ended {state}: {self.describe_failures(dag_id, run_id)}")
                return run
            time.sleep(1)
        raise TimeoutError(f"run {run_id} still {state} after {timeout:.0f}s")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """All of the run's task instances (the API returns at most 100 per page)."""
        found: list[dict[str, Any]] = []
        while True:
            page = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=100, offset=len(found))
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    def describe_failures(self, dag_id: str, run_id: str) -> str:
        failed = [
            f"{ti['task_id']}[{ti['map_index']}]={ti['state']}"
            for ti in self.task_instances(dag_id, run_id)
            if ti["state"] not in ("success", "skipped")
        ]
        return ", ".join(failed) or "no failed task instances"
