"""No record can stop progress (issue 10, part 1), on the real broker and Redis.

- an input record of 900 KB (its dead letter, raw bytes in base64, used to exceed the producer's
  1 MB request limit and the sink retried the flush for ever) and one of 2 MB on a topic that
  allows it (more than the consumer's ``max_partition_fetch_bytes``): dead-lettered with a
  bounded copy of their bytes, everything committed, the events around them scored;
- an output the broker refuses for size (a dead-letter topic with a small ``max.message.bytes``,
  an alerts topic that takes no alert at all): given up for good, with a small dead letter or
  a log line per ``on_undeliverable_output``, the broker's error in the log, no retry loop, no
  other output lost (kafka-python's idempotent producer fails every later record after such a
  refusal until it is replaced);
- tombstones: counted, logged and committed past, even at the end of a partition.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from devstack import GroupProgress, consume, free_port, produce
from streamscore.core.records import DLQ_RAW_MAX_BYTES
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event

from .conftest import SHARED
from .helpers import env_for, scrape, start_scorer, stop, wait_for

pytestmark = pytest.mark.integration

BIG_RECORDS = {"max_request_size": 3 * 1024 * 1024}  # producer options for 2 MB records
REPRO = (
    b'{"event_id":"e1","user_id":"u1","type":"page_view","ts":1767225600000,"pad":"'
    + b"x" * 900_000
    + b'"}'
)


def _events(users: int, days: float, seed: int) -> list[tuple[bytes | None, bytes]]:
    out: list[tuple[bytes | None, bytes]] = []
    for e in ShopSimulator(SimulationConfig(users=users, days=days, seed=seed)).events():
        assert isinstance(e, dict)
        out.append((str(e["user_id"]).encode(), encode_event(e)))
    return out


def _set_topic_config(topic: str, **config: str) -> None:
    """Set topic configs (e.g. max.message.bytes) and wait until the broker reports them."""
    admin = KafkaAdminClient(**SHARED)
    try:
        wanted = {k.replace("_", "."): v for k, v in config.items()}
        # kafka-python checks names against the topic's listed configs, which a topic created
        # a moment ago may not list yet; the broker validates them anyway.
        answer = admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs=wanted)],
            raise_on_unknown=False,
        )
        assert answer == {"topic": {topic: "OK"}}, answer
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs=None)
        deadline = time.monotonic() + 30
        while True:
            found = admin.describe_configs([resource], config_filter="modified")["topic"][topic]
            if {k: found.get(k, {}).get("value") for k in wanted} == wanted:
                return
            assert time.monotonic() < deadline, f"{topic} still has {found}"
            time.sleep(0.2)
    finally:
        admin.close()


COUNTERS = (
    "streamscore_records_consumed_total",
    "streamscore_tombstones_total",
    "streamscore_undeliverable_outputs_total",
    "streamscore_dead_letters_total",
)


def _run_until_committed(
    names: dict[str, str], log: Path, timeout_s: float = 120, **settings: object
) -> tuple[str, dict[str, float]]:
    """Start a scorer, wait until it has committed the whole input topic and exported the
    last batch's counters, read them, stop it."""
    port = free_port()
    progress = GroupProgress(SHARED, names["kafka_group_id"], names["input_topic"])
    proc = start_scorer(env_for(names, metrics_port=port, **settings), log)
    try:
        _wait_committed(progress, proc, log, timeout_s)
        total = sum(progress.ends().values())
        # The loop exports a batch's counters after committing it: wait until every record
        # is counted (as consumed or as a tombstone) and two reads agree.
        last: dict[str, float] = {}

        def settled() -> bool:
            nonlocal last
            now = {name: sum(scrape(port, name).values()) for name in COUNTERS}
            done = now == last and now[COUNTERS[0]] + now[COUNTERS[1]] >= total
            last = now
            return done

        wait_for("the counters of the last batch", settled, 30, {log: proc}, interval_s=0.3)
        counters = last
    finally:
        progress.close()
        code = stop(proc)
    text = log.read_text()
    assert code == 0, text[-4000:]
    return text, counters


def _wait_committed(
    progress: GroupProgress, proc: subprocess.Popen[bytes], log: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"scorer exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        if progress.fraction() >= 1.0:
            return
        time.sleep(0.1)
    raise AssertionError(
        f"not everything committed in {timeout_s}s (committed {progress.committed()}, ends "
        f"{progress.ends()}):\n{log.read_text()[-4000:]}"
    )


def _check_truncated_copy(letter: dict[str, Any], value: bytes) -> None:
    assert base64.b64decode(letter["raw"]) == value[:DLQ_RAW_MAX_BYTES]
    assert letter["raw_size"] == len(value)
    assert letter["raw_sha256"] == hashlib.sha256(value).hexdigest()
    assert letter["raw_truncated"] is True


@pytest.fixture
def events() -> list[tuple[bytes | None, bytes]]:
    return _events(users=60, days=20, seed=21)


def test_a_900_kb_record_is_dead_lettered_truncated_and_the_stream_goes_on(
    names: dict[str, str], tmp_path: Path, events: list[tuple[bytes | None, bytes]]
) -> None:
    """The issue's repro: it used to stop the scorer for ever, restart after restart."""
    half = len(events) // 2
    produce(SHARED, names["input_topic"], [*events[:half], (b"u1", REPRO), *events[half:]])
    text, counters = _run_until_committed(names, tmp_path / "scorer.log")
    assert "flush producer failed" not in text
    dlq = consume(SHARED, names["dlq_topic"])
    assert [d["error_type"] for d in dlq] == ["too_large"], dlq
    _check_truncated_copy(dlq[0], REPRO)
    assert len(orjson.dumps(dlq[0])) < 40_000
    scored = {s["user_id"] for s in consume(SHARED, names["scores_topic"])}
    assert scored == {k.decode() for k, _ in events if k is not None}
    assert counters["streamscore_dead_letters_total"] == 1


def test_a_2_mb_record_beyond_the_consumers_fetch_limit_does_not_stall_its_partition(
    names: dict[str, str], tmp_path: Path, events: list[tuple[bytes | None, bytes]]
) -> None:
    """2 MB is twice kafka-python's max_partition_fetch_bytes (1 MB): KIP-74 fetches still
    return a partition's first batch whole, so the record arrives, alone, and is refused."""
    topic = names["input_topic"]
    _set_topic_config(topic, max_message_bytes=str(3 * 1024 * 1024))
    big = b'{"event_id":"big","user_id":"u2","type":"page_view","ts":1767225600000,"x":"'
    big += b"y" * (2 * 1024 * 1024) + b'"}'
    third = len(events) // 3
    produce(
        SHARED,
        topic,
        [*events[:third], (b"u2", big), *events[third:], (b"u2", big), (None, big)],
        **BIG_RECORDS,
    )
    _, counters = _run_until_committed(names, tmp_path / "scorer.log")
    dlq = consume(SHARED, names["dlq_topic"])
    assert sorted(d["error_type"] for d in dlq) == ["too_large"] * 3, dlq
    for letter in dlq:
        _check_truncated_copy(letter, big)
    assert len({(d["source"]["partition"], d["source"]["offset"]) for d in dlq}) == 3
    scored = {s["user_id"] for s in consume(SHARED, names["scores_topic"])}
    assert scored == {k.decode() for k, _ in events if k is not None}
    assert counters["streamscore_dead_letters_total"] == 3


@pytest.mark.parametrize("policy", ["dead_letter", "log"])
def test_a_dead_letter_the_broker_refuses_for_size_is_given_up_not_retried(
    names: dict[str, str],
    tmp_path: Path,
    events: list[tuple[bytes | None, bytes]],
    policy: str,
) -> None:
    """The dead-letter topic takes 3,000 bytes; the dead letter of a 10 KB non-JSON record
    is about 14 KB. The broker refuses it (MessageSizeTooLargeError): per the setting a small
    letter names it, or a log line does; the batch and the stream go on."""
    _set_topic_config(names["dlq_topic"], max_message_bytes="3000")
    garbage = b"\x00not json " + b"z" * 10_000
    half = len(events) // 2
    produce(SHARED, names["input_topic"], [*events[:half], (b"u1", garbage), *events[half:]])
    log = tmp_path / "scorer.log"
    text, counters = _run_until_committed(names, log, on_undeliverable_output=policy)
    assert "flush producer failed" not in text
    refusals = [line for line in text.splitlines() if "Kafka refused a" in line]
    assert len(refusals) == 1, refusals
    assert "MessageSizeTooLargeError" in refusals[0]  # the broker's error, logged
    assert "dead letter of" in refusals[0] and "offset" in refusals[0]  # its source
    assert counters["streamscore_undeliverable_outputs_total"] == 1
    dlq = consume(SHARED, names["dlq_topic"])
    if policy == "log":
        assert dlq == [] and "skipped (on_undeliverable_output=log)" in refusals[0]
    else:
        assert [d["error_type"] for d in dlq] == ["undeliverable_output"], dlq
        letter = dlq[0]
        assert letter["source"]["topic"] == names["input_topic"]
        assert letter["raw_size"] == len(garbage)
        assert letter["raw_sha256"] == hashlib.sha256(garbage).hexdigest()
        assert "MessageSizeTooLargeError" in letter["error"] and "invalid_json" in letter["error"]
        assert letter["undelivered"]["topic"] == names["dlq_topic"]
    scored = {s["user_id"] for s in consume(SHARED, names["scores_topic"])}
    assert scored == {k.decode() for k, _ in events if k is not None}


def test_an_output_topic_that_refuses_every_record_loses_no_other_output(
    names: dict[str, str], tmp_path: Path
) -> None:
    """No churn alert fits its topic (150 bytes): every alert is given up with a letter, and
    the scores and segment changes sent in the same flushes all arrive, although
    kafka-python's producer fails everything after the first refusal until it is replaced."""
    _set_topic_config(names["alerts_topic"], max_message_bytes="150")
    events = _events(users=300, days=60, seed=13)
    produce(SHARED, names["input_topic"], events)
    text, counters = _run_until_committed(names, tmp_path / "scorer.log", timeout_s=180)
    assert "flush producer failed" not in text
    assert "replacing the Kafka producer" in text
    assert consume(SHARED, names["alerts_topic"]) == []
    letters = consume(SHARED, names["dlq_topic"])
    assert letters and all(d["error_type"] == "undeliverable_output" for d in letters)
    assert {d["undelivered"]["topic"] for d in letters} == {names["alerts_topic"]}
    assert all(d["source"] is None for d in letters)
    # Letters are at-least-once, like every output (a resent flush may repeat one): one id
    # per refused alert.
    assert counters["streamscore_undeliverable_outputs_total"] == len({d["id"] for d in letters})
    # Every user scored as of their last event: no score was lost with the refused alerts.
    last: dict[str, str] = {}
    for key, value in events:
        assert key is not None
        last[key.decode()] = max(last.get(key.decode(), ""), str(orjson.loads(value)["event_id"]))
    scores = consume(SHARED, names["scores_topic"])
    assert {s["user_id"] for s in scores} == set(last)
    assert consume(SHARED, names["segments_topic"])


def test_tombstones_are_counted_logged_and_committed_past(
    names: dict[str, str], tmp_path: Path, events: list[tuple[bytes | None, bytes]]
) -> None:
    """Null values (a compacting producer's deletes) carry no event; they end the input here,
    so nothing after them would commit them if the source did not."""
    users = sorted({k for k, _ in events if k is not None})
    tombstones: list[tuple[bytes | None, bytes]] = [(u, None) for u in users[:12]]  # type: ignore[misc]
    half = len(events) // 2
    produce(SHARED, names["input_topic"], [*events[:half], *tombstones, *events[half:]])
    produce(SHARED, names["input_topic"], tombstones)  # the last records of their partitions
    text, counters = _run_until_committed(names, tmp_path / "scorer.log")
    assert counters["streamscore_tombstones_total"] == 2 * len(tombstones)
    assert "skipping tombstone" in text and "null value" in text
    assert consume(SHARED, names["dlq_topic"]) == []
