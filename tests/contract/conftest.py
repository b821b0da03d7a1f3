"""Fixtures for the contract suites: the same tests run on every adapter of a port.

State stores: memory, Redis and a Redis Cluster. Sources: memory, files and Kafka. Sinks:
memory, files and Kafka (the Kafka ones on fresh topics and groups of the test broker,
deleted afterwards).

The Redis store needs a real Redis at ``STREAMSCORE_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``, started by ``scripts/stack up``), the cluster store the 3-master
cluster of the ``redis_cluster`` fixture (the stack's, or a private one). When they do not
answer, their tests are skipped with the reason, unless ``STREAMSCORE_STACK=1`` is set: then
they fail, so CI cannot pass by silently skipping them. Each Redis test gets its own random
key prefix and deletes its keys afterwards, so tests never see each other's (or anyone
else's) data.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson
import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.errors import KafkaError
from redis.connection import AbstractConnection

from devstack import RedisCluster
from streamscore.adapters.files import JsonlSink, JsonlSource
from streamscore.adapters.kafka import KafkaSource
from streamscore.adapters.kafka_sink import KafkaSink
from streamscore.adapters.memory import ListSink, ListSource, MemoryGroup, MemoryStateStore
from streamscore.adapters.pseudonymous import PseudonymousStore, Pseudonyms
from streamscore.adapters.redis_store import RedisStateStore
from streamscore.adapters.redis_ttl import Clock
from streamscore.config import Settings
from streamscore.core.records import (
    OUTPUT_TOPICS,
    TOPIC_ALERTS,
    TOPIC_DLQ,
    TOPIC_SCORES,
    TOPIC_SEGMENTS,
)
from streamscore.errors import ConfigError
from streamscore.ports import Sink, Source, SourceRecord, StateStore
from tests.required import skip_or_fail

REDIS_URL = os.environ.get("STREAMSCORE_REDIS_URL", "redis://127.0.0.1:6379/0")


class ContractStore(StateStore, Protocol):
    """What the suite uses: the port plus the due-queue size every store reports."""

    def due_count(self) -> int:
        """Users waiting in due queues."""
        ...


def redis_settings(prefix: str, **overrides: Any) -> Settings:
    """Settings for a store on the test Redis (credentials from the environment)."""
    return Settings(redis_url=REDIS_URL, redis_key_prefix=prefix, **overrides)


@pytest.fixture(scope="session")
def redis_problem() -> str | None:
    """Why the test Redis cannot be used, or None when it answers."""
    try:
        probe = RedisStateStore.from_settings(redis_settings("sstest-probe"))
    except ConfigError as exc:
        return f"Redis at {REDIS_URL} is not usable: {exc}"
    probe.close()
    return None


@pytest.fixture
def redis_client(redis_problem: str | None) -> Iterator[redis.Redis]:
    """A plain client on the test Redis, to look at keys behind the store's back."""
    if redis_problem:
        skip_or_fail(redis_problem)
    s = redis_settings("unused")
    password = s.redis_password.get_secret_value() if s.redis_password else None
    client = redis.Redis.from_url(REDIS_URL, username=s.redis_username, password=password)
    yield client
    client.close()


MakeRedisStore = Callable[..., RedisStateStore]


@pytest.fixture
def make_redis_store(redis_client: redis.Redis) -> Iterator[MakeRedisStore]:
    """A factory of Redis stores under one fresh random prefix; all its keys go at the end."""
    prefix = f"sstest-{uuid.uuid4().hex[:12]}"
    stores: list[RedisStateStore] = []

    def make(clock: Clock = time.monotonic, **overrides: Any) -> RedisStateStore:
        store = RedisStateStore.from_settings(redis_settings(prefix, **overrides), clock=clock)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()
    keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def redis_store(make_redis_store: MakeRedisStore) -> RedisStateStore:
    """A Redis store with default settings under a fresh prefix."""
    return make_redis_store()


@pytest.fixture
def make_cluster_store(redis_cluster: RedisCluster) -> Iterator[MakeRedisStore]:
    """A factory of stores on the Redis Cluster under one fresh prefix; its keys go after."""
    prefix = f"sstest-{uuid.uuid4().hex[:12]}"
    stores: list[RedisStateStore] = []

    def make(clock: Clock = time.monotonic, **overrides: Any) -> RedisStateStore:
        settings = Settings(redis_url=redis_cluster.url, redis_key_prefix=prefix, **overrides)
        store = RedisStateStore.from_settings(settings, clock=clock)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()
    redis_cluster.delete_keys(prefix)


@pytest.fixture
def cluster_store(make_cluster_store: MakeRedisStore) -> RedisStateStore:
    """A store on the 3-master Redis Cluster with default settings under a fresh prefix."""
    return make_cluster_store()


REDIS_STORES = ["redis", "redis-cluster"]


@pytest.fixture(params=REDIS_STORES)
def any_redis_store(request: pytest.FixtureRequest) -> RedisStateStore:
    """The Redis store on one Redis, then on the Redis Cluster."""
    fixture = "redis_store" if request.param == "redis" else "cluster_store"
    chosen: RedisStateStore = request.getfixturevalue(fixture)
    return chosen


PLAIN_STORES = ["memory", *(pytest.param(k, marks=pytest.mark.integration) for k in REDIS_STORES)]


def store_for(request: pytest.FixtureRequest) -> ContractStore:
    """The store a ``store`` fixture's parameter names."""
    if request.param == "memory":
        return MemoryStateStore()
    if request.param == "redis-pseudonymous":
        inner: RedisStateStore = request.getfixturevalue("redis_store")
        return PseudonymousStore(inner, Pseudonyms(b"contract-suite pseudonym key, 32B"))
    fixture = "redis_store" if request.param == "redis" else "cluster_store"
    chosen: RedisStateStore = request.getfixturevalue(fixture)
    return chosen


@pytest.fixture(
    params=[*PLAIN_STORES, pytest.param("redis-pseudonymous", marks=pytest.mark.integration)]
)
def store(request: pytest.FixtureRequest) -> ContractStore:
    """Each implementation of the port in turn: memory, one Redis, a Redis Cluster, and one
    Redis behind the pseudonymous wrapper (``pseudonym_key``), which must keep every promise
    of the port while Redis holds no user id."""
    return store_for(request)


class RoundTrips:
    """Counts writes of requests to Redis sockets: one per command, one per pipeline."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = AbstractConnection.send_packed_command

        def counting(conn: AbstractConnection, command: object, check_health: bool = True) -> None:
            self.count += 1
            original(conn, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)

    def take(self) -> int:
        """The count so far, reset to zero."""
        n, self.count = self.count, 0
        return n


# -- sources and sinks: memory, files and Kafka through one harness each ------------------------

KAFKA_BOOTSTRAP = os.environ.get("STREAMSCORE_TEST_KAFKA", "127.0.0.1:9092")
PARTITIONS = 2
T0 = 1_767_225_600_000


def event_value(partition: int, n: int) -> bytes:
    """A record value that sorts by event time in production order (the file source sorts)."""
    return orjson.dumps({"p": partition, "n": n, "ts": T0 + n * PARTITIONS + partition})


class SourceHarness:
    """One source adapter, the records its topic holds, and the group it reads in.

    ``produce`` adds records; ``open`` makes a new source in the same group (a restart);
    ``take_away`` makes the group move some partitions off a source and returns them;
    ``give_back`` undoes it; ``committed`` reads the group's offsets as the backend keeps them.
    """

    name = ""
    partitions = PARTITIONS
    exact_lag = True  # lag before everything was fetched is exact (else a lower bound)
    produces_after_open = True
    finite = True

    def produce(self, counts: dict[int, int]) -> None:
        raise NotImplementedError

    def open(self) -> Source:
        raise NotImplementedError

    def take_away(self, source: Source) -> set[int]:
        raise NotImplementedError

    def give_back(self, source: Source) -> None:
        raise NotImplementedError

    def committed(self) -> dict[int, int]:
        raise NotImplementedError

    def close(self) -> None:
        return None


class MemorySourceHarness(SourceHarness):
    name = "memory"

    def __init__(self) -> None:
        self.group = MemoryGroup()
        self.records: list[SourceRecord] = []
        self.next = dict.fromkeys(range(self.partitions), 0)
        self.open_sources: list[ListSource] = []

    def produce(self, counts: dict[int, int]) -> None:
        for p, n in counts.items():
            for _ in range(n):
                o = self.next[p]
                self.records.append(SourceRecord("t", p, o, event_value(p, o)))
                for source in self.open_sources:
                    source.produce(p, event_value(p, o))
                self.next[p] += 1

    def open(self) -> Source:
        source = ListSource(
            list(self.records), "t", partitions=range(self.partitions), group=self.group
        )
        self.open_sources.append(source)
        return source

    def take_away(self, source: Source) -> set[int]:
        assert isinstance(source, ListSource)
        moved = {self.partitions - 1}
        source.revoke(moved)
        return moved

    def give_back(self, source: Source) -> None:
        assert isinstance(source, ListSource)
        source.assign({self.partitions - 1})

    def committed(self) -> dict[int, int]:
        return dict(self.group.committed)


class FileSourceHarness(MemorySourceHarness):
    """A JSONL file replayed as one partition; records are the file's lines."""

    name = "files"
    partitions = 1
    exact_lag = False  # lines are read (and counted) as polls need them
    produces_after_open = False

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.path = directory / "events.jsonl"
        self.path.write_bytes(b"")

    def produce(self, counts: dict[int, int]) -> None:
        assert set(counts) <= {0}, "a file is one partition"
        with self.path.open("ab") as fp:
            for _ in range(counts.get(0, 0)):
                fp.write(event_value(0, self.next[0]) + b"\n")
                self.next[0] += 1

    def open(self) -> Source:
        return JsonlSource(self.path, "t", group=self.group)

    def take_away(self, source: Source) -> set[int]:
        assert isinstance(source, ListSource)
        source.revoke({0})
        return {0}

    def give_back(self, source: Source) -> None:
        assert isinstance(source, ListSource)
        source.assign({0})


class KafkaSourceHarness(SourceHarness):
    """A fresh two-partition topic and consumer group on the test broker."""

    name = "kafka"
    finite = False

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.topic, self.group = f"contract-{tag}", f"contract-{tag}"
        self.admin = KafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
        self.admin.create_topics([NewTopic(self.topic, self.partitions, 1)])
        self.producer = KafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP, acks="all")
        self.next = dict.fromkeys(range(self.partitions), 0)
        self.sources: list[KafkaSource] = []
        self._other: KafkaConsumer | None = None
        self._other_thread: threading.Thread | None = None
        self._stop_other = threading.Event()

    def settings(self) -> Settings:
        return Settings(
            kafka_bootstrap_servers=KAFKA_BOOTSTRAP,
            input_topic=self.topic,
            kafka_group_id=self.group,
            session_timeout_ms=6000,
        )

    def produce(self, counts: dict[int, int]) -> None:
        for p, n in counts.items():
            for _ in range(n):
                self.producer.send(self.topic, value=event_value(p, self.next[p]), partition=p)
                self.next[p] += 1
        self.producer.flush()

    def open(self) -> Source:
        # Lingering, so that every case also holds for polls that wait for more records
        # (rebalances and commits arrive in the polls of a linger too).
        source = KafkaSource(self.settings(), linger_ms=30)
        self.sources.append(source)
        return source

    def take_away(self, source: Source) -> set[int]:
        """A second member joins the group; cooperative-sticky moves a partition to it."""
        revoked: set[int] = set()
        self._other = KafkaConsumer(
            self.topic,
            bootstrap_servers=KAFKA_BOOTSTRAP,
            group_id=self.group,
            enable_auto_commit=False,
            partition_assignment_strategy=(CooperativeStickyAssignor,),
            session_timeout_ms=6000,
        )
        self._stop_other.clear()
        other = self._other

        def keep_polling() -> None:
            while not self._stop_other.is_set():
                other.poll(timeout_ms=100)

        self._other_thread = threading.Thread(target=keep_polling, daemon=True)
        self._other_thread.start()
        return revoked

    def give_back(self, source: Source) -> None:
        self._leave()

    def _leave(self) -> None:
        if self._other is not None:
            self._stop_other.set()
            if self._other_thread is not None:
                self._other_thread.join(timeout=10)
            self._other.close(autocommit=False)
            self._other = None

    def committed(self) -> dict[int, int]:
        offsets = self.admin.list_group_offsets(self.group).get(self.group, {})
        return {
            tp.partition: meta.offset
            for tp, meta in offsets.items()
            if tp.topic == self.topic and meta.offset >= 0
        }

    def close(self) -> None:
        self._leave()
        for source in self.sources:
            with contextlib.suppress(Exception):
                source.close()
        self.producer.close()
        self.admin.delete_topics([self.topic])
        self.admin.close()


@pytest.fixture(scope="session")
def kafka_problem() -> str | None:
    """Why the test broker cannot be used, or None when it answers."""
    try:
        KafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP, request_timeout_ms=3000).close()
    except KafkaError as exc:
        return (
            f"Kafka at {KAFKA_BOOTSTRAP} is not answering ({exc}); start it with scripts/stack up"
        )
    return None


ADAPTERS = ["memory", "files", pytest.param("kafka", marks=pytest.mark.integration)]


def _harness(
    request: pytest.FixtureRequest, kafka_problem: str | None, **make: Callable[[], Any]
) -> Iterator[Any]:
    """The harness of ``request.param`` (Kafka only when the broker answers), closed after."""
    if request.param == "kafka" and kafka_problem:
        skip_or_fail(kafka_problem)
    harness = make[request.param]()
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture(params=ADAPTERS)
def source_harness(
    request: pytest.FixtureRequest, tmp_path: Path, kafka_problem: str | None
) -> Iterator[SourceHarness]:
    """Each source adapter in turn, on records of its own."""
    yield from _harness(
        request,
        kafka_problem,
        memory=MemorySourceHarness,
        files=lambda: FileSourceHarness(tmp_path),
        kafka=KafkaSourceHarness,
    )


class SinkHarness:
    """One sink adapter and a way to read back what was delivered, per topic."""

    name = ""

    def open(self) -> Sink:
        raise NotImplementedError

    def delivered(self, topic: str, expected: int) -> list[dict[str, Any]]:
        """What the topic holds, waiting (Kafka) until ``expected`` records are there."""
        raise NotImplementedError

    def close(self) -> None:
        return None


class MemorySinkHarness(SinkHarness):
    name = "memory"

    def open(self) -> Sink:
        self.sink = ListSink()
        return self.sink

    def delivered(self, topic: str, expected: int) -> list[dict[str, Any]]:
        return list(self.sink.records.get(topic, []))


class FileSinkHarness(SinkHarness):
    name = "files"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def open(self) -> Sink:
        self.sink = JsonlSink(self.directory)
        return self.sink

    def close(self) -> None:
        self.sink.close()

    def delivered(self, topic: str, expected: int) -> list[dict[str, Any]]:
        path = self.directory / f"{topic}.jsonl"
        return [orjson.loads(line) for line in path.read_bytes().splitlines()]


class KafkaSinkHarness(SinkHarness):
    name = "kafka"

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.topics = {t: f"contract-{tag}-{t}" for t in OUTPUT_TOPICS}
        self.admin = KafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP)
        self.admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in self.topics.values()])
        self.sinks: list[KafkaSink] = []

    def open(self) -> Sink:
        settings = Settings(
            kafka_bootstrap_servers=KAFKA_BOOTSTRAP,
            scores_topic=self.topics[TOPIC_SCORES],
            alerts_topic=self.topics[TOPIC_ALERTS],
            segments_topic=self.topics[TOPIC_SEGMENTS],
            dlq_topic=self.topics[TOPIC_DLQ],
        )
        sink = KafkaSink(settings)
        self.sinks.append(sink)
        return sink

    def delivered(self, topic: str, expected: int) -> list[dict[str, Any]]:
        consumer = KafkaConsumer(
            self.topics[topic],
            bootstrap_servers=KAFKA_BOOTSTRAP,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=1000,
        )
        got: list[tuple[int, int, dict[str, Any]]] = []
        deadline = time.monotonic() + 30
        try:
            while len(got) < expected and time.monotonic() < deadline:
                for m in consumer:
                    got.append((m.partition, m.offset, orjson.loads(m.value)))
            # Nothing beyond what was sent: one more second of reading must bring nothing.
            for m in consumer:
                got.append((m.partition, m.offset, orjson.loads(m.value)))
        finally:
            consumer.close()
        return [value for _, _, value in sorted(got, key=lambda g: (g[0], g[1]))]

    def close(self) -> None:
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                sink.close()
        self.admin.delete_topics(list(self.topics.values()))
        self.admin.close()


@pytest.fixture(params=ADAPTERS)
def sink_harness(
    request: pytest.FixtureRequest, tmp_path: Path, kafka_problem: str | None
) -> Iterator[SinkHarness]:
    """Each sink adapter in turn, on topics of its own."""
    yield from _harness(
        request,
        kafka_problem,
        memory=MemorySinkHarness,
        files=lambda: FileSinkHarness(tmp_path),
        kafka=KafkaSinkHarness,
    )
