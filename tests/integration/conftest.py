"""Fixtures for tests against the real local stack (scripts/stack up).

Each test gets its own topics, consumer group and Redis key prefix, so tests never see each
other's data. With STREAMSCORE_STACK=1 (set by scripts/test) a missing stack fails the run
instead of skipping it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from devstack import create_topics, delete_topics, topic_partitions, topic_settings
from tests.required import skip_or_fail

BOOTSTRAP = os.environ.get("STREAMSCORE_TEST_KAFKA", "127.0.0.1:9092")
REDIS_URL = os.environ.get("STREAMSCORE_TEST_REDIS", "redis://127.0.0.1:6379/0")
SHARED = {"bootstrap_servers": [BOOTSTRAP]}  # kafka-python options for the shared broker


def _stack_up() -> str | None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        return f"Redis at {REDIS_URL} is not answering ({exc})"
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        KafkaAdminClient(bootstrap_servers=BOOTSTRAP, request_timeout_ms=3000).close()
    except KafkaError as exc:
        return f"Kafka at {BOOTSTRAP} is not answering ({exc})"
    return None


@pytest.fixture(scope="session")
def stack() -> None:
    """Require the local stack; fail under scripts/test, skip in a bare pytest run."""
    problem = _stack_up()
    if problem is not None:
        skip_or_fail(f"{problem}; start it with scripts/stack up")


def delete_keys(prefix: str) -> None:
    """Delete every key under ``prefix:`` in the shared Redis."""
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i : i + 500])
    r.close()


@pytest.fixture
def names(stack: None) -> Iterator[dict[str, str]]:
    """Unique topics (4 partitions, training-examples 1), group and Redis prefix for one
    test; removed afterwards."""
    tag = uuid.uuid4().hex[:8]
    topics = topic_settings(f"t{tag}")
    create_topics(SHARED, topic_partitions(topics, 4))
    try:
        yield {**topics, "kafka_group_id": f"g{tag}", "redis_key_prefix": f"t{tag}"}
    finally:
        delete_topics(SHARED, list(topics.values()))
        delete_keys(f"t{tag}")


@pytest.fixture
def private_names(stack: None) -> Iterator[dict[str, str]]:
    """Topic, group and Redis key prefix names for a test that brings its own broker."""
    tag = uuid.uuid4().hex[:8]
    try:
        yield {
            **topic_settings(f"p{tag}"),
            "kafka_group_id": f"g{tag}",
            "redis_key_prefix": f"p{tag}",
        }
    finally:
        delete_keys(f"p{tag}")
