"""When the Redis store sets a user key's TTL (``redis_ttl.py``), on one Redis and on the
Redis Cluster: at a key's first save, then once per refresh window, not with every save; and
a key that went away behind the store's back (another process's erasure, a flush, an
eviction) gets its TTL back at the save that writes it again.

Whether a save sent ``EXPIRE`` is read off the server: a TTL set behind the store's back to
``MARK`` survives a save without ``EXPIRE`` (``HSET`` keeps it) and is replaced by the
retention with one. On a private Redis, its command counters say the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from devstack import RedisCluster
from streamscore.adapters.redis_store import RedisStateStore
from streamscore.adapters.redis_ttl import MAX_REFRESH_S
from streamscore.config import Settings
from streamscore.errors import ConfigError
from tests.conftest import MakeRedis

from .conftest import MakeRedisStore, RoundTrips

pytestmark = pytest.mark.integration

RETENTION_S = 400 * 86_400  # the default state_retention_days
MARK = 5_000  # a TTL far below the retention, set behind the store's back
USERS = [f"user-{i}" for i in range(60)]  # over every master of the cluster


class Clock:
    """Monotonic seconds that move only when the test says."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["redis", "redis-cluster"])
def backend(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[MakeRedisStore, redis.Redis | redis.RedisCluster]]:
    """A store factory (one prefix) and a plain client on the same servers."""
    if request.param == "redis":
        yield request.getfixturevalue("make_redis_store"), request.getfixturevalue("redis_client")
        return
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    client = cluster.client()
    try:
        yield request.getfixturevalue("make_cluster_store"), client
    finally:
        client.close()


def ttls(client: Any, store: RedisStateStore, users: list[str]) -> list[int]:
    return [int(client.ttl(store.user_key(u))) for u in users]


def mark(client: Any, store: RedisStateStore, users: list[str]) -> None:
    for u in users:
        assert client.expire(store.user_key(u), MARK)


def set_by_the_store(found: list[int]) -> bool:
    """Every TTL is the retention, just set (not the mark, not missing)."""
    return all(RETENTION_S - 60 <= t <= RETENTION_S for t in found)


def kept_from_before(found: list[int]) -> bool:
    """Every TTL is what the mark left (no EXPIRE since), and still there."""
    return all(0 < t <= MARK for t in found)


def test_a_key_gets_its_ttl_once_per_refresh_window_not_with_every_save(
    backend: tuple[MakeRedisStore, Any],
) -> None:
    make, client = backend
    clock = Clock()
    store = make(clock=clock)
    store.save(dict.fromkeys(USERS, b"first"), {}, {0: 1})
    assert set_by_the_store(ttls(client, store, USERS))

    mark(client, store, USERS)
    store.save(dict.fromkeys(USERS, b"second"), {1: dict.fromkeys(USERS, 5)}, {0: 2})
    assert store.load(USERS) == dict.fromkeys(USERS, b"second")
    assert kept_from_before(ttls(client, store, USERS)), "a save within the window sent EXPIRE"

    clock.now += MAX_REFRESH_S - 1  # the retention's 1 % is longer: the cap counts
    store.save(dict.fromkeys(USERS, b"third"), {}, {})
    assert kept_from_before(ttls(client, store, USERS))

    clock.now += 1  # the window is over: the next save sets every TTL again, once
    new = ["new-1", "new-2"]
    store.save(dict.fromkeys(USERS + new, b"fourth"), {}, {})
    assert set_by_the_store(ttls(client, store, USERS + new))
    mark(client, store, USERS + new)
    store.save(dict.fromkeys(USERS + new, b"fifth"), {}, {})
    assert kept_from_before(ttls(client, store, USERS + new))


def test_keys_deleted_behind_the_store_get_their_ttl_back_at_the_next_save(
    backend: tuple[MakeRedisStore, Any],
) -> None:
    """Another process erases users (its partition came back to us since), an operator
    deletes keys or Redis evicts them: all within the window in which this store set their
    TTL, so it has no reason to send EXPIRE but the key it writes again is new."""
    make, client = backend
    clock = Clock()
    store = make(clock=clock)
    other = make()  # the process that owned the users' partition meanwhile
    store.save(dict.fromkeys(USERS, b"v1"), {}, {})
    other.erase(dict.fromkeys(USERS[:20]), {}, {})
    client.delete(*(store.user_key(u) for u in USERS[20:40]))  # one key at a time
    assert store.load(USERS) == dict.fromkeys(USERS[40:], b"v1")

    store.save(dict.fromkeys(USERS, b"v2"), {}, {})
    assert store.load(USERS) == dict.fromkeys(USERS, b"v2")
    assert set_by_the_store(ttls(client, store, USERS[:40])), "a key written again has no TTL"
    assert set_by_the_store(ttls(client, store, USERS[40:]))


def test_an_erased_user_saved_again_costs_no_extra_round_trip(
    backend: tuple[MakeRedisStore, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``erase`` forgets the users it deletes: their next save sends EXPIRE with the HSET
    (one user: one pipeline, on the cluster too)."""
    make, client = backend
    store = make(clock=Clock())
    store.save({"u": b"v1"}, {0: {"u": 5}}, {})
    store.erase({"u": 0}, {}, {})
    trips = RoundTrips(monkeypatch)
    store.save({"u": b"v2"}, {}, {})
    assert trips.take() == 1
    assert set_by_the_store(ttls(client, store, ["u"]))


def test_a_failed_save_sets_every_ttl_again_at_the_next(
    make_redis_store: MakeRedisStore, redis_client: redis.Redis
) -> None:
    store = make_redis_store(clock=Clock())
    store.save(dict.fromkeys(USERS, b"v1"), {}, {})
    mark(redis_client, store, USERS)
    redis_client.set(store.due_key(7), b"not a sorted set")
    with pytest.raises(ConfigError, match="WRONGTYPE"):
        store.save(dict.fromkeys(USERS, b"v2"), {7: {"u": 5}}, {})
    redis_client.delete(store.due_key(7))
    store.save(dict.fromkeys(USERS, b"v3"), {}, {})
    assert set_by_the_store(ttls(redis_client, store, USERS))


def _calls(client: redis.Redis, command: str) -> int:
    stats: dict[str, dict[str, int]] = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_redis_counts_one_command_per_user_for_saves_within_the_window(
    make_redis: MakeRedis,
) -> None:
    """Counted by a private Redis: nobody else's commands in its counters."""
    server = make_redis()
    clock = Clock()
    store = RedisStateStore.from_settings(
        Settings(redis_url=server.url, redis_key_prefix="ttl"), clock=clock
    )
    client = redis.Redis.from_url(server.url)
    try:
        users = [f"u{i}" for i in range(500)]
        counts = []
        for n in range(4):
            if n == 3:
                clock.now += MAX_REFRESH_S
            store.save(dict.fromkeys(users, b"state %d" % n), {}, {})
            counts.append((_calls(client, "hset"), _calls(client, "expire")))
        hsets = [b[0] - a[0] for a, b in zip([(0, 0), *counts], counts, strict=False)]
        expires = [b[1] - a[1] for a, b in zip([(0, 0), *counts], counts, strict=False)]
        assert hsets == [500, 500, 500, 500]
        assert expires == [500, 0, 0, 500]
    finally:
        client.close()
        store.close()
