"""Kafka client chores shared by the tests and the benchmarks: produce, read back, watch a
consumer group's progress. Every function takes kafka-python keyword arguments (at least
``bootstrap_servers``), so it serves the shared stack and private brokers alike.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any


def produce(
    client: Mapping[str, Any],
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    **producer: Any,
) -> int:
    """Produce (key, value) records with acks=all and wait for every one; returns the count."""
    from kafka import KafkaProducer

    options = {"acks": "all", "linger_ms": 5, **producer, **client}
    p = KafkaProducer(**options)
    n = 0
    try:
        for key, value in records:
            p.send(topic, key=key, value=value)
            n += 1
        p.flush(timeout=120)
    finally:
        p.close()
    return n


def read_topic(
    client: Mapping[str, Any], topic: str, start: Mapping[int, int] | None = None
) -> list[Any]:
    """Every record of a topic (from ``start`` offsets per partition) up to its end now, in
    offset order per partition (kafka-python ``ConsumerRecord``s)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(enable_auto_commit=False, fetch_max_bytes=32 * 1024**2, **client)
    try:
        parts = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        ends = consumer.end_offsets(parts)
        begin = {tp: (start or {}).get(tp.partition, 0) for tp in parts}
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, begin[tp])
        by_partition: dict[int, list[Any]] = {tp.partition: [] for tp in parts}
        remaining = {tp for tp in parts if ends[tp] > begin[tp]}
        deadline = time.monotonic() + 120
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: could not read to the end in 120s")
            for tp, msgs in consumer.poll(timeout_ms=500, max_records=50_000).items():
                by_partition[tp.partition].extend(m for m in msgs if m.offset < ends[tp])
                if msgs and msgs[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        return [m for p in sorted(by_partition) for m in by_partition[p]]
    finally:
        consumer.close()


def consume(client: Mapping[str, Any], topic: str) -> list[dict[str, Any]]:
    """Every JSON value of a topic up to its end now (partition by partition, offset order)."""
    import orjson

    return [orjson.loads(m.value) for m in read_topic(client, topic)]


class GroupProgress:
    """A consumer group's committed offsets against a topic's end offsets.

    Keeps its clients open, so polling it every few tens of milliseconds is cheap.
    """

    def __init__(self, client: Mapping[str, Any], group: str, topic: str) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

        self.group = group
        self.topic = topic
        self.admin = KafkaAdminClient(**client)
        self.consumer = KafkaConsumer(**client)
        parts = self.consumer.partitions_for_topic(topic) or set()
        self.parts = [TopicPartition(topic, p) for p in sorted(parts)]

    def ends(self) -> dict[int, int]:
        """End offset of every partition."""
        return {tp.partition: o for tp, o in self.consumer.end_offsets(self.parts).items()}

    def committed(self) -> dict[int, int]:
        """The group's committed offset per partition (absent: nothing committed yet)."""
        from kafka.errors import KafkaError

        try:
            offsets = self.admin.list_group_offsets(self.group).get(self.group, {})
        except KafkaError:
            return {}
        return {
            tp.partition: m.offset
            for tp, m in offsets.items()
            if tp.topic == self.topic and m.offset >= 0
        }

    def committed_records(self) -> int:
        """Records the group has committed, over all partitions."""
        return sum(self.committed().values())

    def fraction(self) -> float:
        """Share of the topic's records the group has committed."""
        ends = self.ends()
        total = sum(ends.values())
        if not total:
            return 1.0
        done = self.committed()
        return sum(min(done.get(p, 0), e) for p, e in ends.items()) / total

    def close(self) -> None:
        """Release the clients."""
        self.consumer.close()
        self.admin.close()
