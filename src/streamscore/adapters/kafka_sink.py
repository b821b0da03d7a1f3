"""The output topics through one idempotent producer, and what happens to a record Kafka
will not take.

A failed delivery is one of three kinds (``failure_kind``), by kafka-python 3.x's exception:

- **permanent** for that record: retrying cannot help. ``MessageSizeTooLargeError`` (over the
  producer's ``max_request_size``, raised by ``send`` itself, or over the topic's
  ``max.message.bytes``, from the broker), ``RecordListTooLargeError``, ``InvalidRecordError``
  (e.g. a null key on a compacted topic), ``CorruptRecordError``, ``InvalidTimestampError``,
  ``UnsupportedForMessageFormatError``, ``TopicAuthorizationFailedError``,
  ``InvalidTopicError``. The record is dead-lettered (a small ``undeliverable_output`` letter
  naming it and the broker's error) or logged with its source and skipped, per
  ``on_undeliverable_output``; the batch goes on either way.
- **fatal** for the process: ``ClusterAuthorizationFailedError`` (no idempotent writes at
  all). Nothing can be delivered, so the service stops with an error naming the ACLs.
- **transient**: everything else, retriable or not (timeouts, lost connections, not leader,
  not enough replicas, expired batches, records failed alongside an invalid one): resent, and
  after a few rounds the flush raises ``TransientError``, which the runtime retries.

kafka-python 3.0.12 adds one twist, seen against a real broker: once the broker refuses a
batch of an idempotent producer with a non-retriable error, the producer enters a fatal
state and fails every later record with that same error, whatever the record. So after such
a refusal the producer is replaced, and the records that failed get a second opinion from a
plain (non-idempotent, one request at a time) producer: only what the broker refuses there
too is given up.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from kafka import KafkaProducer
from kafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordError,
    InvalidRecordError,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    SaslAuthenticationFailedError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)
from kafka.partitioner import DefaultPartitioner, Partitioner
from kafka.partitioner.default import murmur2

from streamscore.adapters.kafka_client import (
    BROKER_WAIT_S,
    UNREACHABLE,
    BrokerWatch,
    client_config,
    unreachable_error,
    watch_auth_failures,
)
from streamscore.config import Settings
from streamscore.core.records import (
    TOPIC_ALERTS,
    TOPIC_DLQ,
    TOPIC_SCORES,
    TOPIC_SEGMENTS,
    TOPIC_TRAINING,
    undeliverable_letter,
)
from streamscore.core.values import Output
from streamscore.errors import ConfigError, TransientError

log = logging.getLogger("streamscore.kafka")

PERMANENT = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidRecordError,
    CorruptRecordError,
    InvalidTimestampError,
    UnsupportedForMessageFormatError,
    TopicAuthorizationFailedError,
    InvalidTopicError,
)
FATAL = (ClusterAuthorizationFailedError,)
FailureKind = Literal["permanent", "fatal", "transient"]
# A flush waits in slices this long; between them a TCP check tells an unreachable cluster
# from a slow one, so an outage is reported within seconds rather than after BROKER_WAIT_S.
FLUSH_SLICE_S = 1.0
# Undeliverable records logged one by one per flush; beyond that, one line says how many.
LOGGED_PER_FLUSH = 5


def failure_kind(exc: BaseException) -> FailureKind:
    """What a delivery failure means for the record (see the module docstring)."""
    if isinstance(exc, FATAL):
        return "fatal"
    if isinstance(exc, PERMANENT):
        return "permanent"
    return "transient"


class KeyHashPartitioner(Partitioner):  # type: ignore[misc]
    """Kafka's default mapping of a key to a partition (murmur2), each key hashed once.

    kafka-python hashes every keyed record in pure Python (~2 µs) and sorts the topic's
    partition list each time. A batch sends several records per user (a score, a segment
    change, an alert) and the same users come back batch after batch, so the hash of a key
    is remembered; the cache is bounded and simply starts over when full. Partitions are
    the same as the default partitioner's, which consumers keyed on user_id rely on.
    """

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._hashes: dict[bytes, int] = {}
        self._unkeyed = DefaultPartitioner()

    def partition(  # noqa: PLR0917 - kafka-python calls it with these six, positionally
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: bytes | None,
        cluster: Any,
    ) -> int:
        """The partition of ``serialized_key`` among the topic's partitions."""
        if serialized_key is None:
            return int(self._unkeyed.partition(topic, key, None, value, serialized_value, cluster))
        h = self._hashes.get(serialized_key)
        if h is None:
            if len(self._hashes) >= self.max_keys:
                self._hashes.clear()
            h = self._hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        return h % len(partitions)  # partition ids are always 0 .. n-1


@dataclass(slots=True)
class _Pending:
    """One output record on its way: its bytes, and the future (or error) of its send."""

    output: Output
    topic: str
    key: bytes | None
    value: bytes
    result: Any
    notice: bool = False  # an undeliverable_output letter: never replaced by another

    def error(self) -> BaseException | None:
        """None once delivered; the failure once failed; raises nothing."""
        if isinstance(self.result, BaseException):
            return self.result
        if self.result.succeeded():
            return None
        exc = self.result.exception
        return exc if isinstance(exc, BaseException) else KafkaError(str(exc))


class KafkaSink:
    """The output topics (training-examples too) through one idempotent producer (acks=all)."""

    def __init__(
        self,
        settings: Settings,
        *,
        watch: BrokerWatch | None = None,
        resend_attempts: int = 3,
        on_undeliverable: Callable[[str], None] | None = None,
    ) -> None:
        self.topics = {
            TOPIC_SCORES: settings.scores_topic,
            TOPIC_ALERTS: settings.alerts_topic,
            TOPIC_SEGMENTS: settings.segments_topic,
            TOPIC_DLQ: settings.dlq_topic,
            TOPIC_TRAINING: settings.training_topic,
        }
        self.settings = settings
        self.watch = watch or BrokerWatch(settings.kafka_bootstrap_servers)
        self.resend_attempts = resend_attempts
        self.on_undeliverable = settings.on_undeliverable_output
        self.undeliverable: Counter[str] = Counter()  # by output topic (logical name)
        self.on_undeliverable_record = on_undeliverable  # called with the logical topic
        self.producers_replaced = 0
        self._pending: list[_Pending] = []
        self._second: KafkaProducer | None = None
        self.producer = self._new_producer(idempotent=True)

    def _new_producer(self, *, idempotent: bool) -> KafkaProducer:
        options: dict[str, Any] = {
            "acks": "all",
            "enable_idempotence": idempotent,
            "max_block_ms": int(BROKER_WAIT_S * 1000),  # a send waiting for metadata
            "partitioner": KeyHashPartitioner(),
            **client_config(self.settings),
        }
        if idempotent:
            options.update(linger_ms=5, batch_size=256 * 1024)
            options["max_in_flight_requests_per_connection"] = 5
        else:  # the second opinion: one request at a time, so retries cannot reorder
            options.update(linger_ms=0, max_in_flight_requests_per_connection=1)
        try:
            with watch_auth_failures() as auth:
                return KafkaProducer(**options)
        except (*UNREACHABLE, SaslAuthenticationFailedError) as exc:
            raise unreachable_error(self.settings, auth.failure or exc) from None

    # -- sending ----------------------------------------------------------------------------

    def send(self, outputs: Iterable[Output]) -> None:
        stuck: BaseException | None = None
        for o in outputs:
            topic = self.topics[o.topic]
            key = o.key.encode() if o.key else None
            value = orjson.dumps(o.value)
            # A send blocks while the topic's metadata is unknown; once one has waited the
            # full BROKER_WAIT_S in an outage, the rest of the batch fails at once.
            result = stuck or self._send(self.producer, topic, key, value)
            if isinstance(result, KafkaTimeoutError):
                stuck = result
            self._pending.append(_Pending(o, topic, key, value, result))

    @staticmethod
    def _send(producer: KafkaProducer, topic: str, key: bytes | None, value: bytes) -> Any:
        try:
            return producer.send(topic, key=key, value=value)
        except KafkaError as exc:  # MessageSizeTooLargeError (max_request_size), timeouts
            return exc

    def flush(self) -> None:
        """Wait for every pending record; resend what failed for now, settle what failed for
        good; raise ``TransientError`` if records are still undelivered after a few rounds."""
        for _ in range(self.resend_attempts + 1):
            if not self._pending:
                return
            self._await(self.producer)
            failed = [(p, e) for p in self._pending if (e := p.error()) is not None]
            if len(failed) < len(self._pending):
                self.watch.answered()
            self._pending = self._settle(failed) if failed else []
        if self._pending:
            raise TransientError(
                f"{len(self._pending)} output records could not be delivered to Kafka "
                f"(last error: {self._pending[0].error()!r})"
            )

    def _await(self, producer: KafkaProducer) -> None:
        """``producer.flush``, bounded by BROKER_WAIT_S, failing early when no broker is up."""
        deadline = time.monotonic() + BROKER_WAIT_S
        while True:
            left = deadline - time.monotonic()
            try:
                producer.flush(timeout=max(min(FLUSH_SLICE_S, left), 0.01))
                return
            except KafkaTimeoutError as exc:
                if left <= FLUSH_SLICE_S:
                    self.watch.failed("flush producer", f"no answer in {BROKER_WAIT_S:.0f}s")
                    raise TransientError(
                        f"Kafka producer flush got no answer in {BROKER_WAIT_S:.0f}s"
                    ) from exc
                if not self.watch.reachable():
                    self.watch.failed("flush producer", "no bootstrap server accepts connections")
                    raise TransientError(
                        f"Kafka at {self.watch.servers} is unreachable (no bootstrap server "
                        "accepts connections)"
                    ) from exc
            except KafkaError as exc:
                # kafka-python 3.0.12's flush can see a batch that is being split (after
                # MessageSizeTooLargeError) as "Future not done": wait again.
                if left <= FLUSH_SLICE_S:
                    raise TransientError(f"Kafka producer flush failed: {exc}") from exc
                time.sleep(0.01)

    # -- failures ---------------------------------------------------------------------------

    def _settle(self, failed: list[tuple[_Pending, BaseException]]) -> list[_Pending]:
        """Sort failed records into given up and resent; returns the new pending list."""
        for _, exc in failed:
            if failure_kind(exc) == "fatal":
                raise ConfigError(
                    f"Kafka refuses every write from this producer ({type(exc).__name__}: "
                    f"{exc}); grant it Write on the output topics and IdempotentWrite on the "
                    "cluster (the ACLs of STREAMSCORE_KAFKA_SASL_USERNAME)"
                )
        permanent = [(p, e) for p, e in failed if failure_kind(e) == "permanent"]
        retry = [p for p, e in failed if failure_kind(e) == "transient"]
        # Refused by send() itself (over max_request_size): certain, and the producer is fine.
        refused = [(p, e) for p, e in permanent if p.result is e]
        suspects = [p for p, e in permanent if p.result is not e]
        if self._poisoned():
            self._replace_producer(next((e for p, e in failed if p.result is not e), None))
        if suspects:
            confirmed, delivered, again = self._second_opinion(suspects)
            refused += confirmed
            retry += again
            if delivered:
                self.watch.answered()
        return [self._resend(p) for p in retry] + self._give_up(refused)

    def _resend(self, p: _Pending) -> _Pending:
        p.result = self._send(self.producer, p.topic, p.key, p.value)
        return p

    def _poisoned(self) -> bool:
        """True when the producer fails every record since a refused batch (kafka-python)."""
        manager = getattr(self.producer, "_transaction_manager", None)
        check = getattr(manager, "has_fatal_error", None)
        return bool(check()) if callable(check) else True

    def _replace_producer(self, cause: BaseException | None) -> None:
        log.warning(
            "replacing the Kafka producer: after a refused batch (%r) kafka-python's "
            "idempotent producer fails every record",
            cause,
        )
        self.producer.close(timeout=0)
        self.producer = self._new_producer(idempotent=True)
        self.producers_replaced += 1

    def _second_opinion(
        self, suspects: list[_Pending]
    ) -> tuple[list[tuple[_Pending, BaseException]], list[_Pending], list[_Pending]]:
        """Send suspects through a plain producer: (refused there too, delivered, retry)."""
        if self._second is None:
            self._second = self._new_producer(idempotent=False)
        trial = [(p, self._send(self._second, p.topic, p.key, p.value)) for p in suspects]
        try:
            self._await(self._second)
        except TransientError:
            return [], [], suspects
        refused, delivered, retry = [], [], []
        for p, result in trial:
            p.result = result
            exc = p.error()
            if exc is None:
                delivered.append(p)
            elif failure_kind(exc) == "permanent":
                refused.append((p, exc))
            else:
                retry.append(p)
        return refused, delivered, retry

    def _give_up(self, refused: list[tuple[_Pending, BaseException]]) -> list[_Pending]:
        """Log each refused record; dead-letter it (per the setting); returns the letters."""
        letters: list[_Pending] = []
        for i, (p, exc) in enumerate(refused):
            self.undeliverable[p.output.topic] += 1
            if self.on_undeliverable_record is not None:
                self.on_undeliverable_record(p.output.topic)
            letter = self.on_undeliverable == "dead_letter" and not p.notice
            if i < LOGGED_PER_FLUSH:
                log.error(
                    "Kafka refused a %s record for good: %s: %s (%s); %s",
                    p.topic,
                    type(exc).__name__,
                    exc,
                    _describe(p),
                    "a dead letter says so"
                    if letter
                    else "skipped"
                    + (" (on_undeliverable_output=log)" if not p.notice else ", it was a notice"),
                )
            if letter:
                notice = undeliverable_letter(
                    topic=p.topic,
                    value=p.output.value,
                    key=p.output.key or None,
                    encoded=p.value,
                    reason=f"{type(exc).__name__}: {exc}",
                    now_ms=time.time_ns() // 1_000_000,
                    of_dead_letter=p.output.topic == TOPIC_DLQ,
                )
                out = Output(TOPIC_DLQ, p.output.key, notice)
                topic = self.topics[TOPIC_DLQ]
                key, value = p.key, orjson.dumps(notice)
                result = self._send(self.producer, topic, key, value)
                letters.append(_Pending(out, topic, key, value, result, notice=True))
        if len(refused) > LOGGED_PER_FLUSH:
            log.error(
                "... and %d more records refused for good in this flush (%s)",
                len(refused) - LOGGED_PER_FLUSH,
                dict(Counter(p.topic for p, _ in refused[LOGGED_PER_FLUSH:])),
            )
        return letters

    def close(self) -> None:
        """Close without retrying: every batch flushes before it commits.

        Outputs still pending here belong to a batch abandoned uncommitted during an outage,
        so a restart produces them again; waiting out the outage would only delay the stop.
        """
        if self._pending:
            log.warning(
                "closing with %d outputs unconfirmed; a restart sends them again",
                len(self._pending),
            )
        wait = 0 if self.watch.down else 5
        self.producer.close(timeout=wait)
        if self._second is not None:
            self._second.close(timeout=wait)


def _describe(p: _Pending) -> str:
    """Where a refused record came from, for the log."""
    value = p.output.value
    what = f"id {value.get('id')}, {len(p.value)} bytes"
    source = value.get("source")
    if isinstance(source, dict):
        return (
            f"{what}, dead letter of {source.get('topic')} partition {source.get('partition')} "
            f"offset {source.get('offset')}"
        )
    return f"{what}, user {p.output.key}" if p.output.key else what
