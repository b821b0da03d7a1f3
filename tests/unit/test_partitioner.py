"""The producer's partitioner sends every key where Kafka's default partitioner would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner import DefaultPartitioner

from streamscore.adapters.kafka_sink import KeyHashPartitioner


class Cluster:
    """The two questions a partitioner asks of kafka-python's cluster metadata."""

    def __init__(self, partitions: int) -> None:
        self.partitions = set(range(partitions))

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions


@given(st.lists(st.binary(min_size=0, max_size=40), max_size=50), st.integers(1, 64))
def test_same_partition_as_the_default(keys: list[bytes], partitions: int) -> None:
    cluster = Cluster(partitions)
    ours, default = KeyHashPartitioner(max_keys=7), DefaultPartitioner()
    for key in keys + keys:  # the second pass hits the cache (or a cleared one)
        assert ours.partition("t", key, key, b"v", b"v", cluster) == default.partition(
            "t", key, key, b"v", b"v", cluster
        )


def test_unkeyed_records_go_to_some_partition() -> None:
    cluster = Cluster(4)
    assert KeyHashPartitioner().partition("t", None, None, b"v", b"v", cluster) in range(4)


def test_the_cache_stays_bounded() -> None:
    p = KeyHashPartitioner(max_keys=10)
    for i in range(95):
        p.partition("t", None, f"u{i}".encode(), b"v", b"v", Cluster(4))
    assert len(p._hashes) <= 10
