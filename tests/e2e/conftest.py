"""The real stack for end-to-end tests: started once and shared by every test of this package.

Airflow api-server, scheduler, dag-processor, triggerer and a Celery worker run as real processes
(under the same supervisor ``make run`` uses) against a fresh metadata DB and results DB with unique
names, their own Redis database numbers and free ports; images are served over real HTTP from a
local server. Everything is stopped by pid and the databases are dropped at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest
import redis

from scripts.airflow_api import AirflowAPI
from scripts.stack import Stack
from tests.sites import ImageSite, serve_images
from tests.stacks import started

pytestmark = pytest.mark.e2e

# Redis database numbers of the test stack: away from make run (0, 1), the bench (8, 9) and the engine tests (13).
BROKER_DB, COORDINATION_DB = 10, 11


@pytest.fixture(scope="package")
def image_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageSite]:
    with serve_images(tmp_path_factory.mktemp("site")) as site:
        yield site


@dataclass
class RunningStack:
    stack: Stack
    api: AirflowAPI
    data: Path
    scheduled_urls: dict[str, str]  # today's list, written before the scheduler started

    @property
    def url_lists(self) -> Path:
        return self.data / "url_lists"

    def results_db(self) -> psycopg2.extensions.connection:
        return psycopg2.connect(self.stack.results_url)

    def metadata_db(self) -> psycopg2.extensions.connection:
        return psycopg2.connect(self.stack.metadata_url)


# Package-scoped: stopped when the package's tests are done, before tests/cluster starts its own.
@pytest.fixture(scope="package")
def harvest_stack(tmp_path_factory: pytest.TempPathFactory, image_site: ImageSite) -> Iterator[RunningStack]:
    data = tmp_path_factory.mktemp("harvest-data")
    (data / "url_lists").mkdir()
    # With catchup off, unpausing the DAG schedules a run for today at once: give it today's list.
    scheduled_urls = image_site.add_images("scheduled", 6, seed=99)
    today = datetime.now(UTC).date().isoformat()
    (data / "url_lists" / f"{today}.txt").write_text("# today's list\n" + "\n".join(scheduled_urls) + "\n")
    stack = Stack.isolated(
        "harvest_e2e",
        home=tmp_path_factory.mktemp("airflow-home"),
        data=data,
        broker_db=BROKER_DB,
        coordination_db=COORDINATION_DB,
        scheduler_idle_sleep=0.1,  # short runs: their task gaps, not the scheduler's CPU, set their time
    )
    for db in (BROKER_DB, COORDINATION_DB):
        redis.Redis.from_url(f"{stack.redis_server}/{db}").flushdb()
    with started(stack) as api:
        yield RunningStack(stack, api, data, scheduled_urls)
