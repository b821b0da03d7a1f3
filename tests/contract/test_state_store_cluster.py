"""What the Redis store promises on a Redis Cluster beyond the shared contract: a batch really
spans masters and costs one pipeline per master; slots migrating under it (ASK, then MOVED)
are followed; a dead or hung master is a ``TransientError`` that passes when it is back;
credentials and TLS work as on one Redis; ``WAIT`` holds saves until replicas have them; and
start-up mistakes are ``ConfigError`` naming the cluster and its seeds.

Tests that change a cluster's topology or stop its nodes use private clusters
(``make_cluster``); the others share the session's ``redis_cluster``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from devstack import RedisCluster, RedisServer, TlsFiles
from streamscore.adapters import redis_connect
from streamscore.adapters.redis_connect import client_from_url
from streamscore.adapters.redis_store import RedisStateStore
from streamscore.config import Settings
from streamscore.errors import ConfigError, TransientError
from tests.conftest import MakeCluster
from tests.required import skip_or_fail

from .conftest import REDIS_URL, MakeRedisStore, RoundTrips

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000


def per_master(cluster: RedisCluster, prefix: str) -> dict[int, set[str]]:
    """The keys under ``prefix`` each running master holds, asked of the master itself."""
    out: dict[int, set[str]] = {}
    for node in cluster.masters():
        client = node.client()
        try:
            out[node.port] = {k.decode() for k in client.scan_iter(match=f"{prefix}:*")}
        finally:
            client.close()
    return out


def store_on(
    cluster: RedisCluster, prefix: str | None = None, **settings: object
) -> RedisStateStore:
    """A store on a private cluster, under a fresh prefix unless one is given."""
    return RedisStateStore.from_settings(
        Settings(
            redis_url=cluster.url,
            redis_key_prefix=prefix or f"sstest-{uuid.uuid4().hex[:8]}",
            **settings,  # type: ignore[arg-type]
        )
    )


def masters_of(store: RedisStateStore, keys: list[str]) -> set[str]:
    """The masters the store's client would send these keys to."""
    client = store._client
    return {client.get_node_from_key(k).name for k in keys}  # type: ignore[union-attr]


def test_one_batch_spans_every_master(
    cluster_store: RedisStateStore, redis_cluster: RedisCluster
) -> None:
    users = [f"user-{i}" for i in range(300)]
    states = {u: os.urandom(50) for u in users}
    due = {p: {u: T0 + i for i, u in enumerate(users) if i % 4 == p} for p in range(4)}
    cluster_store.save(states, due, dict.fromkeys(range(4), T0))

    held = per_master(redis_cluster, cluster_store.prefix)
    assert len(held) == 3
    user_keys = {cluster_store.user_key(u) for u in users}
    due_keys = {cluster_store.due_key(p) for p in range(4)}
    # Each key on exactly one master, every master holding users of this one batch, the
    # four due queues on more than one master: the save crossed slots and nodes.
    assert sorted(k for keys in held.values() for k in keys if k in user_keys) == sorted(user_keys)
    assert all(keys & user_keys for keys in held.values()), {p: len(k) for p, k in held.items()}
    assert sum(1 for keys in held.values() if keys & due_keys) >= 2
    assert cluster_store.load(users) == states
    assert sum(len(v) for v in cluster_store.due(dict.fromkeys(range(4), T0 + 300), 1000).values())
    assert cluster_store.watermarks(range(4)) == dict.fromkeys(range(4), T0)


def test_a_users_whole_state_is_one_key_in_one_slot_whatever_the_prefix(
    cluster_store: RedisStateStore, redis_cluster: RedisCluster
) -> None:
    """What keeps a user's update whole on a cluster: everything of one user is one key, its
    slot chosen by the user id alone (the hash tag), on the master serving that slot. Odd ids
    too: braces, non-ASCII, separators."""
    users = ["u1", "用户", "a}b", "x{y}", "{z}", "user:42", "o'neil"] + [
        f"u-{i}" for i in range(50)
    ]
    states = {u: f"state of {u}".encode() for u in users}
    cluster_store.save(states, {1: dict.fromkeys(users, T0)}, {1: T0})

    held = per_master(redis_cluster, cluster_store.prefix)
    everything = {k for keys in held.values() for k in keys}
    # Nothing per user but its one key: the rest is the one due queue and the watermarks.
    user_keys = {cluster_store.user_key(u) for u in users}
    assert everything - user_keys == {cluster_store.due_key(1), cluster_store._wm_key}
    assert len(user_keys) == len(users)
    owner_of = {}  # slot -> port of the master serving it, as the cluster says
    for start, end, (_, port, *_) in (
        (s[0], s[1], s[2]) for s in _on(redis_cluster.nodes[0], "CLUSTER SLOTS")
    ):
        owner_of.update(dict.fromkeys(range(start, end + 1), port))
    # Another deployment's store on the same cluster (no I/O until used; never closed here,
    # the client is the fixture's).
    elsewhere = RedisStateStore(cluster_store._client, prefix="another-app")
    for u in users:
        key = cluster_store.user_key(u)
        slot = _on(redis_cluster.nodes[0], "CLUSTER KEYSLOT", key)
        # The same user under another deployment's prefix lands in the same slot.
        other = elsewhere.user_key(u)
        assert _on(redis_cluster.nodes[0], "CLUSTER KEYSLOT", other) == slot, (u, key, other)
        assert key in held[owner_of[slot]], (u, slot)
        owner = redis_cluster.node(owner_of[slot]).client()
        try:
            assert owner.hgetall(key) == {b"s": states[u]}
        finally:
            owner.close()
    assert cluster_store.load(users) == states


def test_batch_calls_cost_one_pipeline_per_master(
    cluster_store: RedisStateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = [f"user-{i}" for i in range(500)]
    states = {u: os.urandom(400) for u in users}
    due = {p: {u: T0 + i for i, u in enumerate(users) if i % 4 == p} for p in range(4)}
    cluster_store.save(states, due, dict.fromkeys(range(4), T0))
    cluster_store.load(users)  # every master's connection made (and greeted) before counting
    trips = RoundTrips(monkeypatch)

    user_masters = masters_of(cluster_store, [cluster_store.user_key(u) for u in users])
    due_masters = masters_of(cluster_store, [cluster_store.due_key(p) for p in range(4)])
    assert len(user_masters) == 3
    cluster_store.save(states, due, dict.fromkeys(range(4), T0 + 1))
    # One pipeline to each master holding states or due queues, then the watermark script.
    assert trips.take() == len(user_masters | due_masters) + 1
    assert cluster_store.load(users) == states
    assert trips.take() == len(user_masters)
    found = cluster_store.due(dict.fromkeys(range(4), T0 + 1000), limit=1000)
    assert trips.take() == len(due_masters)
    assert sum(len(v) for v in found.values()) == 500
    assert cluster_store.watermarks(range(4)) == dict.fromkeys(range(4), T0 + 1)
    assert trips.take() == 1


def test_reloads_the_watermark_script_on_a_cluster(cluster_store: RedisStateStore) -> None:
    cluster_store._wm_sha = "0" * 40  # as after a failover to a node that never loaded it
    cluster_store.save({"a": b"1"}, {0: {"a": 5}}, {0: T0})
    assert cluster_store.watermarks([0]) == {0: T0}
    cluster_store.save({}, {}, {0: T0 - 1})
    assert cluster_store.watermarks([0]) == {0: T0}


def test_bytes_per_user_and_due_count_cover_every_master(cluster_store: RedisStateStore) -> None:
    cluster_store.save(
        {f"u{i}": os.urandom(600) for i in range(60)}, {p: {f"u{p}": 1} for p in range(6)}, {}
    )
    assert 600 < cluster_store.bytes_per_user(sample=60) < 1200
    assert cluster_store.due_count() == 6


# -- slots moving, masters failing ---------------------------------------------------------


def _slot_with_users(store: RedisStateStore, users: list[str]) -> tuple[int, list[str]]:
    """The slot holding the most of these users, and those users."""
    by_slot: dict[int, list[str]] = {}
    for u in users:
        by_slot.setdefault(store._client.keyslot(store.user_key(u)), []).append(u)  # type: ignore[union-attr]
    slot = max(by_slot, key=lambda s: len(by_slot[s]))
    return slot, by_slot[slot]


def _on(node: RedisServer, *command: object) -> Any:
    """One command on one node, on a client of its own."""
    client = node.client()
    try:
        return client.execute_command(*command)
    finally:
        client.close()


def _errorstats(node: RedisServer) -> dict[str, int]:
    """Errors the node has answered since its stats were reset, by kind (MOVED, ASK...)."""
    client = node.client()
    try:
        stats = client.info("errorstats")
    finally:
        client.close()
    return {k.removeprefix("errorstat_"): int(v["count"]) for k, v in stats.items()}


def test_a_slot_migrating_under_the_store_is_followed(
    make_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot migrated by hand, as ``redis-cli --cluster reshard`` does it: half its keys
    moved (reads and writes get ASK), then the slot handed over (MOVED)."""
    cluster = make_cluster()
    store = store_on(cluster)
    users = [f"user-{i}" for i in range(3000)]  # enough for a slot with several of them
    states = {u: f"v1 {u}".encode() for u in users}
    store.save(states, {0: dict.fromkeys(users[:50], T0)}, {0: T0})
    slot, in_slot = _slot_with_users(store, users)
    assert len(in_slot) >= 2
    owner = store._client.get_node_from_key(store.user_key(in_slot[0]))  # type: ignore[union-attr]
    source = cluster.node(owner.port)
    target = next(m for m in cluster.masters() if m.port != source.port)
    src, dst = source.client(), target.client()
    try:
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", cluster.node_id(source))
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", cluster.node_id(target))
        moved = [store.user_key(u) for u in in_slot[: len(in_slot) // 2]]
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *moved)
        for node in cluster.masters():
            _on(node, "CONFIG RESETSTAT")

        # Mid-migration: keys still on the source answer there, moved ones by ASK.
        assert store.load(users) == states
        newer = {u: f"v2 {u}".encode() for u in users}
        store.save(newer, {}, {0: T0 + 1})
        assert store.load(users) == newer
        assert _errorstats(source).get("ASK", 0) > 0

        # The slot handed over: every master learns the new owner; the store gets MOVED once.
        rest = list(src.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000))
        if rest:
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *rest)
        for node in cluster.masters():
            _on(node, "CLUSTER SETSLOT", slot, "NODE", cluster.node_id(target))
        assert store.load(users) == newer
        assert _errorstats(source).get("MOVED", 0) > 0
        # The slot map is patched: a batch goes out as one pipeline per master again.
        trips = RoundTrips(monkeypatch)
        assert store.load(users) == newer
        assert trips.take() == 3
        assert store.watermarks([0]) == {0: T0 + 1}
    finally:
        src.close()
        dst.close()
        store.close()


@pytest.fixture
def short_socket_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung node times out after 1 s instead of streamscore's 5 s."""
    monkeypatch.setattr(redis_connect, "SOCKET_TIMEOUT_S", 1.0)


@pytest.mark.usefixtures("short_socket_timeout")
def test_watermarks_never_move_past_states_a_master_did_not_take(
    make_cluster: MakeCluster,
) -> None:
    """A save whose states reach two masters but not the third (hung) leaves the watermarks
    where they were: a replay of the batch must not find its events behind them."""
    cluster = make_cluster(node_timeout_ms=20_000)  # no failure detection during the test
    store = store_on(cluster)
    users = [f"user-{i}" for i in range(300)]
    store.save(dict.fromkeys(users, b"1"), {}, {0: T0})  # connections to every master open
    wm_master = store._client.get_node_from_key(store._wm_key)  # type: ignore[union-attr]
    hung = next(m for m in cluster.masters() if m.port != wm_master.port)
    hung.pause()
    try:
        with pytest.raises(TransientError):
            store.save(dict.fromkeys(users, b"2"), {}, {0: T0 + 1})
        assert store.watermarks([0]) == {0: T0}
    finally:
        hung.resume()
    store.save(dict.fromkeys(users, b"2"), {}, {0: T0 + 1})  # the retry
    assert store.watermarks([0]) == {0: T0 + 1}
    store.close()


@pytest.mark.slow
@pytest.mark.usefixtures("short_socket_timeout")
def test_a_master_down_or_hung_is_transient_and_passes(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(node_timeout_ms=2000)
    store = store_on(cluster)
    users = [f"user-{i}" for i in range(300)]
    store.save(dict.fromkeys(users, b"x"), {}, {})
    victim = cluster.masters()[0]
    try:
        victim.pause()  # a hung host: connections stay open, nothing answers
        started = time.monotonic()
        with pytest.raises(TransientError) as info:
            store.load(users)
        took = time.monotonic() - started
        message = str(info.value)
        assert "Redis Cluster" in message and f"seed nodes {cluster.seeds}" in message
        assert "will be retried" in message
        # One socket timeout for the whole batch, not one per command of the hung master
        # (about 100 of them here: redis-py alone would take minutes).
        assert took < 30, took
    finally:
        victim.resume()
    _wait("the cluster to be ok again", cluster.ok, 60)
    assert store.load(users) == dict.fromkeys(users, b"x")

    victim.kill()  # a crash: connections refused
    with pytest.raises(TransientError, match="Redis Cluster"):
        store.save(dict.fromkeys(users, b"y"), {}, {})
    victim.start()
    _wait("the cluster to be ok again", cluster.ok, 60)
    _wait_for_store(lambda: store.save(dict.fromkeys(users, b"y"), {}, {}))
    assert store.load(users) == dict.fromkeys(users, b"y")
    store.close()


def _wait(what: str, condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


def _wait_for_store(call: Callable[[], object], timeout_s: float = 30) -> None:
    """Retry ``call`` on ``TransientError`` as the runtime would, until it goes through."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            call()
            return
        except TransientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# -- replicas ------------------------------------------------------------------------------


@pytest.mark.slow
def test_wait_replicas_holds_saves_until_replicas_have_them(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(replicas=1, node_timeout_ms=2000)
    store = store_on(cluster, redis_wait_replicas=1)
    users = [f"user-{i}" for i in range(300)]
    store.save(dict.fromkeys(users, b"1"), {0: {users[0]: 5}}, {0: T0})
    store.put_blob("models", b"m")
    # Every master's replica holds what was saved, at once (WAIT returned 1 for each).
    for node in cluster.nodes:
        if node not in cluster.masters():
            replica = node.client()
            try:
                replica.execute_command("READONLY")
                for key in replica.scan_iter(match=f"{store.prefix}:u:*"):
                    assert replica.hget(key, "s") == b"1"
            finally:
                replica.close()
    # A master whose replica is gone: its saves are refused until the replica is back.
    replicas = [n for n in cluster.nodes if n not in cluster.masters()]
    gone = replicas[0]
    gone.pause()
    try:
        with pytest.raises(TransientError, match=r"only 0 of 1 replicas.*REDIS_WAIT_REPLICAS"):
            store.save(dict.fromkeys(users, b"2"), {}, {})
    finally:
        gone.resume()
    _wait_for_store(lambda: store.save(dict.fromkeys(users, b"2"), {}, {}))
    assert store.load(users) == dict.fromkeys(users, b"2")
    store.close()


@pytest.mark.slow
def test_a_failover_under_a_waiting_store_is_followed(make_cluster: MakeCluster) -> None:
    """A replica takes over (``CLUSTER FAILOVER``, as in maintenance): the store's slot map
    still names the old master, now a replica that answers MOVED and refuses WAIT."""
    cluster = make_cluster(replicas=1)
    store = store_on(cluster, redis_wait_replicas=1)
    users = [f"user-{i}" for i in range(300)]
    store.save(dict.fromkeys(users, b"1"), {}, {0: T0})
    old = cluster.masters()[0]
    replica = next(
        n for n in cluster.nodes if n not in cluster.masters() and _on(n, "ROLE")[2] == old.port
    )
    _on(replica, "CLUSTER FAILOVER")
    _wait("the replica to take over", lambda: old not in cluster.masters(), 30)
    _wait("the cluster in sync again", cluster.replicas_in_sync, 30)
    store.save(dict.fromkeys(users, b"2"), {}, {0: T0 + 1})
    assert store.load(users) == dict.fromkeys(users, b"2")
    assert store.watermarks([0]) == {0: T0 + 1}
    store.close()


def test_wait_replicas_on_a_redis_without_replicas_refuses_saves(
    make_redis_store: MakeRedisStore,
) -> None:
    store = make_redis_store(redis_wait_replicas=1)
    with pytest.raises(TransientError, match="only 0 of 1 replicas acknowledged"):
        store.save({"u": b"x"}, {}, {0: 1})
    assert store.load(["nobody"]) == {}  # reads do not wait


# -- credentials and TLS -------------------------------------------------------------------


@pytest.fixture
def tls_acl_cluster(make_cluster: MakeCluster, tls_files: TlsFiles) -> RedisCluster:
    """A TLS-only cluster whose default user needs a password, with an ACL user ``app``."""
    return make_cluster(
        password="admin-pw", acl_users=["app on >app-pw ~* &* +@all"], tls=tls_files
    )


def test_tls_and_acl_credentials_work_on_a_cluster(
    tls_acl_cluster: RedisCluster, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("STREAMSCORE_REDIS_USERNAME", "STREAMSCORE_REDIS_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    cluster = tls_acl_cluster
    assert cluster.url.startswith("rediss+cluster://")
    good = {
        "redis_url": cluster.url,
        "redis_username": "app",
        "redis_password": SecretStr("app-pw"),
        "redis_ssl_ca_certs": tls_files.cert,
    }
    store = RedisStateStore.from_settings(Settings(redis_key_prefix="tls", **good))  # type: ignore[arg-type]
    try:
        users = [f"user-{i}" for i in range(100)]
        store.save(dict.fromkeys(users, b"x"), {0: {"user-0": 1}}, {0: 1})
        assert store.load(users) == dict.fromkeys(users, b"x")
        assert len(masters_of(store, [store.user_key(u) for u in users])) == 3
    finally:
        store.close()
    wrong = {**good, "redis_password": SecretStr("not-it")}
    with pytest.raises(ConfigError) as info:
        RedisStateStore.from_settings(Settings(**wrong))  # type: ignore[arg-type]
    message = str(info.value)
    assert "Redis Cluster" in message and "STREAMSCORE_REDIS_PASSWORD" in message
    assert "not-it" not in message
    untrusted = {k: v for k, v in good.items() if k != "redis_ssl_ca_certs"}
    with pytest.raises(
        ConfigError, match=r"TLS with Redis Cluster.*STREAMSCORE_REDIS_SSL_CA_CERTS"
    ):
        RedisStateStore.from_settings(Settings(**untrusted))  # type: ignore[arg-type]


# -- start-up mistakes ---------------------------------------------------------------------


def test_unreachable_cluster_is_a_config_error_naming_the_seeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STREAMSCORE_REDIS_PASSWORD", raising=False)
    url = "redis+cluster://:hunter2@127.0.0.1:1,127.0.0.1:2"
    with pytest.raises(ConfigError) as info:
        RedisStateStore.from_settings(Settings(redis_url=url))
    message = str(info.value)
    assert "cannot reach Redis Cluster at seed nodes 127.0.0.1:1,127.0.0.1:2" in message
    assert "scripts/stack up --with-redis-cluster" in message
    assert "STREAMSCORE_REDIS_URL" in message and "hunter2" not in message


def test_a_cluster_url_on_a_single_redis_is_a_config_error() -> None:
    host_port = REDIS_URL.removeprefix("redis://").partition("/")[0]
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError:
        skip_or_fail(f"no Redis at {REDIS_URL}")
    with pytest.raises(ConfigError, match=r"a single Redis, not a cluster node.*redis://"):
        RedisStateStore.from_settings(Settings(redis_url=f"redis+cluster://{host_port}"))


def test_a_plain_url_on_a_cluster_node_says_to_use_the_cluster_scheme(
    redis_cluster: RedisCluster,
) -> None:
    """What used to fail with a bare ``MOVED 13203 127.0.0.1:47003`` at the first blob."""
    node = redis_cluster.nodes[0]
    with pytest.raises(ConfigError) as info:
        RedisStateStore.from_settings(Settings(redis_url=node.url))
    assert f"redis+cluster://127.0.0.1:{node.port}" in str(info.value)
    # A store made without that check still says what the redirect means.
    store = RedisStateStore(client_from_url(node.url))
    try:
        with pytest.raises(ConfigError, match=r"redirect.*node of a Redis Cluster.*redis\+cluster"):
            for i in range(20):  # some of these keys live on another master
                store.get_blob(f"models-{i}")
    finally:
        store.close()
