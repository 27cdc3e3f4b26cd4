"""Starting a test's private Harvest stack, and stopping it (by pid) whatever happens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from scripts.airflow_api import AirflowAPI
from scripts.stack import Stack

__all__ = ["started"]


@contextmanager
def started(stack: Stack) -> Iterator[AirflowAPI]:
    """Set up and start ``stack``, wait until it is healthy and has parsed the ``harvest`` DAG
    (unpaused), and yield a logged-in REST client. At the end every process is stopped by pid
    and the stack's databases are dropped."""
    try:
        stack.setup()
        stack.start()
        stack.wait_healthy(timeout=300)
        api = AirflowAPI(stack.api_url, "admin", stack.admin_password())
        api.wait_for_dag("harvest")
        yield api
    finally:
        stack.stop()
        stack.drop_databases()
