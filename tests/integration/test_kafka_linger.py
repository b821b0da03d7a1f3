"""A batch's fixed costs on the real broker. A lingering poll (``batch_linger_ms``) collects
what arrives within its bound and nothing after it, and returns a full batch without waiting;
a scorer fed in a trickle, so that its batches end where the linger ends them, leaves the
state and scores of an uninterrupted run; the trainer, which waits before its polls instead,
polls at most once per wait while records flow; commits sent faster than the broker answers go out
one at a time, none refused."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer, TopicPartition

from devstack import produce
from streamscore.adapters.kafka import KafkaSource
from streamscore.ports import SourceRecord
from streamscore.trainer_service import TrainerRunner

from .conftest import SHARED
from .helpers import (
    assert_same_as_uninterrupted,
    env_for,
    settings_for,
    simulated_events,
    start_scorer,
    stop,
    wait_for,
    wait_until_committed,
    wait_until_settled,
)

pytestmark = pytest.mark.integration

LINGER_MS = 1500


def _joined(source: KafkaSource) -> None:
    deadline = time.monotonic() + 60
    while not source.owned:
        assert time.monotonic() < deadline, "the source got no partitions within 60s"
        assert source.poll(100, 0.2) == []


def _values(records: list[SourceRecord]) -> list[bytes]:
    return [r.value for r in records]


def test_a_poll_collects_what_arrives_within_the_linger_and_nothing_after(
    names: dict[str, str],
) -> None:
    topic = names["input_topic"]
    source = KafkaSource(settings_for(names), linger_ms=LINGER_MS)
    try:
        _joined(source)
        produce(SHARED, topic, [(b"u", b"first")])

        def later() -> None:
            time.sleep(0.3)  # well inside the linger
            produce(SHARED, topic, [(b"u", b"within")])
            time.sleep(2 * LINGER_MS / 1000)  # well after it
            produce(SHARED, topic, [(b"u", b"after")])

        producer = threading.Thread(target=later, daemon=True)
        producer.start()
        # The poll's own timeout is far longer than the linger: what ends it is the bound.
        batch = source.poll(100, 30.0)
        assert _values(batch) == [b"first", b"within"]
        producer.join(timeout=30)
        rest: list[SourceRecord] = []
        deadline = time.monotonic() + 30
        while not rest and time.monotonic() < deadline:
            rest = source.poll(100, 0.5)
        assert _values(rest) == [b"after"]

        # A batch that is full at once goes out at once: ten records asked for, ten there.
        produce(SHARED, topic, [(b"u", b"%d" % i) for i in range(10)])
        full: list[SourceRecord] = []
        deadline = time.monotonic() + 30
        while not full and time.monotonic() < deadline:
            started = time.monotonic()
            full = source.poll(10, 0.5)
        assert len(full) == 10
        assert time.monotonic() - started < LINGER_MS / 1000, "a full batch waited"
    finally:
        source.close()


def test_the_trainer_polls_at_most_once_per_linger_while_records_flow(
    names: dict[str, str],
) -> None:
    """A record every 20 ms for two seconds: without the wait, a turn for (about) each; with
    it, every turn that finds records is followed by the wait, and nothing is left behind."""
    topic = names["training_topic"]
    linger_s, sent = 0.5, 100
    settings = settings_for(
        names, batch_linger_ms=int(linger_s * 1000), checkpoint_key="linger-test-key"
    )
    runner = TrainerRunner(settings, threading.Event())
    producer = KafkaProducer(acks="all", **SHARED)
    sender = threading.Thread(target=lambda: None)
    try:
        producer.partitions_for(topic)  # metadata fetched: a send below goes out at once
        source = runner.loop.source
        assert isinstance(source, KafkaSource)
        deadline = time.monotonic() + 60
        while not source.owned:
            assert time.monotonic() < deadline, "the trainer got no partition within 60s"
            assert runner.turn(0.2) == 0

        def trickle() -> None:
            for i in range(sent):
                producer.send(topic, value=b"%d" % i)
                producer.flush()
                time.sleep(0.02)

        sender = threading.Thread(target=trickle, daemon=True)
        started = time.monotonic()
        sender.start()
        turns_with_records, polled = 0, 0
        deadline = started + 60
        while polled < sent:
            assert time.monotonic() < deadline, f"{polled} of {sent} records polled in 60s"
            n = runner.turn(0.2)  # records the trainer cannot learn: skipped, but counted
            turns_with_records += n > 0
            polled += n
        elapsed = time.monotonic() - started
        assert polled == sent
        assert runner.loop.next_offset == sent
        # Each turn with records but the last was followed by a wait of linger_s.
        assert turns_with_records <= 1 + elapsed / linger_s, (turns_with_records, elapsed)
    finally:
        if sender.is_alive():
            sender.join(timeout=30)
        producer.close()
        runner.close()


def test_a_scorer_fed_in_a_trickle_leaves_an_uninterrupted_runs_state(
    names: dict[str, str], tmp_path: Path
) -> None:
    """Small batches cut by the linger, and by the poll timeout when the trickle pauses."""
    events = simulated_events(users=60, days=30)
    log_path = tmp_path / "scorer.log"
    proc = start_scorer(env_for(names, batch_linger_ms=40), log_path)
    try:
        wait_for("the scorer to start", lambda: "assigned partitions" in log_path.read_text(),
                 60, {log_path: proc})  # fmt: skip
        producer = KafkaProducer(acks="all", linger_ms=5, **SHARED)
        try:
            for i, (user, value) in enumerate(events):
                producer.send(names["input_topic"], key=user.encode(), value=value)
                if i % 50 == 49:  # ~3,000 events/s, in steps of 50
                    producer.flush()
                    time.sleep(0.015)
            producer.flush()
        finally:
            producer.close()
        wait_until_committed(names["kafka_group_id"], names["input_topic"], {log_path: proc})
        wait_until_settled(settings_for(names), {log_path: proc})
    finally:
        assert stop(proc) == 0, log_path.read_text()
    got = assert_same_as_uninterrupted(names)
    assert sum(s.features.events for s in got.states.values()) == len(events)


def test_commits_faster_than_the_answers_are_coalesced_not_refused(names: dict[str, str]) -> None:
    """kafka-python refuses a request beyond five in flight (``NodeNotReadyError``): a loop
    of small batches committed that way had most of its commits refused and sent again."""
    topic = names["input_topic"]
    source = KafkaSource(settings_for(names))
    # What the broker (or the client) answered each commit with. A rebalance that happens to
    # run meanwhile refuses commits too, and rightly: that is the group protocol, not the
    # requests in flight, so only refusals of the in-flight kind fail the test.
    refusals: list[str] = []
    answer = source._on_commit

    def record(offsets: Any, result: Any, sent_at: float) -> None:
        if isinstance(result, Exception):
            refusals.append(type(result).__name__)
        answer(offsets, result, sent_at)

    source._on_commit = record  # type: ignore[method-assign]
    try:
        _joined(source)
        produce(SHARED, topic, [(b"u", b"%d" % i) for i in range(40)])
        partition = min(source.owned)
        for offset in range(1, 21):  # twenty batches' commits, no poll in between
            source.commit({partition: offset})
        deadline = time.monotonic() + 30
        while source.commit_status().pending:
            assert time.monotonic() < deadline, source.commit_status()
            source.poll(100, 0.1)
        assert [r for r in refusals if r != "RebalanceInProgressError"] == [], refusals
        committed = source.consumer.committed(TopicPartition(topic, partition))
        assert committed == 20
    finally:
        source.close()
