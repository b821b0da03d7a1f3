"""Reliability of ``streamscore run`` on real servers (issue 5, DESIGN.md §4).

After every fault the whole state in Redis must equal an uninterrupted run's over the same
partitioned input (``tests/statecheck.py``: features, pending snapshots and their labels,
positions, due queues, watermarks exactly; segment, lifecycle, alert memory and last score
as the run's own last records announced them).

- crash safety: SIGKILL at ten points of a 50k-event stream's committed progress, restarted
  each time;
- outages: a private Redis stopped for 30 s, a private Kafka broker restarted, mid-stream;
- published model versions: written by the trainer, resumed at their training offset after
  a crash and on start, refused when tampered with;
- the dead-letter limit stops the service with a clear message.

What "a consumer can deduplicate" means (checked in the crash test): every output ``id`` is
derived from the input that caused the record, so

1. within one uninterrupted run no two records share an id (checked on a replay), hence a
   repeated id is always a replay of the same fact;
2. two records with the same id carry the same identity: the same user and event time
   (``as_of``), the same ``trigger`` for scores, the same new segment and lifecycle stage for
   segment changes, the same source position for dead letters. Numbers that come from the
   models (probabilities, predicted values, ``model_version``, reasons, previous segment) and
   wall-clock stamps (``scored_at``, ``received_at``) may differ: a redone batch is scored with
   the model version published by then, so a replayed record reflects newer models. A
   consumer keeps either copy (the later one is the fresher estimate);
3. after dropping repeated ids every user still has a score as of their last event.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from platform import python_version
from typing import Any

import orjson
import pytest
import redis

from devstack import GroupProgress, consume, free_port, produce
from streamscore.config import Settings, load_settings
from streamscore.core import checkpoint
from streamscore.core.inputs import FEATURE_SCHEMA
from streamscore.core.records import TOPIC_SCORES, TOPIC_SEGMENTS
from streamscore.core.timeutil import parse_rfc3339
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event
from tests.conftest import MakeBroker, MakeRedis
from tests.statecheck import reference_run

from .conftest import REDIS_URL, SHARED
from .helpers import (
    ASSIGNED,
    assert_learnt_once,
    assert_same_as_uninterrupted,
    env_for,
    input_records,
    joined,
    kill,
    scrape,
    start_scorer,
    stop,
    tail,
    wait_for,
    wait_until_settled,
)

pytestmark = pytest.mark.integration

RETRY_LOG = "; retrying in "
RETRIED_STEP = re.compile(r"streamscore\.runtime: (.+?) failed \(.*; retrying in ")
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


def _store_settings(names: dict[str, str], redis_url: str = REDIS_URL) -> Settings:
    """Settings of the test's state store: its Redis, its key prefix, the scorers' key."""
    return load_settings(
        redis_url=redis_url,
        redis_key_prefix=names["redis_key_prefix"],
        checkpoint_key="integration-test-key",
    )


def _retries(port: int) -> dict[str, float]:
    """streamscore_transient_errors_total by step, from the scorer's metrics endpoint."""
    return {
        k.split('"')[1]: v
        for k, v in scrape(port, "streamscore_transient_errors_total").items()
        if '"' in k
    }


def _retry_lines(log: Path) -> dict[str, int]:
    """How many times the log says each step failed and is retried."""
    counts: dict[str, int] = defaultdict(int)
    for line in log.read_text(errors="replace").splitlines():
        m = RETRIED_STEP.search(line)
        if m:
            counts[m.group(1)] += 1
    return dict(counts)


# -- 1. crash safety --------------------------------------------------------------------------

# Where the scorer dies: the first moment its group's committed share of the input passes
# each of these. A kill lands wherever the batch cycle then is (polling, scoring, sending,
# saving, committing): never at a time of the test's choosing.
KILL_POINTS = tuple(round(0.05 + 0.08 * i, 2) for i in range(10))  # 5 %, 13 %, ... 77 %


@pytest.mark.slow
def test_sigkill_at_ten_points_of_committed_progress_loses_and_doubles_nothing(
    names: dict[str, str], tmp_path: Path
) -> None:
    events = _events(users=500, days=90)
    assert len(events) >= 50_000
    produce(SHARED, names["input_topic"], _keyed(events))
    env = env_for(names, checkpoint_interval_seconds=1, **FAST_GROUP)
    log = tmp_path / "scorer.log"
    group, topic = names["kafka_group_id"], names["input_topic"]
    settings = _store_settings(names)
    progress = GroupProgress(SHARED, group, topic)
    killed_at: list[float] = []
    try:
        for point in KILL_POINTS:
            proc = start_scorer(env, log)
            wait_for(
                f"{point:.0%} of the input committed",
                lambda: progress.fraction() > point,  # noqa: B023
                120,
                {log: proc},
                interval_s=0.01,
            )
            kill(proc)
            killed_at.append(progress.fraction())
        assert all(f < 1.0 for f in killed_at), f"a kill left no work to restart: {killed_at}"
        before = len(ASSIGNED.findall(log.read_text()))
        proc = start_scorer(env, log)
        try:
            wait_for("the last scorer to join", lambda: joined(log, before), 60, {log: proc})
            wait_for("everything committed", lambda: progress.fraction() >= 1.0, 180, {log: proc})
            wait_until_settled(settings, {log: proc})
        finally:
            code = stop(proc)
    finally:
        progress.close()
    text = log.read_text()
    assert code == 0, text[-4000:]
    print(f"killed at committed fractions {[round(f, 3) for f in killed_at]}")

    # States: the whole state of one uninterrupted run, every event counted exactly once.
    got = assert_same_as_uninterrupted(names)
    assert sum(s.features.events for s in got.states.values()) == len(events)

    # Outputs: every user scored as of their last event; repeated ids are replays of one fact.
    scores = consume(SHARED, names["scores_topic"])
    _assert_scores_cover(scores, _last_event_ms(events))
    repeats = {
        "scores": _duplicates("scores", scores),
        "segments": _duplicates("segments", consume(SHARED, names["segments_topic"])),
        "alerts": _duplicates("alerts", consume(SHARED, names["alerts_topic"])),
    }
    print(f"repeated output ids after 10 crashes: {repeats} (of {len(scores)} scores)")
    _, uninterrupted = reference_run(load_settings(metrics_port=0), input_records(topic), 4)
    for kind, records in (("scores", TOPIC_SCORES), ("segments", TOPIC_SEGMENTS)):
        ids = [r["id"] for r in uninterrupted.records[records]]
        assert len(ids) == len(set(ids)), f"an uninterrupted run repeats {kind} ids"
    # Clean input: replaying already-applied events after a crash dead-letters nothing.
    dlq = consume(SHARED, names["dlq_topic"])
    assert dlq == [], [(r["error_type"], r["error"]) for r in dlq[:5]]

    # The one lineage (the killed process was also the trainer) learnt every label the run
    # resolved exactly once: none lost with a killed trainer's unpublished learning, none
    # learnt twice from a redone batch; each restart resumed the last published version.
    assert "training: this process owns" in text and "resuming model version" in text
    assert_learnt_once(settings, names)


# -- 2. outages -------------------------------------------------------------------------------


def _wait_for_retries(log: Path, proc: Any, what: str, n: int = 2) -> None:
    """Until the scorer has logged ``n`` retries mentioning ``what``. By the second, whatever
    the last good batch committed has reached the broker: nothing more may be committed."""
    wait_for(
        f"{n} retries of {what}",
        lambda: sum(RETRY_LOG in ln and what in ln for ln in log.read_text().splitlines()) >= n,
        60,
        {log: proc},
    )


@pytest.mark.slow
def test_redis_down_for_30s_mid_stream(
    names: dict[str, str], make_redis: MakeRedis, tmp_path: Path
) -> None:
    """A private Redis (AOF on) stopped for 30 s while the scorer works, then restarted."""
    events = _events(users=300, days=60, seed=12)
    half = len(events) * 2 // 3
    group, topic = names["kafka_group_id"], names["input_topic"]
    log = tmp_path / "scorer.log"
    port = free_port()
    rds = make_redis()
    env = env_for(names, redis_url=rds.url, metrics_port=port, **FAST_GROUP)
    produce(SHARED, topic, _keyed(events[:half]))
    progress = GroupProgress(SHARED, group, topic)
    proc = start_scorer(env, log)
    try:
        wait_for("a quarter committed", lambda: progress.fraction() > 0.25, 60, {log: proc})
        rds.stop()  # SIGTERM: Redis syncs its AOF and exits, mid-batch for the scorer
        down_at = time.monotonic()
        _wait_for_retries(log, proc, f"failed at {rds.url}: Error 111")
        frozen = progress.committed()
        during = _retries(port)
        produce(SHARED, topic, _keyed(events[half:]))  # the stream goes on meanwhile
        while time.monotonic() - down_at < 30:  # the outage: nothing may be committed
            assert proc.poll() is None, tail(log)
            assert progress.committed() == frozen, "committed offsets while Redis was down"
            time.sleep(0.5)
        rds.start()  # same port, same directory: the data is back
        wait_for("everything committed", lambda: progress.fraction() >= 1.0, 90, {log: proc})
        wait_until_settled(_store_settings(names, rds.url), {log: proc})
        after = _retries(port)
    finally:
        progress.close()
        code = stop(proc)
    text = log.read_text()
    assert code == 0, text[-4000:]
    assert "stopped cleanly" in text
    redis_steps = ("load states", "save states", "query due users")
    assert sum(during.get(s, 0) for s in redis_steps) > 0, during
    # Every retry the log tells of is counted by the metric, step by step.
    logged = _retry_lines(log)
    assert {s: after.get(s, 0) for s in redis_steps} == {s: logged.get(s, 0) for s in redis_steps}
    print(f"Redis outage: transient errors by step {after}")
    got = assert_same_as_uninterrupted(names, redis_url=rds.url)
    assert sum(s.features.events for s in got.states.values()) == len(events)


def test_sigterm_during_a_redis_outage_stops_at_once_and_commits_nothing(
    names: dict[str, str], make_redis: MakeRedis, tmp_path: Path
) -> None:
    """An operator stops a scorer whose Redis is down: it gives up the failing batch instead
    of waiting for Redis, commits nothing more, and a later start loses and doubles nothing."""
    events = _events(users=200, days=40, seed=14)
    group, topic = names["kafka_group_id"], names["input_topic"]
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    rds = make_redis()
    env = env_for(names, redis_url=rds.url, **FAST_GROUP)
    produce(SHARED, topic, _keyed(events))
    progress = GroupProgress(SHARED, group, topic)
    proc = start_scorer(env, first_log)
    try:
        wait_for("a quarter committed", lambda: progress.fraction() > 0.25, 60, {first_log: proc})
        rds.stop()
        _wait_for_retries(first_log, proc, f"failed at {rds.url}")
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
        wait_for("everything committed", lambda: progress.fraction() >= 1.0, 90, {second_log: proc})
        wait_until_settled(_store_settings(names, rds.url), {second_log: proc})
    finally:
        progress.close()
        code = stop(proc)
    assert code == 0, second_log.read_text()[-4000:]
    got = assert_same_as_uninterrupted(names, redis_url=rds.url)
    assert sum(s.features.events for s in got.states.values()) == len(events)


def _log_time(line: str) -> float:
    """Epoch seconds of a log line's timestamp (the scorer logs local time, with ms); NaN for
    a line without one (a traceback's)."""
    try:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return float("nan")


def _kafka_said(log: Path) -> list[str]:
    """The scorer's own lines about Kafka being unreachable or back."""
    return [line for line in log.read_text().splitlines() if "streamscore.kafka: Kafka at" in line]


@pytest.mark.slow
def test_kafka_broker_killed_mid_stream(
    private_names: dict[str, str], make_broker: MakeBroker, tmp_path: Path
) -> None:
    """A private broker killed -9 while the scorer works, restarted 15 s later on its data."""
    names = private_names
    # Enough input that the scorer is busy when the broker dies.
    events = _events(users=500, days=60, seed=13)
    half = len(events) * 2 // 3
    group, topic = names["kafka_group_id"], names["input_topic"]
    log = tmp_path / "scorer.log"
    port = free_port()
    broker = make_broker()
    client = broker.client_config()
    broker.create_topics([v for k, v in names.items() if k.endswith("_topic")])
    env = env_for(names, kafka_bootstrap_servers=broker.bootstrap, metrics_port=port, **FAST_GROUP)
    produce(client, topic, _keyed(events[:half]))
    progress = GroupProgress(client, group, topic)
    proc = start_scorer(env, log)
    try:
        wait_for("a third committed", lambda: progress.fraction() > 0.3, 90, {log: proc})
        progress.close()
        broker.kill()  # SIGKILL: no clean shutdown, no goodbye to the clients
        killed_at = time.time()
        wait_for("the outage in the log", lambda: bool(_kafka_said(log)), 20, {log: proc})
        wait_for("15 s of outage", lambda: time.time() - killed_at > 15, 30, {log: proc})
        broker.start()
        restarted_at = time.time()
        produce(client, topic, _keyed(events[half:]))
        progress = GroupProgress(client, group, topic)
        wait_for("everything committed", lambda: progress.fraction() >= 1.0, 120, {log: proc})
        wait_until_settled(_store_settings(names), {log: proc})
        after = _retries(port)
    finally:
        progress.close()
        code = stop(proc)
    text = log.read_text()
    assert code == 0, text[-4000:]
    assert "stopped cleanly" in text
    said = _kafka_said(log)
    down = [line for line in said if "is unreachable" in line]
    back = [line for line in said if "is back" in line]
    assert len(down) == 1 and len(back) == 1, said  # once each, however many retries
    assert 0 <= _log_time(down[0]) - killed_at < 10, (killed_at, down[0])
    assert _log_time(back[0]) >= restarted_at - 1, (restarted_at, back[0])
    print(f"Kafka kill -9: {down[0][:110]}... / {back[0][:110]}")
    # kafka-python's own per-attempt connection errors stay out of the log meanwhile.
    lines = text.splitlines()
    outage = [line for line in lines if killed_at + 3 < _log_time(line) < restarted_at]
    noise = [line for line in outage if " kafka." in line and ("ERROR" in line or "WARN" in line)]
    assert len(noise) <= 5, noise[:10]
    retried = [line for line in lines if RETRY_LOG in line]
    assert any("Kafka" in line for line in retried), retried[:3]
    logged = _retry_lines(log)
    for step in ("send outputs", "flush producer"):
        assert after.get(step, 0) == logged.get(step, 0), (step, after, logged)
    assert after.get("commit offsets", 0) >= logged.get("commit offsets", 0), (after, logged)
    print(f"Kafka kill -9: {len(retried)} retry log lines, transient errors by step {after}")
    got = assert_same_as_uninterrupted(names, client=client)
    assert sum(s.features.events for s in got.states.values()) == len(events)
    _assert_scores_cover(consume(client, names["scores_topic"]), _last_event_ms(events))


def test_kafka_broker_killed_while_idle_is_reported_too(
    private_names: dict[str, str], make_broker: MakeBroker, tmp_path: Path
) -> None:
    """No records flow, so no flush or commit fails: the periodic lag lookup notices. (The
    scorer alone: a trainer thread would still publish, and commit, what it learns.)"""
    names = private_names
    events = _events(users=40, days=20, seed=15)
    group, topic = names["kafka_group_id"], names["input_topic"]
    log = tmp_path / "scorer.log"
    broker = make_broker()
    client = broker.client_config()
    broker.create_topics([v for k, v in names.items() if k.endswith("_topic")])
    env = env_for(
        names, kafka_bootstrap_servers=broker.bootstrap, run_trainer="false", **FAST_GROUP
    )
    produce(client, topic, _keyed(events[:100]))
    progress = GroupProgress(client, group, topic)
    proc = start_scorer(env, log)
    try:
        wait_for("all committed", lambda: progress.fraction() >= 1.0, 60, {log: proc})
        progress.close()
        quiet_from = time.time()
        wait_for("an idle second", lambda: time.time() - quiet_from > 1, 5, {log: proc})
        broker.kill()
        killed_at = time.time()
        wait_for("the outage", lambda: bool(_kafka_said(log)), 20, {log: proc})
        broker.start()
        wait_for("the return", lambda: len(_kafka_said(log)) > 1, 60, {log: proc})
        produce(client, topic, _keyed(events[100:]))
        progress = GroupProgress(client, group, topic)
        wait_for("everything committed", lambda: progress.fraction() >= 1.0, 90, {log: proc})
        wait_until_settled(_store_settings(names), {log: proc})
    finally:
        progress.close()
        code = stop(proc)
    assert code == 0, tail(log)
    down, back = _kafka_said(log)
    assert "is unreachable (offsets lookup" in down or "(connection check" in down, down
    assert 0 <= _log_time(down) - killed_at < 10, (killed_at, down)
    assert "is back" in back
    assert_same_as_uninterrupted(names, client=client)


# -- 3. the dead-letter limit, end to end ------------------------------------------------------


def test_mostly_garbage_input_stops_the_service_with_a_clear_message(
    names: dict[str, str], tmp_path: Path
) -> None:
    """A wrong topic (or a broken producer): the service stops instead of draining it."""
    garbage = [(None, b"\x00not an event %d" % i) for i in range(290)]
    good = [(str(e["user_id"]).encode(), encode_event(e)) for e in _sim_sample(10)]
    produce(SHARED, names["input_topic"], garbage + good)
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


# -- 4. published model versions, end to end ---------------------------------------------------


def test_model_version_published_on_shutdown_resumed_on_start_refused_when_tampered(
    names: dict[str, str], tmp_path: Path
) -> None:
    events = _events(users=80, days=40, seed=14)
    produce(SHARED, names["input_topic"], _keyed(events))
    group, topic, prefix = names["kafka_group_id"], names["input_topic"], names["redis_key_prefix"]
    env = env_for(names, checkpoint_interval_seconds=3600)  # only the shutdown's version
    progress = GroupProgress(SHARED, group, topic)
    training = GroupProgress(SHARED, f"{group}-trainer", names["training_topic"])
    log1 = tmp_path / "first.log"
    proc = start_scorer(env, log1)
    try:
        wait_for("everything committed", lambda: progress.fraction() >= 1.0, 90, {log1: proc})
    finally:
        progress.close()
        assert stop(proc) == 0, log1.read_text()[-4000:]
    (end,) = training.ends().values()
    training.close()

    r = redis.Redis.from_url(REDIS_URL)
    key = f"{prefix}:blob:lineage"
    blob = r.get(key)
    assert blob is not None
    ckpt = checkpoint.load(blob, {"k1": b"integration-test-key"})
    h = ckpt.header
    assert h["key_id"] == "k1" and h["format"] == checkpoint.FORMAT
    # Version 1 (one publish, at shutdown), of what the trainer had read of training-examples
    # by then (the rest is learnt by the next trainer).
    offset = h["training_offset"]
    assert h["version"] == 1 and 0 < offset <= end
    assert h["model_version"].endswith("-g1")
    head = orjson.loads(r.get(f"{prefix}:blob:lineage-head") or b"{}")
    assert (head["version"], head["offset"], head["writer"]) == (1, offset, h["writer"])
    # The versions of what wrote it, as installed here.
    assert h["river"] == version("river")
    assert h["streamscore"] == version("streamscore")
    assert h["kafka-python"] == version("kafka-python")
    assert h["python"] == python_version()
    assert h["feature_schema"] == FEATURE_SCHEMA
    assert h["labels_learnt"]["churn"] > 0
    assert f"published model version {h['model_version']}" in log1.read_text()

    # A restarted process scores with that version and its trainer resumes it at its offset.
    log2 = tmp_path / "second.log"
    proc = start_scorer(env, log2)
    try:
        wait_for("the trainer to resume", lambda: "resuming model version" in log2.read_text(),
                 60, {log2: proc})  # fmt: skip
    finally:
        assert stop(proc) == 0, log2.read_text()[-4000:]
    text = log2.read_text()
    assert f"scoring with model version {h['model_version']}" in text
    assert f"resuming model version 1 at offset {offset}" in text

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
    # ... or, when configured so, the process starts with fresh models, and its trainer
    # learns training-examples again from the start.
    log4 = tmp_path / "fresh.log"
    proc = start_scorer({**env, "STREAMSCORE_ON_BAD_CHECKPOINT": "fresh"}, log4)
    try:
        wait_for("the trainer to resume", lambda: "resuming model version" in log4.read_text(),
                 60, {log4: proc})  # fmt: skip
    finally:
        assert stop(proc) == 0, log4.read_text()[-4000:]
    text = log4.read_text()
    assert "starting with fresh models (on_bad_checkpoint=fresh)" in text
    assert "resuming model version 1 at offset 0" in text
    r.close()
