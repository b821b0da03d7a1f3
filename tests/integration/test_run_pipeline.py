"""``streamscore run`` on the real stack: same results as ``replay``, nothing lost or doubled
across a crash, and two processes in one group produce the state of one."""

from __future__ import annotations

import base64
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from streamscore.adapters.memory import MemoryStateStore
from streamscore.core.records import ChurnAlert, DeadLetter, SegmentChange, UserScore
from streamscore.core.state import UserState
from streamscore.embedded import replay
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event

from .helpers import (
    assert_same_features,
    committed_fraction,
    consume_all,
    env_for,
    produce,
    redis_states,
    settings_for,
    start_scorer,
    stop,
    wait_until_committed,
)

pytestmark = pytest.mark.integration

BAD = [b"not json", b'{"event_id":"b1","user_id":"u","type":"teleport","ts":1767225600000}']


def _events(users: int = 150, days: float = 45.0) -> list[tuple[str, bytes]]:
    sim = ShopSimulator(SimulationConfig(users=users, days=days, seed=11))
    out = []
    for e in sim.events():
        assert isinstance(e, dict)
        out.append((str(e["user_id"]), encode_event(e)))
    return out


def _write(events: list[tuple[str, bytes]], path: Path) -> None:
    path.write_bytes(b"".join(v + b"\n" for _, v in events) + b"".join(b + b"\n" for b in BAD))


def _produce_all(names: dict[str, str], events: list[tuple[str, bytes]]) -> None:
    produce(names["input_topic"], [(u.encode(), v) for u, v in events])
    produce(names["input_topic"], [(b"bad", b) for b in BAD])


def _replay_states(tmp_path: Path, events: list[tuple[str, bytes]]) -> dict[str, UserState]:
    path = tmp_path / "events.jsonl"
    _write(events, path)
    store = MemoryStateStore()
    replay(settings_for({}), path, tmp_path / "replay", show_progress=False, store=store)
    return {u: UserState.from_bytes(u, raw) for u, raw in store.states.items()}


def test_run_matches_replay(names: dict[str, str], tmp_path: Path) -> None:
    events = _events()
    users = {u for u, _ in events}
    _produce_all(names, events)
    proc = start_scorer(env_for(names), tmp_path / "scorer.log")
    try:
        wait_until_committed(names["kafka_group_id"], names["input_topic"], [proc])
    finally:
        code = stop(proc)
    log = (tmp_path / "scorer.log").read_text()
    assert code == 0, log
    assert "stopped cleanly" in log

    want = _replay_states(tmp_path, events)
    assert_same_features(redis_states(settings_for(names), users), want)

    scores = consume_all(names["scores_topic"], expect_at_least=len(users))
    assert {s["user_id"] for s in scores} == users
    for record in scores:
        UserScore.model_validate(record)
    for record in consume_all(names["segments_topic"], expect_at_least=len(users)):
        SegmentChange.model_validate(record)
    for record in consume_all(names["alerts_topic"]):
        ChurnAlert.model_validate(record)
    dlq = consume_all(names["dlq_topic"], expect_at_least=len(BAD))
    for record in dlq:
        DeadLetter.model_validate(record)
    assert sorted(base64.b64decode(str(r["raw"])) for r in dlq) == sorted(BAD)
    assert Counter(str(r["error_type"]) for r in dlq) == {"invalid_json": 1, "unknown_type": 1}
    replay_dlq = (tmp_path / "replay" / "user-events-dlq.jsonl").read_text().splitlines()
    assert len(replay_dlq) == len(dlq)


def test_sigkill_mid_stream_loses_and_doubles_nothing(
    names: dict[str, str], tmp_path: Path
) -> None:
    events = _events(users=200, days=60)
    users = {u for u, _ in events}
    _produce_all(names, events)
    env = env_for(names, batch_max_records=200, session_timeout_ms=6000)
    log_path = tmp_path / "scorer.log"
    group, topic = names["kafka_group_id"], names["input_topic"]
    kills = 0
    for target in (0.2, 0.5):
        proc = start_scorer(env, log_path)
        deadline = time.monotonic() + 90
        while committed_fraction(group, topic) < target and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills == 2
    proc = start_scorer(env, log_path)
    try:
        wait_until_committed(group, topic, [proc])
    finally:
        assert stop(proc) == 0, log_path.read_text()

    want = _replay_states(tmp_path, events)
    got = redis_states(settings_for(names), users)
    assert_same_features(got, want)
    assert sum(s.features.events for s in got.values()) == len(events)
    scores = consume_all(names["scores_topic"])
    assert {s["user_id"] for s in scores} == users


def test_two_processes_share_the_work(names: dict[str, str], tmp_path: Path) -> None:
    events = _events(users=200, days=45)
    users = {u for u, _ in events}
    env = env_for(names, batch_max_records=200)
    procs = [start_scorer(env, tmp_path / f"scorer{i}.log") for i in range(2)]
    try:
        time.sleep(4)  # both join before the input arrives, so both get partitions
        _produce_all(names, events)
        wait_until_committed(names["kafka_group_id"], names["input_topic"], procs)
    finally:
        codes = [stop(p) for p in procs]
    logs = [(tmp_path / f"scorer{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    for log in logs:
        assert "assigned partitions [" in log, log
    assert_same_features(redis_states(settings_for(names), users), _replay_states(tmp_path, events))


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
        produce(topic, first)
        for d in range(1, 31):
            produce(topic, [_session(u, d, t0 + d * day) for u in active])
            time.sleep(0.3)
        wait_until_committed(names["kafka_group_id"], topic, [proc])
    finally:
        code = stop(proc)
    text = log.read_text()
    assert code == 0, text[-4000:]
    assert "partition 3 has had no input" in text, text[-4000:]
    scores = consume_all(names["scores_topic"])
    silences = [s for s in scores if s["user_id"] == quiet and s["trigger"] == "silence"]
    assert len(silences) >= 3, [s for s in scores if s["user_id"] == quiet]
