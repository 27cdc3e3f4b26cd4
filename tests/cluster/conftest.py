"""Harvest as several machines run it: one Airflow stack, two Celery workers, S3 storage.

The stack of this package stands in for a real deployment spread over machines:
- two Celery workers (``worker-a``, ``worker-b``), each with its own ``--celery-hostname``,
  hostname and scratch folder, sharing no local data folder;
- blobs, work files and URL lists all on an S3-protocol server (moto in server mode on a free
  loopback port), reached through the standard AWS variables as a real deployment would;
- a Celery broker of its own (a ``redis-server`` on a free port, with persistence), so that a test
  can restart it without touching the machine's Redis;
- the machine's Postgres (unique databases, dropped at the end) and Redis (per-host limits).

It is started once for the package and stopped (by pid) when the package is done.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis

from include.harvest.workfiles import RunWorkspace
from scripts.airflow_api import AirflowAPI
from scripts.ports import free_port
from scripts.stack import Stack, Worker
from tests.s3 import MotoServer
from tests.services import RedisServer
from tests.sites import ImageSite, serve_images
from tests.stacks import started

pytestmark = pytest.mark.e2e

BUCKET = "harvest-cluster"
GONE_BUCKET = "harvest-no-such-bucket"  # never created
# Redis database of the per-host limits: away from make run (1), the bench (9), tests/e2e (11)
# and the engine tests (13).
COORDINATION_DB = 12
WORKERS = ("worker-a", "worker-b")


@dataclass
class Cluster:
    stack: Stack
    api: AirflowAPI
    s3: MotoServer
    broker: RedisServer
    site: ImageSite
    local_dirs: list[Path]  # the stack's data folder and each worker's scratch folder

    # ---- storage ------------------------------------------------------------------------
    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{BUCKET}", *parts])

    def write_list(self, day: str, urls: Iterable[str]) -> None:
        self.s3.put(BUCKET, f"url_lists/{day}.txt", ("\n".join(urls) + "\n").encode())

    def keys(self, prefix: str) -> list[str]:
        return self.s3.list_keys(BUCKET, prefix)

    def blob(self, storage_uri: str) -> bytes:
        key = storage_uri.removeprefix(f"s3://{BUCKET}/")
        return self.s3.get(BUCKET, key)

    def work_keys(self, run_id: str) -> list[str]:
        """Objects left in the run's work folder."""
        root = RunWorkspace(self.uri("work"), run_id).root
        return self.keys(root.removeprefix(self.uri() + "/") + "/")

    def local_files(self) -> list[Path]:
        return [path for folder in self.local_dirs for path in folder.rglob("*") if path.is_file()]

    # ---- Airflow --------------------------------------------------------------------------
    def trigger(self, conf: dict[str, Any] | None = None, *, logical_date: str | None = None) -> str:
        response = self.api.trigger("harvest", conf or {}, logical_date=logical_date)
        assert response.status_code == 200, response.text
        return str(response.json()["dag_run_id"])

    def task_instances(self, run_id: str, task_id: str | None = None) -> list[dict[str, Any]]:
        tis = self.api.task_instances("harvest", run_id)
        return [ti for ti in tis if task_id is None or ti["task_id"] == task_id]

    def wait_until(self, what: str, condition: Any, timeout: float = 120, every: float = 0.5) -> Any:
        """Poll ``condition()`` until it returns something truthy; return that."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := condition():
                return value
            time.sleep(every)
        raise TimeoutError(f"not within {timeout:.0f}s: {what}")

    def results_db(self) -> psycopg2.extensions.connection:
        return psycopg2.connect(self.stack.results_url)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.results_db() as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())


@pytest.fixture(scope="package")
def image_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageSite]:
    with serve_images(tmp_path_factory.mktemp("cluster-site")) as site:
        yield site


@pytest.fixture(scope="package")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, image_site: ImageSite, s3_server: MotoServer
) -> Iterator[Cluster]:
    s3_server.create_bucket(BUCKET)
    broker = RedisServer(tmp_path_factory.mktemp("broker"))
    try:
        broker.start()
        data = tmp_path_factory.mktemp("cluster-data")  # must stay empty: everything goes to S3
        scratch = {name: tmp_path_factory.mktemp(f"scratch-{name}") for name in WORKERS}
        stack = Stack.isolated(
            "harvest_cluster",
            home=tmp_path_factory.mktemp("cluster-home"),
            data=data,
            broker_db=0,
            coordination_db=COORDINATION_DB,
            scheduler_idle_sleep=0.1,  # short runs: their task gaps, not the scheduler's CPU, set their time
            broker_url=f"{broker.url}/0",
            storage_uri=f"s3://{BUCKET}/storage",
            work_uri=f"s3://{BUCKET}/work",
            url_list_uri=f"s3://{BUCKET}/url_lists",
            workers=tuple(Worker(name, free_port(), scratch[name]) for name in WORKERS),
            extra_env={
                **s3_server.env(),
                "AWS_EC2_METADATA_DISABLED": "true",
                # An allowed list folder whose bucket is gone (a typo, a deleted bucket).
                "HARVEST_LIST_ROOTS": f"s3://{GONE_BUCKET}/lists",
            },
        )
        redis.Redis.from_url(f"{stack.redis_server}/{COORDINATION_DB}").flushdb()
        with started(stack) as api:
            cluster = Cluster(stack, api, s3_server, broker, image_site, [data, *scratch.values()])
            # Unpausing schedules today's run at once (no list in the bucket: no_source). Let it
            # end, so every fault lands on the test's own run only.
            cluster.wait_until(
                "today's scheduled run ended",
                lambda: (
                    (runs := api.runs("harvest")) and all(r["state"] in ("success", "failed") for r in runs)
                ),
                timeout=180,
            )
            yield cluster
    finally:
        broker.stop()


# ---- the invariants every fault must leave intact -------------------------------------------
def assert_recorded_exactly(
    cluster: Cluster, run_key: str, expected: dict[str, str], *, status: str | set[str] = "ok"
) -> None:
    """The run's rows, blobs and summary are exactly right, and the store agrees with the DB.

    - ``harvest.downloads`` has one row per URL of the list, each with ``status`` (or one of them)
      and its sha256;
    - every blob in the store has a ``harvest.objects`` row and every row its blob, with the bytes
      its name promises; no temporary or partial object is left in the store;
    - ``harvest.runs`` has one summary for the run key, counting every URL.
    """
    allowed = {status} if isinstance(status, str) else status
    rows = cluster.query(
        "SELECT url, status, sha256, error FROM harvest.downloads WHERE run_key = %s", run_key
    )
    assert len(rows) == len(expected), f"{len(rows)} rows for {len(expected)} URLs"
    assert {url: sha for url, _, sha, _ in rows} == expected
    wrong = [(url, st, error) for url, st, _, error in rows if st not in allowed]
    assert not wrong, wrong[:5]

    objects = dict(cluster.query("SELECT storage_uri, sha256 FROM harvest.objects"))
    stored = {cluster.uri(key) for key in cluster.keys("storage/")}
    assert stored == set(objects), {
        "blobs without a row": sorted(stored - set(objects))[:5],
        "rows without a blob": sorted(set(objects) - stored)[:5],
    }
    for uri, sha in objects.items():
        if sha in expected.values():
            assert uri.rsplit("/", 3)[1:] == [sha[:2], sha[2:4], uri.rsplit("/", 1)[1]]
            assert uri.rsplit("/", 1)[1].split(".")[0] == sha  # <base>/ab/cd/<sha256>.<ext>
            assert hashlib.sha256(cluster.blob(uri)).hexdigest() == sha

    summaries = cluster.query(
        "SELECT urls_total, status_counts FROM harvest.runs WHERE run_key = %s", run_key
    )
    assert len(summaries) == 1
    ((urls_total, counts),) = summaries
    assert urls_total == len(expected) == sum(counts.values())
    assert set(counts) <= allowed
