"""What erasures need of a state store (``ports.ErasureStore``), on every implementation:
deletion of states and due entries, marks, offsets; and, for Redis, that nothing of an
erased user's id is left under the prefix."""

from __future__ import annotations

import pytest

from streamscore.adapters.memory import MemoryStateStore
from streamscore.adapters.redis_store import RedisStateStore

from .conftest import PLAIN_STORES, ContractStore, store_for


@pytest.fixture(params=PLAIN_STORES)
def store(request: pytest.FixtureRequest) -> ContractStore:
    """The stores that implement erasure themselves; the pseudonymous wrapper hands erasures
    on to one of them by token (``tests/unit/test_erasure.py`` runs erasures through it)."""
    return store_for(request)


T0 = 1_767_225_600_000


def _erasure_store(store: ContractStore) -> MemoryStateStore | RedisStateStore:
    assert isinstance(store, MemoryStateStore | RedisStateStore)
    return store


def test_erase_deletes_states_and_due_entries_and_keeps_marks_and_offsets(
    store: ContractStore,
) -> None:
    es = _erasure_store(store)
    store.save({"u1": b"s1", "u2": b"s2"}, {0: {"u1": T0, "u2": T0}, 1: {"u1": T0}}, {0: T0})
    es.erase({"u1": 0, "never-seen": None}, {0: {"fp1": b"1:2"}}, {})
    assert store.load(["u1", "u2"]) == {"u2": b"s2"}
    assert store.due({0: T0}, 10) == {0: ["u2"]}
    assert store.due({1: T0}, 10) == {1: ["u1"]}  # only the partition the state named
    assert es.erasure_log([0, 1]) == ({}, {0: {"fp1": b"1:2"}})
    es.erase({}, {0: {"fp1": None, "fp2": b"3:4"}}, {0: 7, 1: 2})
    assert es.erasure_log([0, 1, 2]) == ({0: 7, 1: 2}, {0: {"fp2": b"3:4"}})
    es.erase({"u1": 0}, {0: {"fp2": b"3:4"}}, {0: 7})  # a redo after a crash: no change
    assert es.erasure_log([0]) == ({0: 7}, {0: {"fp2": b"3:4"}})
    assert es.erasure_log([]) == ({}, {})


@pytest.mark.integration
def test_nothing_of_an_erased_id_is_left_in_redis(redis_store: RedisStateStore) -> None:
    from streamscore.core.erasure import fingerprint

    user = "erase-me-7f3a"
    redis_store.save({user: b"state", "other": b"s"}, {3: {user: T0, "other": T0}}, {3: T0})
    redis_store.erase({user: 3}, {3: {fingerprint(user): b"1:2"}}, {3: 1})
    client = redis_store._client
    keys = list(client.scan_iter(match=f"{redis_store.prefix}:*", count=1000))
    assert keys  # the other user, the due queue, the marks, the offsets
    for key in keys:
        assert user.encode() not in key
        kind = client.type(key)
        if kind == b"hash":
            for field, value in client.hgetall(key).items():
                assert user.encode() not in field + value
        elif kind == b"zset":
            assert user.encode() not in b"".join(client.zrange(key, 0, -1))
