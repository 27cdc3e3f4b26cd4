"""RabbitMQ as the Celery broker (the broker of the original chord design): one setting changes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kombu import Connection

from tests.cluster.conftest import Cluster, assert_recorded_exactly

pytestmark = pytest.mark.e2e

# The machine's RabbitMQ (started by the machine, not by the project). The stack's queue has a
# name of its own, so nothing else on this broker is touched.
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture(scope="module")
def on_rabbitmq(cluster: Cluster) -> Iterator[Cluster]:
    redis_broker = cluster.stack.broker_url
    cluster.stack.restart(broker_url=RABBITMQ_URL)  # the one setting: HARVEST_BROKER_URL
    try:
        yield cluster
    finally:
        cluster.stack.restart(broker_url=redis_broker)
        with Connection(RABBITMQ_URL) as conn:
            conn.default_channel.queue_delete(cluster.stack.queue)


def test_a_run_with_rabbitmq_as_the_broker(on_rabbitmq: Cluster):
    cluster = on_rabbitmq
    assert "broker_url = amqp://" in (cluster.stack.home / "airflow.cfg").read_text()
    expected = cluster.site.add_images("rabbit", 20, seed=701)
    run_id = cluster.trigger({"urls": "\n".join(expected), "batch_size": 5})
    cluster.api.wait_for_run("harvest", run_id, timeout=300)
    assert_recorded_exactly(cluster, run_id, expected)
    assert {ti["try_number"] for ti in cluster.task_instances(run_id)} == {1}
