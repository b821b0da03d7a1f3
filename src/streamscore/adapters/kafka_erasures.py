"""The ``user-erasures`` topic, read without a consumer group, and ``streamscore forget``.

The scorer reads partition p of the erasure topic when it owns partition p of the input (so
both topics need the same partition count and the same key partitioning: the Java client's
murmur2, which ``forget`` uses too). Positions come from the state store, where they are
saved with the deletions they cover; the consumer is only told where to read, so it is
assigned partitions by hand and never commits.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, SaslAuthenticationFailedError

from streamscore.adapters.kafka_client import (
    BROKER_WAIT_S,
    UNREACHABLE,
    bounded,
    client_config,
    unreachable_error,
    watch_auth_failures,
)
from streamscore.adapters.kafka_sink import KeyHashPartitioner
from streamscore.config import Settings
from streamscore.core.erasure import encode_request
from streamscore.errors import ConfigError, TransientError
from streamscore.ports import SourceRecord

log = logging.getLogger("streamscore.kafka")
# A read that found nothing is not repeated for this long: a poll of the erasure topic costs
# the scorer 0.2-0.5 ms of CPU, a good share of a small batch's fixed cost, and a request is
# picked up at most this much later (a read or two after it was produced, before).
IDLE_READ_EVERY_S = 0.1


class KafkaErasureSource:
    """Reads the erasure topic's partitions from the offsets it is given."""

    def __init__(
        self,
        settings: Settings,
        partitions: int,
        *,
        idle_read_every_s: float = IDLE_READ_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topic = settings.erasures_topic
        self._partitions = partitions
        self._next: dict[int, int] = {}  # where the consumer will read next, as we told it
        self.idle_read_every_s = idle_read_every_s
        self.clock = clock
        self._quiet_until = float("-inf")  # after a read that found nothing
        try:
            with watch_auth_failures() as auth:
                self.consumer = KafkaConsumer(
                    group_id=None, enable_auto_commit=False, **client_config(settings)
                )
        except (*UNREACHABLE, SaslAuthenticationFailedError) as exc:
            raise unreachable_error(settings, auth.failure or exc) from None

    def partitions(self) -> int:
        return self._partitions

    def read(self, positions: Mapping[int, int], max_records: int) -> list[SourceRecord]:
        """What is there from these positions on; fetching is asynchronous, so a request
        shows up one or two reads after it was produced. After a read that found nothing,
        the next ``idle_read_every_s`` return nothing without asking Kafka, unless the
        positions changed."""
        moved = set(positions) != set(self._next) or any(
            self._next.get(p) != o for p, o in positions.items()
        )
        if not moved and self.clock() < self._quiet_until:
            return []
        try:
            if set(positions) != set(self._next):
                self.consumer.assign([TopicPartition(self.topic, p) for p in positions])
                self._next = {}
            for p, offset in positions.items():
                if self._next.get(p) != offset:
                    self.consumer.seek(TopicPartition(self.topic, p), offset)
                    self._next[p] = offset
            if not positions:
                return []
            batches = self.consumer.poll(timeout_ms=0, max_records=max_records)
        except KafkaError as exc:
            self._next = {}  # seek again next time
            raise TransientError(f"reading {self.topic} failed: {exc}") from exc
        out: list[SourceRecord] = []
        for tp, messages in batches.items():
            for m in messages:
                if self._next.get(tp.partition) != m.offset:
                    continue  # fetched before a seek
                self._next[tp.partition] = m.offset + 1
                if m.value is not None:
                    out.append(
                        SourceRecord(tp.topic, tp.partition, m.offset, m.value, m.timestamp, m.key)
                    )
        if not batches:
            self._quiet_until = self.clock() + self.idle_read_every_s
        return out

    def close(self) -> None:
        self.consumer.close(autocommit=False, timeout_ms=int(BROKER_WAIT_S * 1000))


def topic_partitions(consumer: KafkaConsumer, topic: str) -> int:
    """How many partitions ``topic`` has (0 when it does not exist)."""
    parts = bounded(f"looking up {topic}", lambda: consumer.partitions_for_topic(topic))
    return len(parts) if parts else 0


def publish_erasures(settings: Settings, user_ids: Sequence[str]) -> list[tuple[str, str, int]]:
    """Publish one erasure request per user, keyed by the user id, as of now; returns
    (user id, request id, partition) of each once the broker has them all."""
    now_ms = time.time_ns() // 1_000_000
    try:
        with watch_auth_failures() as auth:
            producer = KafkaProducer(
                acks="all",
                partitioner=KeyHashPartitioner(),
                max_block_ms=int(BROKER_WAIT_S * 1000),  # a topic that does not exist
                **client_config(settings),
            )
    except (*UNREACHABLE, SaslAuthenticationFailedError) as exc:
        raise unreachable_error(settings, auth.failure or exc) from None
    try:
        futures = []
        for uid in user_ids:
            request_id = uuid.uuid4().hex
            value = encode_request(uid, request_id, now_ms)
            future = producer.send(settings.erasures_topic, key=uid.encode(), value=value)
            futures.append((uid, request_id, future))
        producer.flush(timeout=BROKER_WAIT_S)
        out = []
        for uid, request_id, future in futures:
            meta = future.get(timeout=BROKER_WAIT_S)
            out.append((uid, request_id, int(meta.partition)))
        return out
    except KafkaError as exc:
        raise ConfigError(
            f"could not publish erasure requests to {settings.erasures_topic}: {exc}; check "
            "that the topic exists (scripts/stack up creates it) or set "
            "STREAMSCORE_ERASURES_TOPIC"
        ) from None
    finally:
        producer.close(timeout=BROKER_WAIT_S)
