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

from .kafka_broker import topic_names

BOOTSTRAP = os.environ.get("STREAMSCORE_TEST_KAFKA", "127.0.0.1:9092")
REDIS_URL = os.environ.get("STREAMSCORE_TEST_REDIS", "redis://127.0.0.1:6379/0")


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
    if problem is None:
        return
    message = f"{problem}; start it with scripts/stack up"
    if os.environ.get("STREAMSCORE_STACK") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def names(stack: None) -> Iterator[dict[str, str]]:
    """Unique topics (4 partitions), group and Redis prefix for one test; removed afterwards."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    tag = uuid.uuid4().hex[:8]
    topics = topic_names(f"t{tag}")
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    admin.create_topics([NewTopic(t, 4, 1) for t in topics.values()])
    out = {**topics, "kafka_group_id": f"g{tag}", "redis_key_prefix": f"t{tag}"}
    try:
        yield out
    finally:
        admin.delete_topics(list(topics.values()))
        admin.close()
        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter(match=f"t{tag}:*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
        r.close()
