"""How the Kafka adapters read kafka-python's failures (the real exception classes, no broker).

The end-to-end behaviour (a refused record given up, an outage reported once) is tested on real
brokers in tests/integration/test_record_limits.py and test_reliability.py; these pin the
classification and the logging rules those tests rely on.
"""

from __future__ import annotations

import logging

import pytest
from kafka import errors

from streamscore.adapters.kafka_client import CONNECTION_NOISE, BrokerWatch
from streamscore.adapters.kafka_sink import failure_kind


@pytest.mark.parametrize(
    "exc",
    [
        errors.MessageSizeTooLargeError(),
        errors.RecordListTooLargeError(),
        errors.InvalidRecordError(),
        errors.CorruptRecordError(),
        errors.InvalidTimestampError(),
        errors.UnsupportedForMessageFormatError(),
        errors.TopicAuthorizationFailedError("user-scores"),
        errors.InvalidTopicError(),
    ],
)
def test_refusals_of_the_record_itself_are_permanent(exc: Exception) -> None:
    assert failure_kind(exc) == "permanent"


@pytest.mark.parametrize(
    "exc",
    [
        errors.KafkaTimeoutError("Expiring 3 record(s)"),
        errors.KafkaConnectionError("111 ECONNREFUSED"),
        errors.NotLeaderForPartitionError(),
        errors.LeaderNotAvailableError(),
        errors.NotEnoughReplicasError(),
        errors.NotEnoughReplicasAfterAppendError(),
        errors.RequestTimedOutError(),
        errors.UnknownTopicOrPartitionError(),
        errors.NetworkExceptionError(),
        errors.OutOfOrderSequenceNumberError(),
        # what kafka-python gives the other records of a batch with one invalid record
        errors.KafkaError("Failed to append record because it was part of a batch which had"),
    ],
)
def test_failures_that_may_pass_are_transient(exc: Exception) -> None:
    assert failure_kind(exc) == "transient"


def test_no_idempotent_writes_at_all_is_fatal() -> None:
    assert failure_kind(errors.ClusterAuthorizationFailedError()) == "fatal"


def test_the_watch_says_once_that_kafka_is_down_and_once_that_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    watch = BrokerWatch("k1:9092,k2:9092", clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="streamscore.kafka")
    watch.answered()  # nothing to report while it answers
    for cause in ("refused", "timeout", "refused"):
        watch.failed("flush producer", cause)
        now[0] += 2.5
    assert watch.down and watch.outages == 1
    watch.answered()
    watch.answered()
    assert not watch.down
    said = [r.getMessage() for r in caplog.records if r.name == "streamscore.kafka"]
    assert len(said) == 2, said
    assert said[0].startswith("Kafka at k1:9092,k2:9092 is unreachable (flush producer: refused)")
    assert said[1] == "Kafka at k1:9092,k2:9092 is back: it answered again after 7.5s"


def _record(msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("kafka.net.manager", level, __file__, 1, msg, args, None)


def test_kafka_pythons_connection_noise_is_thinned_and_dropped_during_an_outage() -> None:
    refused = errors.KafkaConnectionError("111 ECONNREFUSED")
    noise = [
        _record("Connection failed: %s", refused),
        _record("%s: socket disconnected", "<transport>"),
        _record("No node available for metadata refresh - backoff/retry", level=logging.WARNING),
        _record("Error sending %s to node %s [%s]", "FindCoordinatorRequest", 1, refused),
    ]
    assert all(CONNECTION_NOISE.is_noise(r) for r in noise)
    other = [
        _record("Connection failed: %s", errors.SaslAuthenticationFailedError("bad password")),
        _record("Connection failed: %s", refused, level=logging.DEBUG),
        _record("Heartbeat failed for group %s: %s", "g", errors.RebalanceInProgressError()),
    ]
    assert not any(CONNECTION_NOISE.is_noise(r) for r in other)
    assert all(CONNECTION_NOISE.filter(r) for r in other)  # never dropped

    CONNECTION_NOISE.next_pass = 0.0
    passed = [CONNECTION_NOISE.filter(r) for r in noise]
    assert passed == [True, False, False, False]  # one per minute while Kafka answers
    watch = BrokerWatch("k:9092")
    watch.failed("offsets lookup", refused)
    CONNECTION_NOISE.next_pass = 0.0
    assert not any(CONNECTION_NOISE.filter(r) for r in noise)  # the watch said it already
    watch.answered()
    assert CONNECTION_NOISE.filter(noise[0])


def test_a_late_answer_to_a_request_sent_before_the_brokers_answered_is_no_new_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A commit sent before an outage can fail only once a flush has already got through:
    its connection died back then, and kafka-python hands over the error now."""
    now = [0.0]
    watch = BrokerWatch("k:9092", clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="streamscore.kafka")
    sent_before = watch.clock()
    now[0] = 5.0
    watch.failed("flush producer", "refused")
    now[0] = 30.0
    watch.answered()
    watch.failed("commit offsets", "socket disconnected", sent_at=sent_before)
    assert not watch.down and watch.outages == 1
    watch.failed("commit offsets", "socket disconnected", sent_at=watch.clock())
    assert watch.down and watch.outages == 2
