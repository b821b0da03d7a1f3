"""Erasure on the real stack: ``streamscore forget`` against a running, loaded scorer that is
killed (SIGKILL) after it deleted the users and before it could confirm.

The kill point is made certain, not hoped for: the confirmations topic is deleted before the
requests are published (the broker does not auto-create topics), so the scorer deletes the
users' states, then cannot flush the batch that carries the confirmations. It is killed
there; the topic is created again and a new scorer must finish the job. Then late events of
the erased users (older than the erasure, newer than the watermark) are sent: they must not
bring them back.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from devstack import GroupProgress, create_topics, delete_topics, produce, read_topic
from devstack.topics import list_topics
from streamscore.adapters.pseudonymous import maybe_pseudonymous
from streamscore.adapters.redis_store import RedisStateStore
from streamscore.client import iter_scores
from streamscore.core.erasure import fingerprint
from streamscore.core.records import ErasureConfirmation
from streamscore.core.state import UserState
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event

from .conftest import REDIS_URL, SHARED
from .helpers import (
    env_for,
    kill,
    settings_for,
    start_scorer,
    stop,
    wait_for,
    wait_until_committed,
)

pytestmark = pytest.mark.integration
VICTIMS = 3
KEY = "integration pseudonym key, 32 B"


def _events() -> list[tuple[str, dict[str, Any]]]:
    sim = ShopSimulator(SimulationConfig(users=150, days=45.0, seed=5))
    out = []
    for e in sim.events():
        assert isinstance(e, dict)
        out.append((str(e["user_id"]), e))
    return out


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamscore.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _forget(env: dict[str, str], users: list[str]) -> str:
    done = _cli(env, "forget", *users)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _scan_for(prefix: str, ids: list[str]) -> list[str]:
    """Every place under ``prefix`` where one of ``ids`` shows: key, hash field or value,
    sorted-set member, string value."""
    client = redis.Redis.from_url(REDIS_URL)
    found = []
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            kind = client.type(key)
            if kind == b"hash":
                parts = [b for kv in client.hgetall(key).items() for b in kv]
            elif kind == b"zset":
                parts = list(client.zrange(key, 0, -1))
            elif kind == b"string":
                parts = [client.get(key) or b""]
            else:
                parts = []
            for uid in ids:
                if uid.encode() in key or any(uid.encode() in p for p in parts):
                    found.append(f"{uid} in {key!r}")
    finally:
        client.close()
    return found


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "pseudonymous"])
def test_forget_under_load_with_a_sigkill_between_deleting_and_confirming(
    names: dict[str, str], tmp_path: Path, key: str | None
) -> None:
    events = _events()
    records = [(u.encode(), encode_event(e)) for u, e in events]
    half = len(records) // 2
    produce(SHARED, names["input_topic"], records[:half])  # the rest comes after the requests
    secret = {"pseudonym_key": key} if key else {}
    env = env_for(names, batch_max_records=200, session_timeout_ms=6000, **secret)
    settings = settings_for(names, **secret)
    log_path = tmp_path / "scorer.log"
    group, topic = names["kafka_group_id"], names["input_topic"]
    store = maybe_pseudonymous(RedisStateStore.from_settings(settings), settings)
    progress = GroupProgress(SHARED, group, topic)
    proc = start_scorer(env, log_path)
    procs = {log_path: proc}
    try:
        wait_for("half committed", lambda: progress.fraction() >= 0.5, 90, procs, 0.01)
        # Users whose state exists now, while the rest of the stream is still coming.
        users = sorted({u for u, _ in events})
        held = store.load(users)
        victims = sorted(held, key=lambda u: -len(held[u]))[:VICTIMS]
        assert len(victims) == VICTIMS
        delete_topics(SHARED, [names["confirmations_topic"]])
        wait_for(
            "the confirmations topic to go",
            lambda: names["confirmations_topic"] not in list_topics(SHARED),
            30,
        )
        printed = _forget(env, victims)
        assert all(v in printed for v in victims)
        produce(SHARED, names["input_topic"], records[half:])

        def marked() -> dict[str, bytes]:
            _, marks = store.erasure_log(range(4))
            return {fp: m for by_fp in marks.values() for fp, m in by_fp.items()}

        # The scorer erases the requests it has read, then is stuck on the batch's flush.
        wait_for("a deletion", lambda: bool(marked()), 60, procs)
        erased = [v for v in victims if fingerprint(v, key and key.encode()) in marked()]
        assert erased and not store.load(erased)
        kill(proc)  # stuck flushing the confirmations: the kill lands between the two
    finally:
        if proc.poll() is None:
            kill(proc)
        progress.close()
    assert store.erasure_log(range(4))[0] == {}, "offsets saved before the confirmations"

    create_topics(SHARED, {names["confirmations_topic"]: 4})
    proc = start_scorer(env, log_path)
    procs = {log_path: proc}
    try:
        wait_until_committed(group, topic, procs)
        last_ts = max(int(e["ts"]) for _, e in events)
        late = [
            (v.encode(), encode_event({"event_id": f"late-{v}", "user_id": v,
                                       "type": "page_view", "ts": last_ts + 60_000}))
            for v in victims
        ]  # fmt: skip
        produce(SHARED, topic, late)
        wait_until_committed(group, topic, procs)

        def confirmed() -> bool:
            return len(read_topic(SHARED, names["confirmations_topic"])) >= VICTIMS

        wait_for("the confirmations", confirmed, 60, procs)
        wait_for("the erasure offsets", lambda: bool(store.erasure_log(range(4))[0]), 30, procs)
    finally:
        assert stop(proc) == 0, log_path.read_text()
    log = log_path.read_text()

    # Nothing of the victims anywhere in Redis (pseudonymous: of nobody); the others are there.
    users = sorted({u for u, _ in events})
    assert _scan_for(names["redis_key_prefix"], users if key else victims) == []
    others = [u for u in {u for u, _ in events} if u not in victims]
    assert set(store.load(others)) == set(others)
    # explain reads a known user's state back from Redis; an erased one has none.
    known = others[0]
    state = UserState.from_bytes(known, store.load([known])[known])
    store.close()
    shown = _cli(env, "explain", known, "--json")
    assert shown.returncode == 0, shown.stderr
    rep = orjson.loads(shown.stdout)
    assert rep["user_id"] == known and rep["models_restored"] is True
    assert rep["features"]["events"] == state.features.events
    assert len(rep["pending_snapshots"]) == len(state.snapshots)
    terms = rep["explanation"]["churn"]["terms"]
    assert abs(sum(t["contribution"] for t in terms) - rep["explanation"]["churn"]["logit"]) < 0.01
    gone = _cli(env, "explain", victims[0])
    assert gone.returncode == 1 and "erased" in gone.stderr
    # Each victim confirmed, every copy the same record id; the state had been found by
    # the first process (the restarted one found it deleted).
    by_user: dict[str, set[str]] = defaultdict(set)
    for m in read_topic(SHARED, names["confirmations_topic"]):
        record = ErasureConfirmation.model_validate(orjson.loads(m.value))
        assert m.key == record.user_id.encode()
        by_user[record.user_id].add(record.id)
    assert {u: len(ids) for u, ids in by_user.items()} == dict.fromkeys(victims, 1)
    # A tombstone per victim on each user-keyed output topic, after their last record there.
    for setting in ("scores_topic", "alerts_topic", "segments_topic"):
        last_record: dict[str, tuple[int, int]] = {}
        tombstone: dict[str, tuple[int, int]] = {}
        for m in read_topic(SHARED, names[setting]):
            uid = m.key.decode()
            if uid in victims:
                at = (m.partition, m.offset)
                if m.value is None:
                    tombstone[uid] = at
                else:
                    last_record[uid] = at
        assert set(tombstone) == set(victims), setting
        for uid, at in last_record.items():
            assert at[0] == tombstone[uid][0] and at[1] < tombstone[uid][1], (setting, uid)
    # The typed reader steps over the tombstones and counts them.
    reader = iter_scores(f"r{group}", settings, from_beginning=True, stop_when_idle_s=2.0)
    try:
        assert sum(1 for _ in reader) > 0
    finally:
        reader.close()
    assert reader.tombstones >= VICTIMS
    # The late events were dropped unseen, not dead-lettered and not applied.
    dead = [orjson.loads(m.value) for m in read_topic(SHARED, names["dlq_topic"])]
    assert not any(b"late-" in base64.b64decode(str(d["raw"])) for d in dead)
    assert "erased" in log
