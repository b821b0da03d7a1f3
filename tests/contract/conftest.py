"""Fixtures for the ``StateStore`` contract suite: the same tests run on every store.

The Redis store needs a real Redis at ``STREAMSCORE_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``, started by ``scripts/stack up``). When it does not answer, its
tests are skipped with the reason, unless ``STREAMSCORE_STACK=1`` is set: then they fail, so CI
cannot pass by silently skipping them. Each Redis test gets its own random key prefix and
deletes its keys afterwards, so tests never see each other's (or anyone else's) data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest
import redis

from streamscore.adapters.memory import MemoryStateStore
from streamscore.adapters.redis_store import RedisStateStore
from streamscore.config import Settings
from streamscore.errors import ConfigError
from streamscore.ports import StateStore
from tests.required import skip_or_fail

REDIS_URL = os.environ.get("STREAMSCORE_REDIS_URL", "redis://127.0.0.1:6379/0")


class ContractStore(StateStore, Protocol):
    """What the suite uses: the port plus the due-queue size every store reports."""

    def due_count(self) -> int:
        """Users waiting in due queues."""
        ...


def redis_settings(prefix: str, **overrides: Any) -> Settings:
    """Settings for a store on the test Redis (credentials from the environment)."""
    return Settings(redis_url=REDIS_URL, redis_key_prefix=prefix, **overrides)


@pytest.fixture(scope="session")
def redis_problem() -> str | None:
    """Why the test Redis cannot be used, or None when it answers."""
    try:
        probe = RedisStateStore.from_settings(redis_settings("sstest-probe"))
    except ConfigError as exc:
        return f"Redis at {REDIS_URL} is not usable: {exc}"
    probe.close()
    return None


@pytest.fixture
def redis_client(redis_problem: str | None) -> Iterator[redis.Redis]:
    """A plain client on the test Redis, to look at keys behind the store's back."""
    if redis_problem:
        skip_or_fail(redis_problem)
    s = redis_settings("unused")
    password = s.redis_password.get_secret_value() if s.redis_password else None
    client = redis.Redis.from_url(REDIS_URL, username=s.redis_username, password=password)
    yield client
    client.close()


MakeRedisStore = Callable[..., RedisStateStore]


@pytest.fixture
def make_redis_store(redis_client: redis.Redis) -> Iterator[MakeRedisStore]:
    """A factory of Redis stores under one fresh random prefix; all its keys go at the end."""
    prefix = f"sstest-{uuid.uuid4().hex[:12]}"
    stores: list[RedisStateStore] = []

    def make(**overrides: Any) -> RedisStateStore:
        store = RedisStateStore.from_settings(redis_settings(prefix, **overrides))
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()
    keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def redis_store(make_redis_store: MakeRedisStore) -> RedisStateStore:
    """A Redis store with default settings under a fresh prefix."""
    return make_redis_store()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest) -> ContractStore:
    """Each implementation of the port in turn."""
    if request.param == "memory":
        return MemoryStateStore()
    redis_store: RedisStateStore = request.getfixturevalue("redis_store")
    return redis_store
