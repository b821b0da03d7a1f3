"""Smoke test of the local stack started by ``scripts/stack up``.

Runs only with ``STREAMSCORE_STACK=1``::

    scripts/stack up
    STREAMSCORE_STACK=1 .venv/bin/pytest tests/integration/test_stack_smoke.py -q

Ports and partition count follow the same environment variables as ``scripts/stack``.
"""

from __future__ import annotations

import os
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import redis

with warnings.catch_warnings():
    # kafka-python 3.0.x loads its protocol schemas at import time with the legacy
    # importlib.resources.read_text/open_text, which Python 3.11 reports as DeprecationWarning
    # (an error under this project's filterwarnings=error).
    warnings.filterwarnings(
        "ignore", r".* is deprecated\. Use files\(\) instead", DeprecationWarning
    )
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from devstack import STANDARD_TOPICS
from devstack.topics import ONE_PARTITION

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("STREAMSCORE_STACK") != "1",
        reason="needs the local stack: scripts/stack up, then STREAMSCORE_STACK=1",
    ),
]

KAFKA_BOOTSTRAP = f"127.0.0.1:{os.environ.get('STREAMSCORE_KAFKA_PORT', '9092')}"
REDIS_PORT = int(os.environ.get("STREAMSCORE_REDIS_PORT", "6379"))
PARTITIONS = int(os.environ.get("STREAMSCORE_PARTITIONS", "4"))


@pytest.fixture(scope="module")
def admin() -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(
        bootstrap_servers=KAFKA_BOOTSTRAP,
        client_id="stack-smoke-admin",
        request_timeout_ms=15_000,
        bootstrap_timeout_ms=10_000,
    )
    try:
        yield client
    finally:
        client.close()


def test_single_unfenced_broker(admin: KafkaAdminClient) -> None:
    cluster = admin.describe_cluster()
    assert [b["broker_id"] for b in cluster["brokers"]] == [1]
    assert cluster["controller_id"] == 1
    assert cluster["cluster_id"]


def test_standard_topics_exist_with_configured_partitions(admin: KafkaAdminClient) -> None:
    described = {t["name"]: t for t in admin.describe_topics(list(STANDARD_TOPICS))}
    for name in STANDARD_TOPICS:
        topic = described.get(name)
        assert topic is not None, f"topic {name} not returned"
        assert topic["error_code"] == 0, f"topic {name} missing (error {topic['error_code']})"
        assert len(topic["partitions"]) == (1 if name in ONE_PARTITION else PARTITIONS), name
        for partition in topic["partitions"]:
            assert partition["leader_id"] == 1
            assert partition["replica_nodes"] == [1]


def test_produce_and_consume_on_temporary_topic(admin: KafkaAdminClient) -> None:
    topic = f"stack-smoke-{uuid.uuid4().hex[:12]}"
    group = f"stack-smoke-{uuid.uuid4().hex[:12]}"
    admin.create_topics(
        {topic: {"num_partitions": 1, "replication_factor": 1}},
        timeout_ms=15_000,
        wait_for_metadata=True,
    )
    try:
        key, value = b"user-1", f'{{"smoke": "{uuid.uuid4()}"}}'.encode()
        producer = KafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, acks="all", linger_ms=0)
        try:
            sent = producer.send(topic, key=key, value=value).get(timeout=30)
        finally:
            producer.close(timeout=10)
        assert sent.topic == topic
        assert sent.partition == 0
        assert sent.offset == 0

        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=KAFKA_BOOTSTRAP,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        try:
            records: list[Any] = []
            deadline = time.monotonic() + 30
            while not records and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=1000).values():
                    records.extend(batch)
            assert len(records) == 1, "no record consumed within 30 s"
            assert (records[0].key, records[0].value) == (key, value)
            consumer.commit()
        finally:
            consumer.close()
        admin.delete_groups([group])
    finally:
        admin.delete_topics([topic], timeout_ms=15_000)


def test_redis_answers_and_is_version_7_with_aof() -> None:
    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, socket_timeout=5)
    try:
        assert client.ping() is True
        version = str(client.info("server")["redis_version"])
        major, minor = (int(part) for part in version.split(".")[:2])
        assert (major, minor) >= (7, 0), version
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        client.close()
