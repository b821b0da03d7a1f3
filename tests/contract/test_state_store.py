"""The ``StateStore`` contract, run against every implementation (see conftest.py), plus what
only the Redis store promises: TTLs, the key layout, one round trip per batch call, and clear
errors when Redis is missing or refuses us.
"""

from __future__ import annotations

import os

import pytest
import redis
from pydantic import SecretStr
from redis.crc import key_slot

from streamscore.adapters.redis_connect import client_from_url, redact_url
from streamscore.adapters.redis_store import RedisStateStore
from streamscore.config import Settings
from streamscore.core.alerts import AlertState
from streamscore.core.events import Event, EventType
from streamscore.core.inputs import CHURN_INPUTS, VALUE_INPUTS
from streamscore.core.snapshots import Snapshot
from streamscore.core.state import UserState, id_hash
from streamscore.core.timeutil import DAY_MS
from streamscore.errors import ConfigError, TransientError
from tests.conftest import MakeRedis

from .conftest import ContractStore, MakeRedisStore, RoundTrips, redis_settings

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
ODD_IDS = ["plain", "üser-ß", "用户-7", "with space", "a:b:c", "{braced}", "a}b", "x" * 128]


# -- states ------------------------------------------------------------------------------


def test_load_of_unknown_users_is_empty(store: ContractStore) -> None:
    assert store.load([]) == {}
    assert store.load(["nobody", "nobody-else"]) == {}


def test_save_then_load_round_trips_bytes_exactly(store: ContractStore) -> None:
    states = {uid: f"state of {uid}".encode() + bytes(range(256)) for uid in ODD_IDS}
    states["empty"] = b""
    states["nul"] = b"\x00"
    store.save(states, {}, {})
    assert store.load(list(states)) == states
    # Only the users that exist, whatever else is asked for (and duplicates are harmless).
    assert store.load(["plain", "nobody", "plain", "empty"]) == {
        "plain": states["plain"],
        "empty": b"",
    }


def test_save_overwrites(store: ContractStore) -> None:
    store.save({"u1": b"v1", "u2": b"other"}, {}, {})
    store.save({"u1": b"v2-longer"}, {}, {})
    assert store.load(["u1", "u2"]) == {"u1": b"v2-longer", "u2": b"other"}
    store.save({"u1": b"v"}, {}, {})
    assert store.load(["u1"]) == {"u1": b"v"}


def test_a_full_user_state_round_trips_unchanged(store: ContractStore) -> None:
    state = UserState(user_id="shopper-42", partition=3, offset=1234)
    events = [
        Event(event_id="e1", user_id="shopper-42", type=EventType.SIGNUP, ts=T0),
        Event(event_id="e2", user_id="shopper-42", type=EventType.SESSION_START, ts=T0 + 1000),
        Event(event_id="e3", user_id="shopper-42", type=EventType.PAGE_VIEW, ts=T0 + 2000),
        Event(event_id="e4", user_id="shopper-42", type=EventType.ADD_TO_CART, ts=T0 + 3000),
        Event(
            event_id="e5", user_id="shopper-42", type=EventType.PURCHASE, ts=T0 + 4000, amount=42.5
        ),
        Event(
            event_id="e6",
            user_id="shopper-42",
            type=EventType.PURCHASE,
            ts=T0 + 9 * DAY_MS,
            amount=17.25,
        ),
        Event(
            event_id="e7",
            user_id="shopper-42",
            type=EventType.REFUND,
            ts=T0 + 10 * DAY_MS,
            amount=5,
        ),
    ]
    for i, event in enumerate(events):
        state.features.apply(event, lateness_ms=300_000)
        state.mark(3, 1234 + i, event.event_id)
    state.snapshots.append(
        Snapshot(
            t_ms=T0 + 4000,
            churn_x=[0.1234567 * (i + 1) for i in range(len(CHURN_INPUTS))],
            value_x=[3.0 - i for i in range(len(VALUE_INPUTS))],
            churn_p=0.3141592,
            value_p=27.18281,
            naive_value=12.5,
            returned=True,
            spend=17.25,
            churn_learnt=True,
        )
    )
    state.last_snapshot_ms = T0 + 4000
    state.alert = AlertState(active=True, last_alert_ms=T0 + 5000)
    state.segment = "Loyal"
    state.lifecycle = "retained"
    state.reactivated_ms = T0 + 9 * DAY_MS
    state.rescore_step = 2
    state.last_score = (0.25, 61.5)
    blob = state.to_bytes()

    store.save({state.user_id: blob}, {3: {state.user_id: T0 + 14 * DAY_MS}}, {3: T0})
    loaded = store.load([state.user_id])
    assert loaded == {state.user_id: blob}
    back = UserState.from_bytes(state.user_id, loaded[state.user_id])
    assert back.to_bytes() == blob
    assert back.features.purchases == 2
    assert back.features.spend == pytest.approx(59.75)
    assert len(back.snapshots) == 1  # same FEATURE_SCHEMA, so the snapshot survives
    assert back.recent_ids == [id_hash(e.event_id) for e in events]
    assert back.features == state.features


# -- due queues --------------------------------------------------------------------------


def _save_due(store: ContractStore, due: dict[int, dict[str, int | None]]) -> None:
    """Due entries with their users' states, as the scorer saves them (a store may need a
    user's state to name them: the pseudonymous one keeps only a token in the queue)."""
    states = {u: b"state" for entries in due.values() for u, at in entries.items() if at}
    store.save(states, due, {})


def test_due_returns_users_at_or_before_the_watermark_per_partition(store: ContractStore) -> None:
    _save_due(
        store,
        {
            0: {"a": 100, "b": 200, "c": 300},
            1: {"d": 100, "e": 250},
            2: {"f": 50},
        },
    )
    assert store.due({0: 200, 1: 200}, limit=100) == {0: ["a", "b"], 1: ["d"]}
    # The watermark itself counts; nothing from partitions that were not asked about.
    assert store.due({0: 99}, limit=100) == {}
    assert store.due({1: 250}, limit=100) == {1: ["d", "e"]}
    assert store.due({7: 10**15}, limit=100) == {}
    assert store.due({}, limit=100) == {}
    # Entries stay queued until a save moves or removes them.
    assert store.due({0: 200, 1: 200}, limit=100) == {0: ["a", "b"], 1: ["d"]}


def test_due_respects_the_limit_earliest_first(store: ContractStore) -> None:
    _save_due(store, {0: {"u5": 5, "u1": 1, "u3": 3, "u2": 2, "u4": 4}, 1: {"v": 1}})
    assert store.due({0: 10, 1: 10}, limit=2) == {0: ["u1", "u2"], 1: ["v"]}
    assert store.due({0: 10}, limit=5) == {0: ["u1", "u2", "u3", "u4", "u5"]}
    # Superseded due times do not take up room under the limit.
    store.save({}, {0: {"u1": 100, "u2": None}}, {})
    assert store.due({0: 10}, limit=2) == {0: ["u3", "u4"]}


def test_due_none_removes_and_later_times_hide(store: ContractStore) -> None:
    _save_due(store, {0: {"a": 100, "b": 100, "c": 100}})
    store.save({}, {0: {"a": None, "b": 500}}, {})
    assert store.due({0: 200}, limit=10) == {0: ["c"]}
    assert store.due({0: 500}, limit=10) == {0: ["c", "b"]}
    # Removing an entry that is not there is fine; moving one earlier shows it again.
    store.save({}, {0: {"nobody": None, "b": 150}, 1: {"ghost": None}}, {})
    assert store.due({0: 200, 1: 200}, limit=10) == {0: ["c", "b"]}
    # Back and forth: a user is listed once, at its current time.
    store.save({}, {0: {"c": 900}}, {})
    store.save({}, {0: {"c": 100}}, {})
    store.save({}, {0: {"c": 900}}, {})
    store.save({}, {0: {"c": 100}}, {})
    assert store.due({0: 1000}, limit=10) == {0: ["c", "b"]}
    assert store.due({0: 1000}, limit=10) == {0: ["c", "b"]}


def test_due_keeps_odd_user_ids_and_epoch_ms(store: ContractStore) -> None:
    entries: dict[str, int | None] = {uid: T0 + i for i, uid in enumerate(ODD_IDS)}
    _save_due(store, {5: entries})
    assert store.due({5: T0 + len(ODD_IDS)}, limit=100) == {5: ODD_IDS}
    assert store.due({5: T0 + 2}, limit=100) == {5: ODD_IDS[:3]}


def test_due_count(store: ContractStore) -> None:
    assert store.due_count() == 0
    store.save({}, {0: {"a": 1, "b": 2}, 1: {"c": 3}}, {})
    store.save({}, {0: {"a": None, "b": 5}, 2: {"d": 1}}, {})
    assert store.due_count() == 3


# -- watermarks --------------------------------------------------------------------------


def test_watermarks_round_trip_and_never_go_back(store: ContractStore) -> None:
    assert store.watermarks([0, 1]) == {}
    assert store.watermarks([]) == {}
    store.save({}, {}, {0: T0 + 123, 1: 500})
    assert store.watermarks([0, 1, 2]) == {0: T0 + 123, 1: 500}
    store.save({}, {}, {0: T0 + 122, 1: 501, 2: 7})  # 1 ms back on 0: kept
    assert store.watermarks([0, 1, 2]) == {0: T0 + 123, 1: 501, 2: 7}
    store.save({}, {}, {0: T0 + 124})
    store.save({}, {}, {0: 0})
    assert store.watermarks(iter([0])) == {0: T0 + 124}


def test_save_writes_states_due_and_watermarks_together(store: ContractStore) -> None:
    store.save({"a": b"1", "b": b"2"}, {0: {"a": 10}, 1: {"b": 20}}, {0: 15, 1: 15})
    assert store.load(["a", "b"]) == {"a": b"1", "b": b"2"}
    assert store.due(store.watermarks([0, 1]), limit=10) == {0: ["a"]}


# -- blobs -------------------------------------------------------------------------------


def test_blobs_round_trip(store: ContractStore) -> None:
    assert store.get_blob("models") is None
    store.put_blob("models", b"v1")
    store.put_blob("models/other:name", b"\x00" * 10)
    assert store.get_blob("models") == b"v1"
    big = os.urandom(1 << 20)
    store.put_blob("models", big)
    assert store.get_blob("models") == big
    assert store.get_blob("models/other:name") == b"\x00" * 10


# -- Redis only --------------------------------------------------------------------------


@pytest.mark.integration
def test_redis_batch_calls_are_one_round_trip_each(
    redis_store: RedisStateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = RoundTrips(monkeypatch)
    # The counter counts: three plain commands are three round trips.
    for _ in range(3):
        redis_store.get_blob("nothing")
    assert trips.take() == 3

    users = [f"user-{i}" for i in range(500)]
    states = {u: os.urandom(400) for u in users}
    due = {
        p: {u: (T0 + i if i % 5 else None) for i, u in enumerate(users) if i % 4 == p}
        for p in range(4)
    }
    redis_store.save(states, due, {0: T0, 1: T0, 2: T0, 3: T0})
    assert trips.take() == 1
    assert redis_store.load([*users, "nobody"]) == states
    assert trips.take() == 1
    found = redis_store.due(dict.fromkeys(range(4), T0 + 1000), limit=1000)
    assert trips.take() == 1
    assert sum(len(v) for v in found.values()) == 400
    assert redis_store.watermarks(range(4)) == dict.fromkeys(range(4), T0)
    assert trips.take() == 1


@pytest.mark.integration
def test_redis_user_keys_have_the_hash_tag_and_a_ttl(
    make_redis_store: MakeRedisStore, redis_client: redis.Redis
) -> None:
    store = make_redis_store()
    retention_s = 400 * 86_400
    for uid in ["u1", "用户", "a}b"]:
        store.save({uid: b"state"}, {2: {uid: 5}}, {2: 1})
        key = store.user_key(uid)
        assert key == f"{store.prefix}:u:{{{uid}}}"
        assert key_slot(key.encode()) == key_slot(uid.encode().split(b"}")[0])
        assert redis_client.type(key) == b"hash"
        assert redis_client.hgetall(key) == {b"s": b"state"}
        assert retention_s - 60 <= redis_client.ttl(key) <= retention_s
    assert redis_client.type(f"{store.prefix}:due:{{p2}}") == b"zset"
    assert redis_client.hgetall(f"{store.prefix}:wm") == {b"2": b"1"}
    store.put_blob("models", b"m")
    assert redis_client.get(f"{store.prefix}:blob:models") == b"m"
    # When a save refreshes the TTL: test_state_store_ttl.py. The retention comes from the settings.
    short = make_redis_store(state_retention_days=2)
    short.save({"u2": b"x"}, {}, {})
    assert 2 * 86_400 - 60 <= redis_client.ttl(short.user_key("u2")) <= 2 * 86_400


@pytest.mark.integration
def test_redis_reloads_the_watermark_script_after_a_flush(redis_store: RedisStateStore) -> None:
    # As after a Redis restart: the cached script sha is unknown to the server.
    redis_store._wm_sha = "0" * 40
    redis_store.save({"a": b"1"}, {0: {"a": 5}}, {0: T0})
    assert redis_store.watermarks([0]) == {0: T0}
    assert redis_store.load(["a"]) == {"a": b"1"}
    redis_store.save({}, {}, {0: T0 - 1})
    assert redis_store.watermarks([0]) == {0: T0}


@pytest.mark.integration
def test_redis_bytes_per_user(redis_store: RedisStateStore) -> None:
    assert redis_store.bytes_per_user() == 0.0
    redis_store.save({f"u{i}": os.urandom(600) for i in range(50)}, {}, {})
    size = redis_store.bytes_per_user(sample=20)
    assert 600 < size < 1200


def test_unreachable_redis_is_a_config_error_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMSCORE_REDIS_PASSWORD", raising=False)
    settings = Settings(redis_url="redis://:hunter2@127.0.0.1:1/0")
    with pytest.raises(ConfigError) as info:
        RedisStateStore.from_settings(settings)
    message = str(info.value)
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in message
    assert "scripts/stack up" in message
    assert "STREAMSCORE_REDIS_URL" in message
    assert "hunter2" not in message


def test_unreachable_redis_is_transient_in_operation() -> None:
    store = RedisStateStore(client_from_url("redis://127.0.0.1:1/0"))
    try:
        with pytest.raises(TransientError, match=r"loading 1 user states failed at .*retried"):
            store.load(["u"])
        with pytest.raises(TransientError):
            store.save({"u": b"x"}, {0: {"u": 1}}, {0: 1})
        with pytest.raises(TransientError):
            store.due({0: 1}, limit=10)
        with pytest.raises(TransientError):
            store.watermarks([0])
        with pytest.raises(TransientError):
            store.get_blob("models")
    finally:
        store.close()


def test_urls_and_prefixes() -> None:
    assert redact_url("rediss://app:s3cret@redis.example:6380/1") == (
        "rediss://app:***@redis.example:6380/1"
    )
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    tls = client_from_url("rediss://redis.example:6380/0")
    assert tls.connection_pool.connection_class is redis.SSLConnection
    tls.close()
    with pytest.raises(ConfigError, match="STREAMSCORE_REDIS_URL"):
        RedisStateStore.from_settings(Settings(redis_url="http://127.0.0.1:6379"))
    for bad in ["", "ss{x}", "ss}"]:
        with pytest.raises(ConfigError, match="STREAMSCORE_REDIS_KEY_PREFIX"):
            RedisStateStore(client_from_url("redis://127.0.0.1:1/0"), prefix=bad)


@pytest.fixture
def password_redis(make_redis: MakeRedis) -> str:
    """A private redis-server with a password; its URL."""
    return make_redis(password="s3cret-pw").url


@pytest.mark.integration
def test_refused_credentials_are_a_config_error(
    password_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("STREAMSCORE_REDIS_USERNAME", "STREAMSCORE_REDIS_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    for password in (SecretStr("wrong-pw"), None):
        settings = Settings(redis_url=password_redis, redis_password=password)
        with pytest.raises(ConfigError) as info:
            RedisStateStore.from_settings(settings)
        message = str(info.value)
        assert "STREAMSCORE_REDIS_USERNAME/STREAMSCORE_REDIS_PASSWORD" in message
        assert "wrong-pw" not in message
    good = RedisStateStore.from_settings(
        Settings(redis_url=password_redis, redis_password=SecretStr("s3cret-pw"))
    )
    try:
        good.save({"u": b"x"}, {}, {0: 1})
        assert good.load(["u"]) == {"u": b"x"}
        assert "s3cret-pw" not in repr(redis_settings("p", redis_password=SecretStr("s3cret-pw")))
    finally:
        good.close()
    # A store whose connection later loses its credentials says so in operation, too.
    anonymous = RedisStateStore(client_from_url(password_redis))
    try:
        with pytest.raises(ConfigError, match="STREAMSCORE_REDIS_PASSWORD"):
            anonymous.load(["u"])
    finally:
        anonymous.close()
