"""Reliability of ``streamscore run`` on real servers (issue 5, DESIGN.md §4).

- crash safety: SIGKILL at ten random points of a 50k-event stream, restarted each time;
- outages: a private Redis stopped for 30 s, a private Kafka broker restarted, mid-stream;
- model checkpoints written on shutdown, restored on start, refused when tampered with;
- the dead-letter limit stops the service with a clear message.

What "a consumer can deduplicate" means (checked in the crash test): every output ``id`` is
derived from the input that caused the record, so

1. within one uninterrupted run no two records share an id (checked on a replay), hence a
   repeated id is always a replay of the same fact;
2. two records with the same id carry the same identity: the same user and event time
   (``as_of``), the same ``trigger`` for scores, the same new segment and lifecycle stage for
   segment changes, the same source position for dead letters. Numbers that come from the
   models (probabilities, predicted values, ``model_version``, reasons, previous segment) and
   wall-clock stamps (``scored_at``, ``received_at``) may differ: a restarted process restores
   the models of its last checkpoint, so a replayed record reflects the restored models. A
   consumer keeps either copy (the later one is the fresher estimate);
3. after dropping repeated ids every user still has a score as of their last event.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from streamscore.adapters.memory import MemoryStateStore
from streamscore.config import load_settings
from streamscore.core import checkpoint
from streamscore.core.state import UserState
from streamscore.core.timeutil import parse_rfc3339
from streamscore.embedded import replay
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event

from .conftest import BOOTSTRAP, REDIS_URL
from .helpers import (
    assert_same_features,
    env_for,
    produce,
    redis_states,
    start_scorer,
    stop,
)
from .kafka_broker import (
    GroupProgress,
    PrivateBroker,
    PrivateRedis,
    consume_from,
    free_port,
    produce_to,
    require_jars,
    scrape,
    topic_names,
)

pytestmark = pytest.mark.integration

SHARED = {"bootstrap_servers": [BOOTSTRAP]}
RETRY_LOG = "; retrying in "
# Restarting after SIGKILL waits for the dead member's session to expire before the group
# rebalances; the smallest session the broker allows keeps ten restarts affordable.
FAST_GROUP = {"session_timeout_ms": 6000}


# -- helpers --------------------------------------------------------------------------------


def _events(users: int, days: float, seed: int = 11) -> list[tuple[str, bytes]]:
    sim = ShopSimulator(SimulationConfig(users=users, days=days, seed=seed))
    out = []
    for e in sim.events():
        assert isinstance(e, dict)
        out.append((str(e["user_id"]), encode_event(e)))
    return out


def _keyed(events: list[tuple[str, bytes]]) -> list[tuple[bytes | None, bytes]]:
    return [(u.encode(), v) for u, v in events]


def _replay(tmp_path: Path, events: list[tuple[str, bytes]]) -> tuple[dict[str, UserState], Path]:
    """States and output directory of an uninterrupted in-process replay of the same events."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(v + b"\n" for _, v in events))
    store = MemoryStateStore()
    out = tmp_path / "replay"
    replay(load_settings(metrics_port=0), path, out, show_progress=False, store=store)
    return {u: UserState.from_bytes(u, raw) for u, raw in store.states.items()}, out


def _last_event_ms(events: list[tuple[str, bytes]]) -> dict[str, int]:
    last: dict[str, int] = {}
    for uid, raw in events:
        ts = orjson.loads(raw)["ts"]
        ms = ts if isinstance(ts, int) else parse_rfc3339(ts)
        last[uid] = max(last.get(uid, 0), ms)
    return last


def _assert_scores_cover(scores: list[dict[str, Any]], last: dict[str, int]) -> None:
    latest: dict[str, int] = {}
    for s in scores:
        uid = str(s["user_id"])
        latest[uid] = max(latest.get(uid, 0), parse_rfc3339(str(s["as_of"])))
    missing = [u for u, t in last.items() if latest.get(u, -1) < t]
    assert not missing, f"{len(missing)} users have no score as of their last event: {missing[:5]}"


# Fields that identify what a record is about; everything else may differ between copies.
IDENTITY = {
    "scores": ("user_id", "as_of", "trigger", "value_horizon_days"),
    "segments": ("user_id", "as_of", "current", "lifecycle_current"),
    "alerts": ("user_id", "as_of"),
    "dlq": ("source", "raw", "error_type"),
}


def _duplicates(kind: str, records: list[dict[str, Any]]) -> int:
    """Check rule 2 of the module docstring; returns how many records repeat an earlier id."""
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_id[str(r["id"])].append(r)
    repeats = 0
    for rid, copies in by_id.items():
        first = copies[0]
        for other in copies[1:]:
            repeats += 1
            for key in IDENTITY[kind]:
                assert other[key] == first[key], (kind, rid, key, first, other)
    return repeats


def _wait_for(
    what: str, cond: Any, procs: list[subprocess.Popen[bytes]], log: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(
                    f"scorer exited ({p.returncode}) waiting for {what}:\n"
                    + log.read_text()[-4000:]
                )
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(
        f"timed out after {timeout_s}s waiting for {what}:\n" + log.read_text()[-4000:]
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


# -- 1. crash safety --------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_at_ten_random_points_loses_and_doubles_nothing(
    names: dict[str, str], tmp_path: Path
) -> None:
    events = _events(users=500, days=90)
    assert len(events) >= 50_000
    users = {u for u, _ in events}
    produce(names["input_topic"], _keyed(events))
    env = env_for(names, checkpoint_interval_seconds=1, **FAST_GROUP)
    log = tmp_path / "scorer.log"
    group, topic = names["kafka_group_id"], names["input_topic"]
    progress = GroupProgress(SHARED, group, topic)
    rng = random.Random(20261123)
    targets = sorted(rng.uniform(0.03, 0.85) for _ in range(10))
    killed_at: list[float] = []
    try:
        for target in targets:
            proc = start_scorer(env, log)
            before = progress.fraction()
            _wait_for(
                f"progress past {target:.0%}",
                lambda: progress.fraction() > max(target, before),  # noqa: B023
                [proc],
                log,
                120,
            )
            # Anywhere in the batch cycle, not just right after a commit.
            time.sleep(rng.uniform(0.0, 0.4))
            _kill(proc)
            killed_at.append(progress.fraction())
        assert len(killed_at) == 10
        joined = log.read_text().count("assigned partitions [")
        proc = start_scorer(env, log)
        try:
            _wait_for(
                "the last scorer to join",
                lambda: log.read_text().count("assigned partitions [") > joined,
                [proc],
                log,
                60,
            )
            _wait_for("everything committed", lambda: progress.fraction() >= 1.0, [proc], log, 180)
        finally:
            code = stop(proc)
        ends = progress.ends()
    finally:
        progress.close()
    text = log.read_text()
    assert code == 0, text[-4000:]
    assert killed_at[-1] < 1.0, "the last kill came too late to leave work for a restart"
    print(f"killed at committed fractions {[round(f, 3) for f in killed_at]}")

    # States: the same features as one uninterrupted run, every event counted exactly once.
    want, replay_dir = _replay(tmp_path, events)
    got = redis_states(
        load_settings(redis_url=REDIS_URL, redis_key_prefix=names["redis_key_prefix"]), users
    )
    assert_same_features(got, want)
    assert sum(s.features.events for s in got.values()) == len(events)

    # Outputs: every user scored as of their last event; repeated ids are replays of one fact.
    scores = consume_from(SHARED, names["scores_topic"])
    _assert_scores_cover(scores, _last_event_ms(events))
    repeats = {
        "scores": _duplicates("scores", scores),
        "segments": _duplicates("segments", consume_from(SHARED, names["segments_topic"])),
        "alerts": _duplicates("alerts", consume_from(SHARED, names["alerts_topic"])),
    }
    print(f"repeated output ids after 10 crashes: {repeats} (of {len(scores)} scores)")
    for kind, file in (("scores", "user-scores"), ("segments", "segment-changes")):
        lines = (replay_dir / f"{file}.jsonl").read_bytes().splitlines()
        ids = [orjson.loads(line)["id"] for line in lines]
        assert len(ids) == len(set(ids)), f"an uninterrupted run repeats {kind} ids"
    # Clean input: replaying already-applied events after a crash dead-letters nothing.
    dlq = consume_from(SHARED, names["dlq_topic"], idle_s=1.0)
    assert dlq == [], [(r["error_type"], r["error"]) for r in dlq[:5]]

    # Restarts restored models. The final checkpoint names every partition's offset, as far
    # as the restored lineage of models has learnt (a killed process's unsaved learning is
    # lost with it: the models are an estimate, the states are exact).
    assert "restored models" in text
    r = redis.Redis.from_url(REDIS_URL)
    blob = r.get(f"{names['redis_key_prefix']}:blob:models")
    r.close()
    assert blob is not None
    offsets = checkpoint.load(blob, {"k1": b"integration-test-key"}).header["offsets"]
    assert offsets.keys() == {str(p) for p in ends}
    assert all(0 < offsets[str(p)] <= end for p, end in ends.items()), (offsets, ends)


# -- 2. outages -------------------------------------------------------------------------------


@pytest.fixture
def private_names(stack: None) -> Iterator[dict[str, str]]:
    """Topic, group and Redis key prefix names for a test that brings its own broker."""
    tag = uuid.uuid4().hex[:8]
    names = {
        **topic_names(f"p{tag}"),
        "kafka_group_id": f"g{tag}",
        "redis_key_prefix": f"p{tag}",
    }
    try:
        yield names
    finally:
        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter(match=f"p{tag}:*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
        r.close()


def _retries(port: int) -> dict[str, float]:
    """streamscore_transient_errors_total by step, from the scorer's metrics endpoint."""
    return {
        k.split('"')[1]: v
        for k, v in scrape(port, "streamscore_transient_errors_total").items()
        if '"' in k
    }


@pytest.mark.slow
def test_redis_down_for_30s_mid_stream(names: dict[str, str], tmp_path: Path) -> None:
    """A private Redis (AOF on) stopped for 30 s while the scorer works, then restarted."""
    events = _events(users=300, days=60, seed=12)
    half = len(events) * 2 // 3
    group, topic = names["kafka_group_id"], names["input_topic"]
    log = tmp_path / "scorer.log"
    port = free_port()
    with PrivateRedis(tmp_path / "redis") as rds:
        env = env_for(names, redis_url=rds.url, metrics_port=port, **FAST_GROUP)
        produce(topic, _keyed(events[:half]))
        progress = GroupProgress(SHARED, group, topic)
        proc = start_scorer(env, log)
        try:
            _wait_for("a quarter committed", lambda: progress.fraction() > 0.25, [proc], log, 60)
            rds.stop()  # SIGTERM: Redis syncs its AOF and exits, mid-batch for the scorer
            down_at = time.monotonic()
            time.sleep(3)  # a batch saved just before the stop may still commit
            frozen = progress.committed()
            produce(topic, _keyed(events[half:]))  # the stream goes on meanwhile
            while time.monotonic() - down_at < 30:
                assert proc.poll() is None, log.read_text()[-4000:]
                assert progress.committed() == frozen, "committed offsets while Redis was down"
                time.sleep(1)
            during = _retries(port)
            rds.start()  # same port, same directory: the data is back
            _wait_for("everything committed", lambda: progress.fraction() >= 1.0, [proc], log, 90)
            after = _retries(port)
        finally:
            progress.close()
            code = stop(proc)
        text = log.read_text()
        assert code == 0, text[-4000:]
        users = {u for u, _ in events}
        got = redis_states(
            load_settings(redis_url=rds.url, redis_key_prefix=names["redis_key_prefix"]), users
        )
    assert "stopped cleanly" in text
    retried = [line for line in text.splitlines() if RETRY_LOG in line]
    assert any(f"failed at {rds.url}: Error 111" in line for line in retried), retried[:3]
    redis_steps = ("load states", "save states", "query due users")
    assert sum(during.get(s, 0) for s in redis_steps) > 0, during
    assert sum(after.values()) >= sum(during.values())
    print(f"Redis outage: {len(retried)} retry log lines, transient errors by step {after}")
    want, _ = _replay(tmp_path, events)
    assert_same_features(got, want)
    assert sum(s.features.events for s in got.values()) == len(events)


def test_sigterm_during_a_redis_outage_stops_at_once_and_commits_nothing(
    names: dict[str, str], tmp_path: Path
) -> None:
    """An operator stops a scorer whose Redis is down: it gives up the failing batch instead
    of waiting for Redis, commits nothing more, and a later start loses and doubles nothing."""
    events = _events(users=200, days=40, seed=14)
    group, topic = names["kafka_group_id"], names["input_topic"]
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with PrivateRedis(tmp_path / "redis") as rds:
        env = env_for(names, redis_url=rds.url, **FAST_GROUP)
        produce(topic, _keyed(events))
        progress = GroupProgress(SHARED, group, topic)
        proc = start_scorer(env, first_log)
        try:
            _wait_for(
                "a quarter committed", lambda: progress.fraction() > 0.25, [proc], first_log, 60
            )
            rds.stop()
            _wait_for("a retry", lambda: RETRY_LOG in first_log.read_text(), [proc], first_log, 30)
            frozen = progress.committed()
            code = stop(proc)  # fails if the scorer waits for Redis instead of stopping
            text = first_log.read_text()
            assert code == 0, text[-4000:]
            assert "gave up on '" in text, text[-4000:]
            assert "stopped with a batch left uncommitted" in text, text[-4000:]
            assert progress.committed() == frozen, "committed offsets while Redis was down"
            assert progress.fraction() < 1.0
            rds.start()
            proc = start_scorer(env, second_log)
            _wait_for(
                "everything committed", lambda: progress.fraction() >= 1.0, [proc], second_log, 90
            )
        finally:
            progress.close()
            code = stop(proc)
        assert code == 0, second_log.read_text()[-4000:]
        users = {u for u, _ in events}
        got = redis_states(
            load_settings(redis_url=rds.url, redis_key_prefix=names["redis_key_prefix"]), users
        )
    want, _ = _replay(tmp_path, events)
    assert_same_features(got, want)
    assert sum(s.features.events for s in got.values()) == len(events)


@pytest.mark.slow
def test_kafka_broker_restarted_mid_stream(private_names: dict[str, str], tmp_path: Path) -> None:
    """A private broker stopped (clean shutdown) for 15 s while the scorer works, restarted."""
    require_jars()
    names = private_names
    # Enough input that the scorer is still busy when the broker goes: an idle consumer only
    # polls, and kafka-python reports nothing of an outage to a poll.
    events = _events(users=500, days=60, seed=13)
    half = len(events) * 2 // 3
    group, topic = names["kafka_group_id"], names["input_topic"]
    log = tmp_path / "scorer.log"
    port = free_port()
    with PrivateBroker(tmp_path / "kafka") as broker:
        client = broker.client_config()
        broker.create_topics([v for k, v in names.items() if k.endswith("_topic")])
        env = env_for(
            names, kafka_bootstrap_servers=broker.bootstrap, metrics_port=port, **FAST_GROUP
        )
        produce_to(client, topic, _keyed(events[:half]))
        progress = GroupProgress(client, group, topic)
        proc = start_scorer(env, log)
        try:
            _wait_for("a first commit", lambda: progress.fraction() > 0.05, [proc], log, 60)
            progress.close()
            broker.stop()
            down_at = time.monotonic()
            while time.monotonic() - down_at < 15:
                assert proc.poll() is None, log.read_text()[-4000:]
                time.sleep(1)
            during = _retries(port)
            broker.start()
            produce_to(client, topic, _keyed(events[half:]))
            progress = GroupProgress(client, group, topic)
            _wait_for("everything committed", lambda: progress.fraction() >= 1.0, [proc], log, 120)
            after = _retries(port)
        finally:
            progress.close()
            code = stop(proc)
        text = log.read_text()
        assert code == 0, text[-4000:]
        scores = consume_from(client, names["scores_topic"])
    assert "stopped cleanly" in text
    kafka_steps = ("send outputs", "flush producer", "commit offsets")
    assert sum(during.get(s, 0) for s in kafka_steps) > 0, during
    assert sum(after.values()) >= sum(during.values())
    retried = [line for line in text.splitlines() if RETRY_LOG in line]
    assert any("Kafka" in line for line in retried), retried[:3]
    print(f"Kafka restart: {len(retried)} retry log lines, transient errors by step {after}")
    users = {u for u, _ in events}
    want, _ = _replay(tmp_path, events)
    got = redis_states(
        load_settings(redis_url=REDIS_URL, redis_key_prefix=names["redis_key_prefix"]), users
    )
    assert_same_features(got, want)
    assert sum(s.features.events for s in got.values()) == len(events)
    _assert_scores_cover(scores, _last_event_ms(events))


# -- 3. the dead-letter limit, end to end ------------------------------------------------------


def test_mostly_garbage_input_stops_the_service_with_a_clear_message(
    names: dict[str, str], tmp_path: Path
) -> None:
    """A wrong topic (or a broken producer): the service stops instead of draining it."""
    garbage = [(None, b"\x00not an event %d" % i) for i in range(290)]
    good = [(b"u1", encode_event(e)) for e in _sim_sample(10)]
    produce(names["input_topic"], garbage + good)
    log = tmp_path / "scorer.log"
    proc = start_scorer(env_for(names, dlq_window=100), log)
    code = proc.wait(timeout=90)
    text = log.read_text()
    assert code == 1, text[-4000:]
    assert (
        "streamscore: 97% of the last 100+ records were invalid (limit 95%); is the input topic "
        "right? Inspect the dead-letter topic, fix the producer, or raise "
        "STREAMSCORE_DLQ_MAX_RATIO." in text
    ), text[-2000:]
    progress = GroupProgress(SHARED, names["kafka_group_id"], names["input_topic"])
    try:
        assert progress.committed() == {}, "the refused batch must not be committed"
    finally:
        progress.close()


def _sim_sample(n: int) -> list[dict[str, object]]:
    out = []
    for e in ShopSimulator(SimulationConfig(users=5, days=5, seed=3)).events():
        assert isinstance(e, dict)
        out.append(e)
        if len(out) == n:
            break
    return out


# -- 4. model checkpoints, end to end ----------------------------------------------------------


def test_checkpoint_written_on_shutdown_restored_on_start_refused_when_tampered(
    names: dict[str, str], tmp_path: Path
) -> None:
    events = _events(users=80, days=40, seed=14)
    produce(names["input_topic"], _keyed(events))
    group, topic, prefix = names["kafka_group_id"], names["input_topic"], names["redis_key_prefix"]
    env = env_for(names, checkpoint_interval_seconds=3600)  # only the shutdown checkpoint
    progress = GroupProgress(SHARED, group, topic)
    log1 = tmp_path / "first.log"
    proc = start_scorer(env, log1)
    try:
        _wait_for("everything committed", lambda: progress.fraction() >= 1.0, [proc], log1, 90)
        ends = progress.ends()
    finally:
        progress.close()
        assert stop(proc) == 0, log1.read_text()[-4000:]

    r = redis.Redis.from_url(REDIS_URL)
    key = f"{prefix}:blob:models"
    blob = r.get(key)
    assert blob is not None
    ckpt = checkpoint.load(blob, {"k1": b"integration-test-key"})
    h = ckpt.header
    assert h["key_id"] == "k1"
    assert h["offsets"] == {str(p): o for p, o in ends.items()}
    assert h["river"] == "0.26.1"
    for field in ("model_version", "feature_schema", "streamscore", "kafka-python", "python"):
        assert isinstance(h[field], str) and h[field], field
    assert h["labels_learnt"]["churn"] > 0
    assert f"checkpointed models {h['model_version']}" in log1.read_text()

    # A restarted scorer restores exactly that checkpoint.
    log2 = tmp_path / "second.log"
    proc = start_scorer(env, log2)
    try:
        _wait_for("restore", lambda: "assigned partitions [" in log2.read_text(), [proc], log2, 60)
    finally:
        assert stop(proc) == 0, log2.read_text()[-4000:]
    assert f"restored models {h['model_version']} from checkpoint" in log2.read_text()

    # Tampered with: refused with a clear message (default on_bad_checkpoint=fail) ...
    blob = r.get(key)
    assert blob is not None
    r.set(key, blob[:-10] + bytes(b ^ 0x55 for b in blob[-10:]))
    log3 = tmp_path / "tampered.log"
    proc = start_scorer(env, log3)
    assert proc.wait(timeout=60) == 1
    text = log3.read_text()
    assert "model checkpoint signature does not match under key 'k1'" in text, text[-2000:]
    assert "STREAMSCORE_ON_BAD_CHECKPOINT=fresh" in text
    # ... or, when configured so, the scorer starts with fresh models.
    log4 = tmp_path / "fresh.log"
    proc = start_scorer({**env, "STREAMSCORE_ON_BAD_CHECKPOINT": "fresh"}, log4)
    try:
        _wait_for("start", lambda: "assigned partitions [" in log4.read_text(), [proc], log4, 60)
    finally:
        assert stop(proc) == 0, log4.read_text()[-4000:]
    assert "starting with fresh models (on_bad_checkpoint=fresh)" in log4.read_text()
    r.close()
