"""``streamscore run`` on the real stack: same results as ``replay``, nothing lost or doubled
across a crash, and two processes in one group produce the state of one."""

from __future__ import annotations

import base64
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from devstack import GroupProgress, consume, produce
from streamscore.core.records import TOPIC_DLQ, ChurnAlert, DeadLetter, SegmentChange, UserScore
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event
from tests.statecheck import reference_run

from .conftest import REDIS_URL, SHARED
from .helpers import (
    assert_same_as_uninterrupted,
    env_for,
    input_records,
    joined,
    kill,
    settings_for,
    start_scorer,
    stop,
    wait_for,
    wait_until_committed,
    wait_until_settled,
)

pytestmark = pytest.mark.integration

BAD = [b"not json", b'{"event_id":"b1","user_id":"u","type":"teleport","ts":1767225600000}']

PSEUDONYM_KEY = "integration pseudonym key, 32 B"


def _events(users: int = 150, days: float = 45.0) -> list[tuple[str, bytes]]:
    sim = ShopSimulator(SimulationConfig(users=users, days=days, seed=11))
    out = []
    for e in sim.events():
        assert isinstance(e, dict)
        out.append((str(e["user_id"]), encode_event(e)))
    return out


def _produce_all(names: dict[str, str], events: list[tuple[str, bytes]]) -> None:
    produce(SHARED, names["input_topic"], [(u.encode(), v) for u, v in events])
    produce(SHARED, names["input_topic"], [(b"bad", b) for b in BAD])


def test_run_matches_replay(names: dict[str, str], tmp_path: Path) -> None:
    events = _events()
    users = {u for u, _ in events}
    _produce_all(names, events)
    log_path = tmp_path / "scorer.log"
    proc = start_scorer(env_for(names), log_path)
    try:
        wait_until_committed(names["kafka_group_id"], names["input_topic"], {log_path: proc})
        wait_until_settled(settings_for(names), {log_path: proc})
    finally:
        code = stop(proc)
    log = log_path.read_text()
    assert code == 0, log
    assert "stopped cleanly" in log

    assert_same_as_uninterrupted(names)

    scores = consume(SHARED, names["scores_topic"])
    assert {s["user_id"] for s in scores} == users
    for record in scores:
        UserScore.model_validate(record)
    segments = consume(SHARED, names["segments_topic"])
    assert {s["user_id"] for s in segments} == users  # everyone starts in some segment
    for record in segments:
        SegmentChange.model_validate(record)
    for record in consume(SHARED, names["alerts_topic"]):
        ChurnAlert.model_validate(record)
    dlq = consume(SHARED, names["dlq_topic"])
    for record in dlq:
        DeadLetter.model_validate(record)
    assert sorted(base64.b64decode(str(r["raw"])) for r in dlq) == sorted(BAD)
    assert Counter(str(r["error_type"]) for r in dlq) == {"invalid_json": 1, "unknown_type": 1}
    _, uninterrupted = reference_run(settings_for({}), input_records(names["input_topic"]), 4)
    assert len(uninterrupted.records[TOPIC_DLQ]) == len(dlq)


@pytest.mark.parametrize("key", [None, PSEUDONYM_KEY], ids=["plain", "pseudonymous"])
def test_sigkill_mid_stream_loses_and_doubles_nothing(
    names: dict[str, str], tmp_path: Path, key: str | None
) -> None:
    """Two SIGKILLs mid-stream: the whole state is one uninterrupted run's; the same with
    pseudonymous state, where Redis then holds no user id in any key."""
    events = _events(users=200, days=60)
    users = {u for u, _ in events}
    _produce_all(names, events)
    secret = {"pseudonym_key": key} if key else {}
    env = env_for(names, batch_max_records=200, session_timeout_ms=6000, **secret)
    log_path = tmp_path / "scorer.log"
    group, topic = names["kafka_group_id"], names["input_topic"]
    progress = GroupProgress(SHARED, group, topic)
    try:
        for target in (0.2, 0.5):  # killed as soon as the group has committed this share
            proc = start_scorer(env, log_path)
            wait_for(
                f"{target:.0%} committed",
                lambda: progress.fraction() >= target,  # noqa: B023
                90,
                {log_path: proc},
                interval_s=0.01,
            )
            kill(proc)
            assert progress.fraction() < 1.0, "the kill came after the last commit"
    finally:
        progress.close()
    proc = start_scorer(env, log_path)
    try:
        wait_until_committed(group, topic, {log_path: proc})
        wait_until_settled(settings_for(names, **secret), {log_path: proc})
    finally:
        assert stop(proc) == 0, log_path.read_text()

    got = assert_same_as_uninterrupted(names, pseudonym_key=key)
    assert sum(s.features.events for s in got.states.values()) == len(events)
    if key:
        keys = [k.decode() for k in redis.Redis.from_url(REDIS_URL).scan_iter(
            match=f"{names['redis_key_prefix']}:*", count=1000)]  # fmt: skip
        assert keys and not [k for k in keys if any(u in k for u in users)], keys[:5]
    scores = consume(SHARED, names["scores_topic"])
    assert {s["user_id"] for s in scores} == users


def test_two_processes_share_the_work(names: dict[str, str], tmp_path: Path) -> None:
    events = _events(users=200, days=45)
    env = env_for(names, batch_max_records=200)
    logs = [tmp_path / f"scorer{i}.log" for i in range(2)]
    procs = {log: start_scorer(env, log) for log in logs}
    try:
        # Both own partitions before the input arrives, so both work on it.
        wait_for("both scorers to get partitions", lambda: all(map(joined, logs)), 60, procs)
        _produce_all(names, events)
        wait_until_committed(names["kafka_group_id"], names["input_topic"], procs)
        wait_until_settled(settings_for(names), procs)
    finally:
        codes = [stop(p) for p in procs.values()]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    got = assert_same_as_uninterrupted(names)
    assert {s.partition for s in got.states.values()} == {0, 1, 2, 3}


def _user_on(partition: int, partitions: int = 4) -> str:
    """A user id that the producer's default partitioner (murmur2 of the key) sends there."""
    from kafka.partitioner.default import murmur2

    for i in range(10_000):
        user = f"idle-test-{i}"
        if (murmur2(user.encode()) & 0x7FFFFFFF) % partitions == partition:
            return user
    raise AssertionError("no key found")


def _session(user: str, n: int, ts: int) -> tuple[bytes, bytes]:
    event = {"event_id": f"{user}-{n}", "user_id": user, "type": "session_start", "ts": ts}
    return user.encode(), encode_event(event)


def test_an_idle_partition_still_rescores_its_silent_users(
    names: dict[str, str], tmp_path: Path
) -> None:
    """Partition 3 goes quiet after its user's first events; partitions 0-2 go on for 30
    simulated days, paced over ~9 s. With a 2 s idleness timeout, partition 3's watermark
    follows the others and its silent user is rescored (runtime unit tests: the control)."""
    t0, day = 1_767_225_600_000, 86_400_000
    quiet = _user_on(3)
    active = [_user_on(p) for p in range(3)]
    topic = names["input_topic"]
    first = [_session(u, 0, t0) for u in [quiet, *active]]
    first.append(
        (
            quiet.encode(),
            encode_event(
                {"event_id": f"{quiet}-buy", "user_id": quiet, "type": "purchase",
                 "ts": t0 + 60_000, "amount": 25.0}
            ),
        )
    )  # fmt: skip
    log = tmp_path / "scorer.log"
    proc = start_scorer(env_for(names, idle_partition_seconds=2), log)
    try:
        produce(SHARED, topic, first)
        for d in range(1, 31):  # the other partitions go on, in wall-clock time too
            produce(SHARED, topic, [_session(u, d, t0 + d * day) for u in active])
            time.sleep(0.3)
        wait_until_committed(names["kafka_group_id"], topic, {log: proc})
    finally:
        code = stop(proc)
    text = log.read_text()
    assert code == 0, text[-4000:]
    assert "partition 3 has had no input" in text, text[-4000:]
    scores = consume(SHARED, names["scores_topic"])
    silences = [s for s in scores if s["user_id"] == quiet and s["trigger"] == "silence"]
    assert len(silences) >= 3, [s for s in scores if s["user_id"] == quiet]
