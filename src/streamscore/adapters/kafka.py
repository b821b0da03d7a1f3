"""Kafka source on kafka-python 3.x (the sink is in ``kafka_sink``, connections in
``kafka_client``).

The consumer never auto-commits: the runtime commits a batch's offsets only after its outputs
are flushed and its states saved. Cooperative-sticky assignment (KIP-429) moves only the
partitions that must move; the rebalance listener runs on the client's I/O thread, so it only
queues what changed and the runtime applies it between batches, on its own thread.

Records come with their key and, for a record a scorer re-keyed, the origin its header names
(``SourceRecord``); the runtime checks the key contract (``key_contract``).

A poll that finds records may wait a bounded while for more (``linger_ms``, the setting
``batch_linger_ms``), so that at moderate rates a batch's fixed costs (flush, state save,
commit, the due-user query) are shared by more records: it polls again until the batch is
full or ``linger_ms`` has passed since the first records came, never longer.

Tombstones (records whose value is null) carry no event: they are counted, logged, and
committed past like any processed record, so they can neither stall a partition nor be read
again after a restart.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.errors import (
    FencedInstanceIdError,
    KafkaError,
    KafkaTimeoutError,
    SaslAuthenticationFailedError,
)
from kafka.structs import MemberState, OffsetAndMetadata

from streamscore.adapters.kafka_client import (
    BROKER_WAIT_S,
    PROBE_WAIT_S,
    UNREACHABLE,
    BrokerWatch,
    bounded,
    client_config,
    unreachable_error,
    watch_auth_failures,
)
from streamscore.config import Settings
from streamscore.core.records import REKEYED_FROM_HEADER
from streamscore.errors import ConfigError, TransientError
from streamscore.ports import CommitStatus, RebalanceHook, SourceHealth, SourceRecord

log = logging.getLogger("streamscore.kafka")
# After the first tombstone is logged, further ones are summed up at most this often.
TOMBSTONE_LOG_EVERY_S = 60.0


def rekeyed_from(headers: Iterable[tuple[str, bytes | None]]) -> tuple[int, int] | None:
    """The (partition, offset) a record re-keyed by a scorer names in its header; None when
    the header is absent or malformed (``key_contract`` explains re-keying)."""
    for name, value in headers:
        if name == REKEYED_FROM_HEADER and value:
            p, sep, o = value.partition(b":")
            if sep and p.isdigit() and o.isdigit():
                return int(p), int(o)
    return None


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

    def joining(self) -> bool:
        c = self.coordinator
        return c is not None and getattr(c, "state", None) == MemberState.REBALANCING

    def poll_timeout(self, timeout_s: float) -> float:
        """The caller's timeout, or long enough for an in-flight join to finish."""
        return max(timeout_s, self.join_wait_s) if self.joining() else timeout_s

    def after_poll(self) -> None:
        """Restart a join that finished while no poll awaited it and will not be applied."""
        c = self.coordinator
        if c is None or not self.joining():
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
        self,
        settings: Settings,
        *,
        topic: str | None = None,
        group_id: str | None = None,
        watch: BrokerWatch | None = None,
        on_tombstone: Callable[[], None] | None = None,
        topic_setting: str = "STREAMSCORE_INPUT_TOPIC",
        linger_ms: int = 0,
    ) -> None:
        """``topic_setting`` names the setting of ``topic`` in errors (the input topic's by
        default; the trainer reads ``training-examples`` with one of these); ``linger_ms``:
        how long a poll that found records may wait for more (see the module's docstring)."""
        self.topic = topic or settings.input_topic
        self.linger_s = linger_ms / 1000
        self.watch = watch or BrokerWatch(settings.kafka_bootstrap_servers)
        self.on_tombstone = on_tombstone
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
        # Tombstones polled, and the offset after the last one per partition: committed with
        # the next poll, when everything polled before it has been processed and committed.
        self.tombstones = 0
        self._skipped: dict[int, int] = {}
        self._seeked: set[int] = set()  # sought in this poll's rebalance hooks
        self._tombstones_logged = 0
        self._tombstone_log_at = 0.0
        try:
            with watch_auth_failures() as auth:
                self.consumer = KafkaConsumer(
                    group_id=group_id or settings.kafka_group_id,
                    group_instance_id=settings.kafka_group_instance_id,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    max_poll_records=settings.batch_max_records,
                    max_poll_interval_ms=settings.max_poll_interval_ms,
                    session_timeout_ms=settings.session_timeout_ms,
                    heartbeat_interval_ms=min(3000, settings.session_timeout_ms // 3),
                    partition_assignment_strategy=(CooperativeStickyAssignor,),
                    # Records larger than these still arrive (KIP-74: a fetch always returns
                    # the first batch of a partition whole), one per fetch.
                    fetch_max_bytes=16 * 1024 * 1024,
                    **client_config(settings),
                )
            self.topics_on_broker: set[str] = bounded("listing topics", self.consumer.topics)
        except (*UNREACHABLE, SaslAuthenticationFailedError) as exc:
            raise unreachable_error(settings, auth.failure or exc) from None
        except KafkaError as exc:
            raise ConfigError(f"cannot start the Kafka consumer: {exc}") from None
        if self.topic not in self.topics_on_broker:
            self.consumer.close(timeout_ms=int(BROKER_WAIT_S * 1000))
            raise ConfigError(
                f"topic {self.topic!r} does not exist on {settings.kafka_bootstrap_servers}; "
                f"create it (scripts/stack up creates the default topics) or set {topic_setting}"
            )
        self.consumer.subscribe([self.topic], listener=_QueueingListener(self._events))
        self._join_guard = _GroupJoinGuard(
            self.consumer, min(10.0, settings.session_timeout_ms / 2000)
        )
        self.instance_id = settings.kafka_group_instance_id
        self._fenced_by: Exception | None = None  # seen in a commit answer: raised by poll

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
                    self._skipped.pop(p, None)
                if self._revoked_hook is not None:
                    self._revoked_hook(parts)

    def poll(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        # Everything polled before this call has been processed and committed by now, so the
        # tombstones it held can be committed past.
        for p, o in self._skipped.items():
            if p in self.owned:
                self.uncommitted[p] = max(o, self.uncommitted.get(p, o))
        self._skipped.clear()
        if self._fenced_by is not None:
            raise self._fenced(self._fenced_by)
        out = self._poll_once(max_records, self._join_guard.poll_timeout(timeout_s))
        if out and self.linger_s > 0 and len(out) < max_records:
            out = self._linger(out, max_records)
        return out

    def _linger(self, out: list[SourceRecord], max_records: int) -> list[SourceRecord]:
        """Poll again until the batch is full or ``linger_s`` after ``out`` came.

        Each poll may bring a rebalance or a seek: what was collected of a partition that went
        away or was sought is dropped, as ``_poll_once`` drops its own. A poll that fails ends
        the wait instead of losing what was collected (the consumer's position is past it);
        the failure comes back at the next poll. So does a group join under way, which would
        hold a poll far longer than the bound (``_GroupJoinGuard``).
        """
        deadline = time.monotonic() + self.linger_s
        while len(out) < max_records and not self._join_guard.joining():
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            try:
                more = self._poll_once(max_records - len(out), left_ms / 1000)
            except TransientError as exc:
                log.debug("poll while lingering failed (%s); the batch goes on", exc)
                break
            if self._seeked or any(r.partition not in self.owned for r in out):
                out = [
                    r for r in out if r.partition in self.owned and r.partition not in self._seeked
                ]
            out += more
        return out

    def _poll_once(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        """One consumer poll: rebalances applied, deferred commits retried, records read."""
        self._seeked.clear()  # a seek between polls: the consumer fetches from there anyway
        try:
            batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except FencedInstanceIdError as exc:
            raise self._fenced(exc) from None
        except KafkaError as exc:
            self._poll_failed = True
            raise TransientError(f"Kafka poll failed: {exc}") from exc
        self._poll_failed = False
        self._last_poll_ms = time.time_ns() // 1_000_000
        self._join_guard.after_poll()
        self._apply_rebalances()
        # A partition a hook sought now is read from there by the next fetch; what this poll
        # brought of it came from the old position.
        sought = set(self._seeked)
        if self.uncommitted and self._may_commit():
            # Offsets whose commit failed (a rebalance, an outage) or waited for the answer to
            # the one before (``commit``). A failure here must not lose the polled records
            # (the consumer's position has moved past them): the next poll tries again.
            try:
                self._commit_uncommitted()
            except TransientError as exc:
                log.warning("deferred offset commit failed (%s); retrying after the next poll", exc)
        out: list[SourceRecord] = []
        for tp, messages in batches.items():
            if tp.partition not in self.owned or tp.partition in sought:
                continue  # fetched just before a revocation (the new owner reads it) or a seek
            for m in messages:
                if m.value is None:
                    self._tombstone(tp.partition, m.offset)
                    continue
                origin = rekeyed_from(m.headers) if m.headers else None
                out.append(
                    SourceRecord(
                        tp.topic, tp.partition, m.offset, m.value, m.timestamp, m.key, origin
                    )
                )
        return out

    def seek(self, partition: int, offset: int) -> None:
        """Read an owned ``partition`` from ``offset`` on (in an assignment hook: the trainer
        resumes where its restored model version left off, not at the group's commit)."""
        if partition not in self.owned:
            raise ValueError(f"partition {partition} of {self.topic} is not owned")
        try:
            self.consumer.seek(TopicPartition(self.topic, partition), offset)
        except KafkaError as exc:  # an assignment lost meanwhile
            raise TransientError(f"Kafka seek failed: {exc}") from exc
        self._seeked.add(partition)
        self.uncommitted.pop(partition, None)

    def _tombstone(self, partition: int, offset: int) -> None:
        """A record with a null value: no event to decode, and nothing to dead-letter."""
        self.tombstones += 1
        if self.on_tombstone is not None:
            self.on_tombstone()
        self._skipped[partition] = offset + 1
        now = time.monotonic()
        if now >= self._tombstone_log_at:
            since = self.tombstones - self._tombstones_logged
            log.warning(
                "skipping tombstone%s (null value) in %s partition %d at offset %d%s; a "
                "tombstone carries no event (streamscore_tombstones_total counts them)",
                "s" if since > 1 else "",
                self.topic,
                partition,
                offset,
                f" and {since - 1} more since the last report" if since > 1 else "",
            )
            self._tombstones_logged = self.tombstones
            self._tombstone_log_at = now + TOMBSTONE_LOG_EVERY_S

    def _fenced(self, exc: Exception) -> ConfigError:
        return ConfigError(
            f"another consumer of group {self.consumer.config['group_id']!r} uses the group "
            f"instance id {self.instance_id!r} ({exc}); every process needs its own "
            "STREAMSCORE_KAFKA_GROUP_INSTANCE_ID"
        )

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        """Commit saved offsets without waiting for the broker's answer.

        The batch's states are saved and its outputs flushed before this is called, so any
        commit that lands is safe, and one that is lost is superseded by the next batch's
        (offsets only grow): waiting for it would only add its round trip, about a quarter
        of a batch at 5k events/s, to every event's latency. The answer arrives in a later
        ``poll``; offsets stay in ``uncommitted`` until then, and ``close`` commits what is
        still unconfirmed synchronously.

        One commit is in flight at a time: while one is unanswered, these offsets wait in
        ``uncommitted`` and go out after the poll that brings the answer, together with any
        later batch's. A fast loop of small batches then neither pays for commits the next
        one supersedes nor piles them up past the client's in-flight limit (which refused
        them: ``NodeNotReadyError``, retried later all the same).
        """
        for p, o in next_offsets.items():
            if p in self.owned:  # a revoked partition's next owner commits for it
                self.uncommitted[p] = max(o, self.uncommitted.get(p, o))
        if self._may_commit():
            self._commit_uncommitted()

    def _may_commit(self) -> bool:
        """No commit is unanswered (or its answer is overdue, so it may be lost)."""
        return not self.commits_in_flight or time.monotonic() - self._commit_sent > BROKER_WAIT_S

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
        sent_at = self.watch.clock()
        try:
            self.consumer.commit_async(
                offsets, callback=lambda done, result: self._on_commit(done, result, sent_at)
            )
        except FencedInstanceIdError as exc:  # raised at once when the fence is already known
            raise self._fenced(exc) from None
        except KafkaError as exc:
            raise TransientError(f"Kafka offset commit failed: {exc}") from exc
        self.commits_in_flight += 1
        self._commit_sent = time.monotonic()

    def _on_commit(
        self, offsets: Mapping[TopicPartition, OffsetAndMetadata], result: Any, sent_at: float
    ) -> None:
        """The broker's answer to an asynchronous commit (called on this thread, in poll)."""
        self.commits_in_flight -= 1
        if isinstance(result, Exception):
            self.failed_commits += 1
            if isinstance(result, FencedInstanceIdError):
                self._fenced_by = result
            if isinstance(result, UNREACHABLE):
                self.watch.failed("commit offsets", result, sent_at=sent_at)
            # During a rebalance the coordinator refuses commits until this consumer rejoins,
            # which happens only inside poll; after an outage or a coordinator move, the
            # same. The offsets stay in ``uncommitted`` and go out again after a later poll,
            # for the partitions still owned; if the partitions went elsewhere, the new
            # owner's replay of them changes nothing.
            if not self._deferring:
                log.warning("offset commit deferred until it can be retried (%s)", result)
            self._deferring = True
            return
        self.watch.answered()
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
        """Connected: Kafka answers (``BrokerWatch``), the last poll worked, and a broker
        connection is up (as kafka-python's client reports it, where it can)."""
        client = getattr(self.consumer, "_client", None)
        connected = (
            not (self._closed or self._poll_failed or self.watch.down)
            and self._last_poll_ms is not None
        )
        if connected and client is not None and hasattr(client, "connected"):
            try:
                brokers = client.cluster.brokers()
                connected = any(client.connected(b.nodeId) for b in brokers)
            except (AttributeError, KafkaError):
                pass
        return SourceHealth(connected=connected, last_poll_ms=self._last_poll_ms)

    def lag(self) -> dict[int, int]:
        """Records between our position and the end of each owned partition.

        Also the liveness check of an idle scorer (kafka-python tells a poll nothing of an
        outage): a lookup that gets no answer within PROBE_WAIT_S reports Kafka unreachable,
        the first one answered reports it back.
        """
        parts = [TopicPartition(self.topic, p) for p in self.owned]
        if not parts:  # no partitions to look up (a group that cannot join, say)
            if not self.watch.reachable():
                self.watch.failed("connection check", "no bootstrap server accepts connections")
            return {}
        try:
            ends = self.consumer.end_offsets(parts, timeout_ms=int(PROBE_WAIT_S * 1000))
        except KafkaTimeoutError as exc:
            cause = "no bootstrap server accepts connections" if not self.watch.reachable() else exc
            self.watch.failed("offsets lookup", cause)
            return {}
        except KafkaError:
            return {}
        self.watch.answered()
        lags = {}
        for tp in parts:
            try:  # our position, known without a round trip once fetching has started
                at = self.consumer.position(tp, timeout_ms=0)
            except KafkaError:
                continue
            if at is not None:
                lags[tp.partition] = max(ends[tp] - at, 0)
        return lags

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
        """Commit what is unconfirmed (unless Kafka is unreachable), leave, close; bounded."""
        self._closed = True
        if self.uncommitted:
            # One last try for unconfirmed offsets; left behind, they only mean a short replay.
            if self.watch.down:
                log.warning(
                    "closing with offsets %s uncommitted: Kafka is unreachable", self.uncommitted
                )
            else:
                try:
                    self._commit_uncommitted_sync()
                except TransientError as exc:
                    log.warning("closing with offsets uncommitted (%s)", exc)
        wait_s = 1.0 if self.watch.down else BROKER_WAIT_S
        self.consumer.close(autocommit=False, timeout_ms=int(wait_s * 1000))
