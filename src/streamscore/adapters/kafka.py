"""Kafka source and sink on kafka-python 3.x.

The consumer never auto-commits: the runtime commits a batch's offsets only after its outputs
are flushed and its states saved. Cooperative-sticky assignment (KIP-429) moves only the
partitions that must move; the rebalance listener runs on the client's I/O thread, so it only
queues what changed and the runtime applies it between batches, on its own thread.
"""

from __future__ import annotations

import logging
import queue
import re
import socket
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    SaslAuthenticationFailedError,
)
from kafka.partitioner import DefaultPartitioner, Partitioner
from kafka.partitioner.default import murmur2
from kafka.structs import MemberState, OffsetAndMetadata

from streamscore.config import Settings
from streamscore.core.records import TOPIC_ALERTS, TOPIC_DLQ, TOPIC_SCORES, TOPIC_SEGMENTS
from streamscore.core.values import Output
from streamscore.errors import ConfigError, TransientError
from streamscore.ports import CommitStatus, RebalanceHook, SourceHealth, SourceRecord

log = logging.getLogger("streamscore.kafka")


def client_config(settings: Settings) -> dict[str, Any]:
    """Connection and security options shared by consumer, producer and admin client."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "client_id": settings.kafka_client_id,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_sasl_mechanism:
        cfg["sasl_mechanism"] = settings.kafka_sasl_mechanism
        cfg["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        cfg["sasl_plain_password"] = password.get_secret_value() if password else None
    if settings.kafka_security_protocol in {"SSL", "SASL_SSL"}:
        for key, value in (
            ("ssl_cafile", settings.kafka_ssl_cafile),
            ("ssl_certfile", settings.kafka_ssl_certfile),
            ("ssl_keyfile", settings.kafka_ssl_keyfile),
        ):
            if value is not None:
                cfg[key] = str(value)
    return cfg


UNREACHABLE = (KafkaTimeoutError, KafkaConnectionError)
# How long one commit or flush may wait for an unavailable broker before it is reported as a
# TransientError (logged, counted in streamscore_transient_errors_total, retried with
# backoff). Without a bound a broker outage blocked the loop silently inside kafka-python
# (commit: request_timeout_ms, 30 s; flush: 60 s) and never showed in our logs or metrics.
BROKER_WAIT_S = 10.0


def _accepts_connections(servers: str) -> bool:
    """True when a TCP connection to one of the bootstrap servers succeeds."""
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), 2.0):
                return True
        except (OSError, ValueError):
            continue
    return False


def unreachable_error(settings: Settings, exc: Exception) -> ConfigError:
    where = settings.kafka_bootstrap_servers
    credentials = (
        "check STREAMSCORE_KAFKA_SASL_USERNAME, STREAMSCORE_KAFKA_SASL_PASSWORD and "
        "STREAMSCORE_KAFKA_SASL_MECHANISM"
    )
    if isinstance(exc, SaslAuthenticationFailedError):
        return ConfigError(f"Kafka at {where} refused our SASL login ({exc}); {credentials}")
    if (
        settings.kafka_security_protocol.startswith("SASL")
        and isinstance(exc, KafkaTimeoutError)
        and _accepts_connections(where)
    ):
        # The broker often closes a refused login before kafka-python reads its answer: all
        # that is left is a bootstrap timeout against a broker that accepts connections.
        return ConfigError(
            f"Kafka at {where} refused our SASL login (it accepts connections, but no login "
            f"completed before the bootstrap timeout); {credentials} (and "
            "STREAMSCORE_KAFKA_SECURITY_PROTOCOL)"
        )
    tls = ""
    if settings.kafka_security_protocol.endswith("SSL"):
        tls = (
            "; with TLS, also check STREAMSCORE_KAFKA_SSL_CAFILE (the CA that signed the "
            "broker's certificate, which must name the host in the bootstrap address)"
        )
    return ConfigError(
        f"cannot reach Kafka at {settings.kafka_bootstrap_servers} ({exc}); "
        "start it with scripts/stack up, or set STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS "
        f"and the STREAMSCORE_KAFKA_SECURITY_PROTOCOL / SASL settings{tls}"
    )


class _AuthFailureWatch(logging.Filter):
    """Remembers a refused SASL login that kafka-python only logs.

    kafka-python 3.0 retries a bootstrap connection whose SASL login the broker refused, logs
    the ``SaslAuthenticationFailedError`` (logger ``kafka.net.manager``, at ERROR and WARNING)
    and, once ``bootstrap_timeout_ms`` has passed, raises a bare ``KafkaTimeoutError``. This
    filter picks the refusal out of those log records, so the error can name the credentials
    instead of calling Kafka unreachable. It never drops a record.
    """

    def __init__(self) -> None:
        super().__init__()
        self.failure: SaslAuthenticationFailedError | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, SaslAuthenticationFailedError):
                self.failure = arg
        return True


@contextmanager
def _watch_auth_failures() -> Iterator[_AuthFailureWatch]:
    watch = _AuthFailureWatch()
    logger = logging.getLogger("kafka.net.manager")
    logger.addFilter(watch)
    try:
        yield watch
    finally:
        logger.removeFilter(watch)


class _RedactSaslBytes(logging.Filter):
    """Keeps SASL secrets out of kafka-python's DEBUG request log.

    At DEBUG, kafka-python logs every request and response object, SASL logins included: a
    PLAIN login carries the password in clear and a SCRAM one its salt and proof (enough to
    guess the password offline). Those records keep their text with the bytes redacted.
    """

    _BYTES = re.compile(r"""auth_bytes=b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG:
            text = record.getMessage()
            if "auth_bytes=" in text:
                record.msg, record.args = self._BYTES.sub("auth_bytes=<redacted>", text), ()
        return True


logging.getLogger("kafka.net.connection").addFilter(_RedactSaslBytes())
# kafka-python's wire dump (the raw bytes of every request and response, SASL logins and
# their passwords included) stays off even when streamscore logs at DEBUG.
logging.getLogger("kafka.protocol.parser").setLevel(logging.INFO)


class _QueueingListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands rebalance events to the runtime thread instead of doing I/O on the client's."""

    def __init__(self, events: queue.SimpleQueue[tuple[str, set[int]]]) -> None:
        self.events = events

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.events.put(("revoked", {tp.partition for tp in revoked}))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.events.put(("assigned", {tp.partition for tp in assigned}))

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        self.events.put(("lost", {tp.partition for tp in lost}))


class _GroupJoinGuard:
    """Keeps kafka-python 3.0.x from stalling in a half-finished group join.

    kafka-python runs JoinGroup/SyncGroup as a background task that ``poll`` awaits for at
    most its timeout. When a poll gives up first, the next one re-awaits the task, but only
    while ``need_rejoin()`` holds. A rejoin started because metadata changed turns
    ``need_rejoin()`` false while the task is still running (the leader's assignment
    refreshes the metadata snapshot), so the finished join is never applied: the consumer
    stays "rebalancing", keeps fetching its old partitions, and every commit is refused.
    Reproduced here with kafka-python 3.0.12 and a scorer's 100 ms polls; a loaded machine
    hits it at start-up (tests/integration/test_kafka_source.py).

    Two measures, both through the consumer's coordinator: while a join is in flight, polls
    wait long enough for it to finish; and a finished join that was left unapplied is
    restarted. Without the attributes this relies on (another kafka-python), it does nothing.
    """

    def __init__(self, consumer: KafkaConsumer, join_wait_s: float) -> None:
        self.coordinator = getattr(consumer, "_coordinator", None)
        self.join_wait_s = join_wait_s
        self.stalled_polls = 0

    def _joining(self) -> bool:
        c = self.coordinator
        return c is not None and getattr(c, "state", None) == MemberState.REBALANCING

    def poll_timeout(self, timeout_s: float) -> float:
        """The caller's timeout, or long enough for an in-flight join to finish."""
        return max(timeout_s, self.join_wait_s) if self._joining() else timeout_s

    def after_poll(self) -> None:
        """Restart a join that finished while no poll awaited it and will not be applied."""
        c = self.coordinator
        if c is None or not self._joining():
            self.stalled_polls = 0
            return
        task = getattr(c, "_join_task", None)
        if (task is None or task.is_done) and not c.need_rejoin():
            # Seen twice in a row, so a join finishing on the I/O thread right now is not
            # mistaken for a stalled one.
            self.stalled_polls += 1
            if self.stalled_polls >= 2:
                log.warning("group join finished but was not applied (kafka-python); rejoining")
                c.request_rejoin()
                self.stalled_polls = 0
        else:
            self.stalled_polls = 0


class KafkaSource:
    """The input topic through a consumer group, committed by the runtime only."""

    def __init__(
        self, settings: Settings, *, topic: str | None = None, group_id: str | None = None
    ) -> None:
        self.topic = topic or settings.input_topic
        self._events: queue.SimpleQueue[tuple[str, set[int]]] = queue.SimpleQueue()
        self._assigned_hook: RebalanceHook | None = None
        self._revoked_hook: RebalanceHook | None = None
        self.owned: set[int] = set()
        self.uncommitted: dict[int, int] = {}
        # Asynchronous commits not yet answered, and when the last one went out (an answer
        # that never comes must not keep deferred offsets from being sent again).
        self.commits_in_flight = 0
        self.failed_commits = 0  # answered with an error, for the transient-errors metric
        self._commit_sent = 0.0
        self._deferring = False
        self._last_poll_ms: int | None = None
        self._poll_failed = False
        self._closed = False
        try:
            with _watch_auth_failures() as auth:
                self.consumer = KafkaConsumer(
                    group_id=group_id or settings.kafka_group_id,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    max_poll_records=settings.batch_max_records,
                    max_poll_interval_ms=settings.max_poll_interval_ms,
                    session_timeout_ms=settings.session_timeout_ms,
                    heartbeat_interval_ms=min(3000, settings.session_timeout_ms // 3),
                    partition_assignment_strategy=(CooperativeStickyAssignor,),
                    fetch_max_bytes=16 * 1024 * 1024,
                    **client_config(settings),
                )
        except (*UNREACHABLE, SaslAuthenticationFailedError) as exc:
            raise unreachable_error(settings, auth.failure or exc) from None
        except KafkaError as exc:
            raise ConfigError(f"cannot start the Kafka consumer: {exc}") from None
        topics = self.consumer.topics()
        if self.topic not in topics:
            self.consumer.close()
            raise ConfigError(
                f"input topic {self.topic!r} does not exist on "
                f"{settings.kafka_bootstrap_servers}; create it (scripts/stack up creates the "
                "default topics) or set STREAMSCORE_INPUT_TOPIC"
            )
        self.consumer.subscribe([self.topic], listener=_QueueingListener(self._events))
        self._join_guard = _GroupJoinGuard(
            self.consumer, min(10.0, settings.session_timeout_ms / 2000)
        )

    def on_rebalance(self, assigned: RebalanceHook, revoked: RebalanceHook) -> None:
        self._assigned_hook, self._revoked_hook = assigned, revoked

    def _apply_rebalances(self) -> None:
        while True:
            try:
                kind, parts = self._events.get_nowait()
            except queue.Empty:
                return
            if kind == "assigned":
                self.owned |= parts
                if self._assigned_hook is not None:
                    self._assigned_hook(parts)
            else:
                self.owned -= parts
                for p in parts:
                    # The next owner starts from the group's committed offset; ours is stale.
                    self.uncommitted.pop(p, None)
                if self._revoked_hook is not None:
                    self._revoked_hook(parts)

    def poll(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        timeout_s = self._join_guard.poll_timeout(timeout_s)
        try:
            batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            self._poll_failed = True
            raise TransientError(f"Kafka poll failed: {exc}") from exc
        self._poll_failed = False
        self._last_poll_ms = time.time_ns() // 1_000_000
        self._join_guard.after_poll()
        self._apply_rebalances()
        if self.uncommitted and (
            not self.commits_in_flight or time.monotonic() - self._commit_sent > BROKER_WAIT_S
        ):
            # Offsets whose commit failed (a rebalance, an outage). A failure here must not
            # lose the polled records (the consumer's position has moved past them): the next
            # poll tries again.
            try:
                self._commit_uncommitted()
            except TransientError as exc:
                log.warning("deferred offset commit failed (%s); retrying after the next poll", exc)
        out: list[SourceRecord] = []
        for tp, messages in batches.items():
            if tp.partition not in self.owned:
                continue  # fetched just before a revocation: the new owner reads it
            for m in messages:
                if m.value is None:
                    continue  # tombstones carry no event
                out.append(SourceRecord(tp.topic, tp.partition, m.offset, m.value, m.timestamp))
        return out

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        """Commit saved offsets without waiting for the broker's answer.

        The batch's states are saved and its outputs flushed before this is called, so any
        commit that lands is safe, and one that is lost is superseded by the next batch's
        (offsets only grow): waiting for it would only add its round trip, about a quarter
        of a batch at 5k events/s, to every event's latency. The answer arrives in a later
        ``poll``; offsets stay in ``uncommitted`` until then, and ``close`` commits what is
        still unconfirmed synchronously.
        """
        for p, o in next_offsets.items():
            if p in self.owned:  # a revoked partition's next owner commits for it
                self.uncommitted[p] = max(o, self.uncommitted.get(p, o))
        self._commit_uncommitted()

    def _owned_uncommitted(self) -> dict[TopicPartition, OffsetAndMetadata]:
        return {
            TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1)
            for p, o in self.uncommitted.items()
            if p in self.owned
        }

    def _commit_uncommitted(self) -> None:
        offsets = self._owned_uncommitted()
        if not offsets:
            return
        try:
            self.consumer.commit_async(offsets, callback=self._on_commit)
        except KafkaError as exc:
            raise TransientError(f"Kafka offset commit failed: {exc}") from exc
        self.commits_in_flight += 1
        self._commit_sent = time.monotonic()

    def _on_commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata], result: Any) -> None:
        """The broker's answer to an asynchronous commit (called on this thread, in poll)."""
        self.commits_in_flight -= 1
        if isinstance(result, Exception):
            self.failed_commits += 1
            # During a rebalance the coordinator refuses commits until this consumer rejoins,
            # which happens only inside poll; after an outage or a coordinator move, the
            # same. The offsets stay in ``uncommitted`` and go out again after a later poll,
            # for the partitions still owned; if the partitions went elsewhere, the new
            # owner's replay of them changes nothing.
            if not self._deferring:
                log.warning("offset commit deferred until it can be retried (%s)", result)
            self._deferring = True
            return
        if self._deferring:
            log.info(
                "deferred offsets committed: %s",
                {tp.partition: m.offset for tp, m in offsets.items()},
            )
        self._deferring = False
        for tp, meta in offsets.items():
            if self.uncommitted.get(tp.partition) == meta.offset:
                del self.uncommitted[tp.partition]

    def _commit_uncommitted_sync(self) -> None:
        """Commit what is still unconfirmed and wait for the answer (on close)."""
        offsets = self._owned_uncommitted()
        if not offsets:
            return
        try:
            self.consumer.commit(offsets, timeout_ms=int(BROKER_WAIT_S * 1000))
        except KafkaError as exc:
            raise TransientError(f"Kafka offset commit failed: {exc}") from exc
        self.uncommitted.clear()

    def commit_status(self) -> CommitStatus:
        """Offsets not yet confirmed by the broker (sent again after later polls), and how
        many asynchronous commits the broker refused so far."""
        return CommitStatus(pending=dict(self.uncommitted), failed=self.failed_commits)

    def health(self) -> SourceHealth:
        """Connected: the last poll worked and a broker connection is up (as kafka-python's
        client reports it; without that attribute, the last poll alone)."""
        client = getattr(self.consumer, "_client", None)
        connected = not (self._closed or self._poll_failed) and self._last_poll_ms is not None
        if connected and client is not None and hasattr(client, "connected"):
            try:
                brokers = client.cluster.brokers()
                connected = any(client.connected(b.nodeId) for b in brokers)
            except (AttributeError, KafkaError):
                pass
        return SourceHealth(connected=connected, last_poll_ms=self._last_poll_ms)

    def lag(self) -> dict[int, int]:
        """Records between our position and the end of each owned partition."""
        parts = [TopicPartition(self.topic, p) for p in self.owned]
        if not parts:
            return {}
        try:
            ends = self.consumer.end_offsets(parts)
            return {tp.partition: max(ends[tp] - self.consumer.position(tp), 0) for tp in parts}
        except KafkaError:
            return {}

    def exhausted(self) -> bool:
        return False

    def caught_up(self, partitions: Collection[int]) -> set[int]:
        """Owned partitions whose position has reached the high watermark of their last fetch
        (no broker round trip: the fetcher keeps both)."""
        out: set[int] = set()
        for p in partitions:
            if p not in self.owned:
                continue
            tp = TopicPartition(self.topic, p)
            try:
                high = self.consumer.highwater(tp)
                if high is not None and self.consumer.position(tp, timeout_ms=0) >= high:
                    out.add(p)
            except KafkaError:
                continue  # position or high watermark not known yet: not idle
        return out

    def close(self) -> None:
        self._closed = True
        if self.uncommitted:
            # One last try for unconfirmed offsets; left behind, they only mean a short replay.
            try:
                self._commit_uncommitted_sync()
            except TransientError as exc:
                log.warning("closing with offsets uncommitted (%s)", exc)
        self.consumer.close(autocommit=False)


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


class KafkaSink:
    """The four output topics through one idempotent producer (acks=all)."""

    def __init__(self, settings: Settings, *, resend_attempts: int = 3) -> None:
        self.topics = {
            TOPIC_SCORES: settings.scores_topic,
            TOPIC_ALERTS: settings.alerts_topic,
            TOPIC_SEGMENTS: settings.segments_topic,
            TOPIC_DLQ: settings.dlq_topic,
        }
        self.resend_attempts = resend_attempts
        self._pending: list[tuple[str, bytes | None, bytes, Any]] = []
        try:
            with _watch_auth_failures() as auth:
                self.producer = KafkaProducer(
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=5,
                    batch_size=256 * 1024,
                    partitioner=KeyHashPartitioner(),
                    max_in_flight_requests_per_connection=5,
                    **client_config(settings),
                )
        except (*UNREACHABLE, SaslAuthenticationFailedError) as exc:
            raise unreachable_error(settings, auth.failure or exc) from None

    def send(self, outputs: Iterable[Output]) -> None:
        for o in outputs:
            topic = self.topics[o.topic]
            key = o.key.encode() if o.key else None
            value = orjson.dumps(o.value)
            self._pending.append((topic, key, value, self._send(topic, key, value)))

    def _send(self, topic: str, key: bytes | None, value: bytes) -> Any:
        try:
            return self.producer.send(topic, key=key, value=value)
        except KafkaError as exc:
            return exc

    def flush(self) -> None:
        """Wait for every pending record; resend failures; raise if some still failed."""
        for _ in range(self.resend_attempts + 1):
            try:
                self.producer.flush(timeout=BROKER_WAIT_S)
            except KafkaError as exc:
                raise TransientError(f"Kafka producer flush failed: {exc}") from exc
            failed = [
                (t, k, v, f)
                for t, k, v, f in self._pending
                if isinstance(f, Exception) or not f.succeeded()
            ]
            if not failed:
                self._pending.clear()
                return
            log.warning("%d records were not delivered; resending", len(failed))
            self._pending = [(t, k, v, self._send(t, k, v)) for t, k, v, _ in failed]
        raise TransientError(f"{len(self._pending)} output records could not be delivered to Kafka")

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
        self.producer.close(timeout=5)
