"""The thin loop that wires a source, a state store and a sink around the pure scorer.

One batch, in this order (DESIGN.md §1, with one deliberate change, see below):

    poll → decode (bad → DLQ) → watermark → load states (1 round trip) → apply events
    → due users (1 round trip) → resolve labels / rescore silences → send outputs
    → flush producer → save states (1 round trip) → commit offsets

Outputs are flushed *before* states are saved. Saved states make replayed events no-ops, so
if states were saved first and the process died before the flush, that batch's scores would
never be sent; this order makes outputs at-least-once (ids let consumers deduplicate) and
still commits nothing that is not saved.

What the model lineage learns from (resolved labels, snapshots' customers) is not learnt
here: the scorer's learner turns it into ``training-examples`` records, which go out with the
batch's other outputs, so they are flushed before the states that resolved them are saved
(``core/lineage.py``). A batch redone after a crash publishes the same record ids again; the
trainer drops the repeats.

Every step that crosses a process boundary retries ``TransientError`` with backoff; processing
itself runs once per batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from streamscore import key_contract
from streamscore.core.events import Event, EventLimits, decode_event
from streamscore.core.records import TOPIC_DLQ, TOPIC_SCORES, TOPIC_SEGMENTS, dead_letter
from streamscore.core.scorer import Scorer
from streamscore.core.state import UserState
from streamscore.core.timeutil import iso
from streamscore.core.values import Output
from streamscore.core.watermark import Verdict, WatermarkRule
from streamscore.errors import InvalidEvent
from streamscore.event_clock import EventClock, blob_name
from streamscore.guards import DeadLetterGuard, OnRetry, RetryPolicy
from streamscore.key_contract import KeyPolicy
from streamscore.logging_setup import batch_context, end_batch
from streamscore.ports import Sink, Source, SourceRecord, StateStore

if TYPE_CHECKING:
    from streamscore.erasures import Erasures

log = logging.getLogger("streamscore.runtime")
# Due users a partition may rescore in any batch, however small: an idle input still drains.
DUE_FLOOR_PER_PARTITION = 25
Clock = Callable[[], int]
LatePolicy = Literal["dead_letter", "apply"]


def dead_letter_of(rec: SourceRecord, exc: InvalidEvent, now: int) -> Output:
    """The ``user-events-dlq`` record of an input record that cannot be processed."""
    return Output(
        TOPIC_DLQ,
        "",
        dead_letter(
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            raw=rec.value,
            error_type=exc.error_type,
            error=exc.message,
            now_ms=now,
        ),
    )


def wall_clock_ms() -> int:
    """Milliseconds since the epoch; only for ``scored_at``, DLQ times and the future-skew check."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class BatchStats:
    """What one batch did, for progress display and metrics."""

    records: int = 0
    events: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)  # invalid input, by error type
    late_events: int = 0  # valid events behind their watermark (dead-lettered or applied)
    late_applied: int = 0  # of those, applied to features (late_events=apply)
    held_events: int = 0  # too far ahead of their partition to move its watermark alone
    rekeyed: int = 0  # records produced again, keyed by their user id (key_contract)
    outputs: dict[str, int] = field(default_factory=dict)
    users: int = 0
    due_users: int = 0  # loaded without events of theirs: a label or a silence fell due
    due_expired: int = 0  # queued as due, but their state had expired: dropped from the queue
    # Users were left further behind their watermark than the lateness allowed: the next
    # batch reads one record, so the input waits for them.
    due_behind: bool = False
    erased_events: int = 0  # events of erased users at or before their erasure: dropped
    seconds: dict[str, float] = field(default_factory=dict)
    watermarks: dict[int, int] = field(default_factory=dict)
    max_event_ms: int = 0
    input_timestamps_ms: list[int] = field(default_factory=list)
    churn_scores: list[float] = field(default_factory=list)
    predicted_values: list[float] = field(default_factory=list)
    segment_moves: dict[tuple[str, str], int] = field(default_factory=dict)
    next_offsets: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Batch:
    """One batch's working set, handed from step to step of ``Pipeline.run_once``."""

    records: list[SourceRecord]
    now: int
    stats: BatchStats = field(default_factory=BatchStats)
    outputs: list[Output] = field(default_factory=list)
    groups: dict[str, list[tuple[int, int, Event]]] = field(default_factory=dict)
    late: list[tuple[SourceRecord, Event, InvalidEvent]] = field(default_factory=list)
    # Each admitted record's partition watermark just before it was read (see
    # ``Scorer.apply_events``): what makes a state independent of batch boundaries.
    watermarks_before: dict[tuple[int, int], int] = field(default_factory=dict)
    # Where each re-keyed record came from (``key_contract``), by its own position.
    origins: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    # Positions of the late events to apply (late_events=apply), not dead-letter.
    late_positions: set[tuple[int, int]] = field(default_factory=set)
    states: dict[str, UserState] = field(default_factory=dict)
    # Due-queue entries to drop, by partition: users whose partition changed (the topic
    # grew) and queued users whose state has expired.
    dropped: dict[int, dict[str, int | None]] = field(default_factory=dict)


def _count_outputs(stats: BatchStats, outputs: list[Output]) -> None:
    """Fold a batch's outputs into its stats, for metrics and the progress display."""
    for o in outputs:
        stats.outputs[o.topic] = stats.outputs.get(o.topic, 0) + 1
        if o.value is None:
            continue  # a tombstone
        if o.topic == TOPIC_SCORES:
            stats.churn_scores.append(o.value["churn_probability"])
            stats.predicted_values.append(o.value["predicted_value"])
        elif o.topic == TOPIC_SEGMENTS:
            move = (str(o.value["previous"] or "none"), str(o.value["current"]))
            stats.segment_moves[move] = stats.segment_moves.get(move, 0) + 1


class Pipeline:
    """Runs batches from a source through the scorer into a sink, state in a store."""

    def __init__(
        self,
        source: Source,
        store: StateStore,
        sink: Sink,
        scorer: Scorer,
        *,
        limits: EventLimits,
        batch_size: int = 2000,
        poll_timeout_s: float = 0.2,
        due_limit: int = 20_000,
        due_per_record: float | None = None,
        idle_after_ms: int | None = None,
        clock: Clock = wall_clock_ms,
        retry: RetryPolicy | None = None,
        dlq_guard: DeadLetterGuard | None = None,
        on_retry: OnRetry | None = None,
        erasures: Erasures | None = None,
        on_key_mismatch: KeyPolicy | None = None,
        max_lead_ms: int | None = None,
        agreeing: int = 2,
        late_events: LatePolicy = "dead_letter",
    ) -> None:
        """``on_key_mismatch`` None: the source has no keys to check (files, the demo).
        ``max_lead_ms`` None: every event may move its partition's watermark (see
        ``core/watermark.py``). ``late_events``: what an event at or behind its partition's
        watermark does (``Scorer.apply_events`` says what "apply" means)."""
        self.source = source
        self.erasures = erasures  # the user-erasures step (``erasures.py``), when wired
        self.store = store
        self.sink = sink
        self.scorer = scorer
        self.limits = limits
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.due_limit = due_limit
        self.due_per_record = due_per_record
        self.idle_after_ms = idle_after_ms
        # Wall-clock time of each owned partition's latest record (or of its assignment),
        # and the partitions whose watermark currently follows the others (see
        # ``_follow_active_partitions``).
        self._last_input_ms: dict[int, int] = {}
        self._following: set[int] = set()
        # Whether the last batch left users further behind their watermark than the
        # lateness allowed (``_advance_due_users``): the next batch then reads one record at
        # most, without waiting for it.
        self._due_behind = False
        self.clock = clock
        self.retry = retry or RetryPolicy()
        self.dlq_guard = dlq_guard
        self.on_retry = on_retry
        self.on_key_mismatch = on_key_mismatch
        self.late_events = late_events
        self.lateness_ms = scorer.config.allowed_lateness_ms
        self.event_clock = EventClock(WatermarkRule(self.lateness_ms, max_lead_ms, agreeing))
        self.watermarks = self.event_clock.watermarks
        self._learning_unsaved = False
        source.on_rebalance(self._assigned, self._revoked)

    # -- rebalancing ----------------------------------------------------------------------

    def _assigned(self, partitions: set[int]) -> None:
        """Pick up where the previous owner of these partitions saved its watermarks."""
        saved = self.retry.run("load watermarks", lambda: self.store.watermarks(partitions))
        held = self.retry.run(
            "load watermarks", lambda: {p: self.store.get_blob(blob_name(p)) for p in partitions}
        )
        self.event_clock.assigned(saved, held)
        now = self.clock()
        for p in partitions:
            self._last_input_ms[p] = now
        if self.erasures is not None:
            self.erasures.assigned(partitions)
        log.info("assigned partitions %s (watermarks %s)", sorted(partitions), saved)

    def _revoked(self, partitions: set[int]) -> None:
        """Forget partitions another process now owns; their state is already saved."""
        self.event_clock.revoked(partitions)
        for p in partitions:
            self._last_input_ms.pop(p, None)
            self._following.discard(p)
        if self.erasures is not None:
            self.erasures.revoked(partitions)
        log.info("revoked partitions %s", sorted(partitions))

    # -- one batch ------------------------------------------------------------------------

    def run_once(self) -> BatchStats:
        """Poll, process and persist one batch; returns what it did.

        The steps in order; each crossing of a process boundary is retried on its own.
        """
        t0 = time.perf_counter()
        # Behind on silent users: one record at most, and no waiting for it (there is work).
        wanted, wait = (1, 0.0) if self._due_behind else (self.batch_size, self.poll_timeout_s)
        records = self.retry.run("poll", lambda: self.source.poll(wanted, wait), self.on_retry)
        batch_context(records)  # log lines from here on name the batch's offsets
        batch = _Batch(records, self.clock())
        if self.erasures is not None:  # before the events: none may bring an erased user back
            batch.outputs.extend(self.erasures.process(batch.now))
        self._decode(batch)
        t1 = time.perf_counter()
        self._load_event_users(batch)
        t2 = time.perf_counter()
        self._apply_events(batch)
        # The scores of this batch's events go to the producer now, ahead of the silent users'
        # work below, so a batch heavy with due users does not delay them. Safety is the same:
        # everything is flushed before any state is saved.
        self.retry.run("send outputs", lambda: self.sink.send(batch.outputs), self.on_retry)
        sent = len(batch.outputs)
        self._follow_active_partitions(batch.now)
        self._advance_due_users(batch)
        learner = self.scorer.learner
        batch.outputs.extend(learner.take())  # training-examples records, flushed with the rest
        t4 = time.perf_counter()
        self.retry.run("send outputs", lambda: self.sink.send(batch.outputs[sent:]), self.on_retry)
        self.retry.run("flush producer", self.sink.flush, self.on_retry)
        learner.delivered()
        t5 = time.perf_counter()
        self._save(batch.states, batch.dropped)
        if self.erasures is not None:
            self.erasures.after_save(self.watermarks)
        t6 = time.perf_counter()
        offsets = batch.stats.next_offsets
        if offsets:
            self.retry.run("commit offsets", lambda: self.source.commit(offsets), self.on_retry)
        t7 = time.perf_counter()
        end_batch()

        stats = batch.stats
        _count_outputs(stats, batch.outputs)
        stats.users = len(batch.states)
        stats.watermarks = dict(self.watermarks)
        stats.seconds = {
            "poll_decode": t1 - t0,
            "load": t2 - t1,
            "score": t4 - t2,
            "produce": t5 - t4,
            "save": t6 - t5,
            "commit": t7 - t6,
            "total": t7 - t0,
        }
        return stats

    def _decode(self, batch: _Batch) -> None:
        """Decode records, dead-letter the bad, and group good events by user."""
        stats, now = batch.stats, batch.now
        stats.records = len(batch.records)
        for rec in batch.records:
            stats.next_offsets[rec.partition] = rec.offset + 1
            if rec.timestamp_ms is not None:
                stats.input_timestamps_ms.append(rec.timestamp_ms)
            try:
                event = decode_event(rec.value, now_ms=now, limits=self.limits)
            except InvalidEvent as exc:
                batch.outputs.append(self._dead_letter(rec, exc, now, stats))
                continue
            if self.erasures is not None and self.erasures.blocks(event.user_id, event.ts):
                stats.erased_events += 1
                continue
            if self.on_key_mismatch is not None and (why := key_contract.mismatch(rec, event)):
                if self.on_key_mismatch == "rekey":
                    batch.outputs.append(key_contract.rekeyed_copy(rec, event))
                    stats.rekeyed += 1
                else:
                    batch.outputs.append(self._dead_letter(rec, why, now, stats))
                continue
            position = (rec.partition, rec.offset)
            batch.watermarks_before[position] = self.watermarks.get(rec.partition, 0)
            if rec.origin is not None:
                batch.origins[position] = rec.origin
            verdict = self.event_clock.admit(rec.partition, rec.offset, event.ts, event.user_id)
            if verdict is Verdict.LATE:
                if self.late_events == "dead_letter":
                    batch.late.append((rec, event, self._late(rec.partition, event.ts)))
                    continue
                # Late by the watermark before this very record: the same verdict however
                # the input is cut into batches. Applied in its place among the user's events.
                batch.late_positions.add(position)
            stats.held_events += verdict is Verdict.HELD
            stats.events += 1
            stats.max_event_ms = max(stats.max_event_ms, event.ts)
            batch.groups.setdefault(event.user_id, []).append((rec.partition, rec.offset, event))
        for partition in stats.next_offsets:
            self._last_input_ms[partition] = now

    def _load_event_users(self, batch: _Batch) -> None:
        """Load the states of the batch's users, and tell redeliveries from late events.

        An event behind the watermark that its user's state has already applied is a
        redelivery (the process died after saving a batch, before committing it) or a
        duplicate: ignored like any duplicate. Only the others are late, and dead-lettered.
        Checked against the saved state as the batch's events before it in the input would
        have left it (``_probe``), so one batch judges it as one batch per record would.
        """
        late_only = [e.user_id for _, e, _ in batch.late if e.user_id not in batch.groups]
        states = self._load([*batch.groups, *dict.fromkeys(late_only)])
        probes: dict[str, tuple[UserState, list[tuple[int, int, Event]]]] = {}
        kept = []
        for rec, event, why in sorted(batch.late, key=lambda late: late[0].offset):
            uid = event.user_id
            if uid not in probes:
                probes[uid] = (
                    _probe(states[uid]),
                    sorted(batch.groups.get(uid, []), key=lambda e: e[1]),
                )
            probe, before = probes[uid]
            while before and before[0][1] < rec.offset:
                p, o, e = before.pop(0)
                origin = batch.origins.get((p, o))
                if not probe.seen(p, o, e.event_id, origin):
                    probe.mark(p, o, e.event_id, origin)
            if not self._duplicate(probe, rec, event):
                kept.append((rec, event, why))
        batch.late = kept
        for uid in late_only:
            states.pop(uid, None)
        batch.states = states

    def _apply_events(self, batch: _Batch) -> None:
        """Apply each user's events, then dead-letter the late ones no user has applied."""
        states, now = batch.states, batch.now
        previous = {u: s.partition for u, s in states.items()}
        counters = self.scorer.counters
        applied_before = counters.late_applied
        for uid, events in batch.groups.items():
            batch.outputs.extend(
                self.scorer.apply_events(
                    states[uid],
                    events,
                    now,
                    batch.watermarks_before,
                    origins=batch.origins,
                    late=batch.late_positions,
                )
            )
        # Only the late events applied now: a redelivered one is a duplicate, as when
        # late events are dead-lettered.
        batch.stats.late_applied = counters.late_applied - applied_before
        batch.stats.late_events += batch.stats.late_applied
        for uid, before in previous.items():
            if before >= 0 and before != states[uid].partition:
                batch.dropped.setdefault(before, {})[uid] = None  # the topic grew
        for rec, _, why in batch.late:
            # Valid input, only too late for its labels: a dead letter, but not invalid
            # (counted apart, never held against the input by the dead-letter limit).
            batch.outputs.append(dead_letter_of(rec, why, now))
            batch.stats.late_events += 1
        if self.dlq_guard is not None and batch.records:
            self.dlq_guard.observe(batch.stats.dead_letters, len(batch.records))

    def _advance_due_users(self, batch: _Batch) -> None:
        """Resolve labels and rescore silences up to the watermarks, for the batch's users
        and for users whose time has come although they sent nothing.

        Users due within the allowed lateness of their watermark are spread over batches
        (``_due_limit``); users further behind are advanced now, a batch's worth per
        partition. If more are left, the input waits: the next batch reads a single record.
        A due user must not fall behind for long: the snapshot it is owed would be taken
        late, with models that have since learnt labels from the snapshot's own horizon, so
        its stored prediction would know the future (on CDNOW master, read a day per batch,
        grid snapshots were taken a median 35 days late, and the serving gate chose
        corrections on the strength of those predictions).
        """
        live = {p: wm for p, wm in self.watermarks.items() if wm > 0}
        limit = self._due_limit(len(batch.records), len(live))
        due = self.retry.run("query due users", lambda: self.store.due(live, limit), self.on_retry)
        self._due_behind = False
        # Only a partition whose share was used up can have users left further behind.
        overdue_up_to = {
            p: wm - self.lateness_ms
            for p, wm in live.items()
            if len(due.get(p, ())) >= limit and wm - self.lateness_ms > 0
        }
        if overdue_up_to:
            cap = self.batch_size
            overdue = self.retry.run(
                "query due users", lambda: self.store.due(overdue_up_to, cap), self.on_retry
            )
            for partition, users in overdue.items():
                # Both lists are earliest first: the overdue ones, then the rest of the share.
                due[partition] = list(dict.fromkeys([*users, *due.get(partition, ())]))
                if len(users) >= cap:
                    self._due_behind = True
            batch.stats.due_behind = self._due_behind
        states = batch.states
        # A list, not a set: the order users are advanced in is the order the models learn
        # in, and it must not depend on the interpreter's hash seed.
        extra = list(dict.fromkeys(u for users in due.values() for u in users if u not in states))
        found = self._load(extra, missing="skip")
        for partition, users in due.items():
            for uid in users:
                if uid in extra and uid not in found:
                    batch.dropped.setdefault(partition, {})[uid] = None  # state expired
                    batch.stats.due_expired += 1
        states.update(found)
        batch.stats.due_users = len(found)
        for state in states.values():
            wm = self.watermarks.get(state.partition)
            if wm:
                batch.outputs.extend(self.scorer.advance(state, wm, batch.now))

    def _follow_active_partitions(self, now: int) -> None:
        """Move the watermarks of idle partitions up to the slowest active one.

        A partition's watermark moves only with its own events, so in a partition that has
        gone quiet (few users on a topic with many partitions, a night) silences and label
        horizons would wait for its next event: exactly the users who churn would not be
        rescored. After ``idle_after_ms`` of wall-clock time without records, and with
        nothing left to read there (not merely starved by a busy fetch), the partition
        follows the lowest watermark among this process's active partitions, as idle
        sources do in Flink. The price: an event that then arrives there behind that
        watermark is late and dead-lettered, like one behind its own watermark. This is the
        only place the wall clock touches event time, and only while a partition is idle.
        """
        if self.idle_after_ms is None:
            return
        cutoff = now - self.idle_after_ms
        quiet = {p for p in self.watermarks if self._last_input_ms.setdefault(p, now) <= cutoff}
        # Quiet because nothing was produced, not because the fetch served other partitions.
        idle = self.source.caught_up(quiet) if quiet else set()
        self._following.intersection_update(idle)
        active = [wm for p, wm in self.watermarks.items() if p not in idle and wm > 0]
        if not idle or not active:
            return
        target = min(active)
        for p in idle:
            if target > self.watermarks[p]:
                if p not in self._following:
                    self._following.add(p)
                    log.info(
                        "partition %d has had no input for %.0fs: its watermark follows the "
                        "active partitions (now %s)",
                        p,
                        (now - self._last_input_ms[p]) / 1000,
                        iso(target),
                    )
                self.event_clock.follow(p, target)

    def _due_limit(self, records: int, partitions: int) -> int:
        """Due users per partition for this batch.

        Silences and label horizons fall due in bursts (many users share a horizon), and a
        batch that rescored a whole burst held back the scores of the events behind it
        (p99 latency). Tied to the batch's record count, the work stays proportional, and
        a burst drains over the next batches while the average need stays below the ratio.
        """
        if self.due_per_record is None or partitions == 0:
            return self.due_limit
        share = int(records * self.due_per_record / partitions)
        return min(self.due_limit, max(DUE_FLOOR_PER_PARTITION, share))

    def _duplicate(self, state: UserState, rec: SourceRecord, event: Event) -> bool:
        if state.seen(rec.partition, rec.offset, event.event_id, rec.origin):
            self.scorer.counters.duplicates += 1
            return True
        return False

    def _dead_letter(
        self, rec: SourceRecord, exc: InvalidEvent, now: int, stats: BatchStats
    ) -> Output:
        """The dead letter of an invalid record, counted as such."""
        stats.dead_letters[exc.error_type] = stats.dead_letters.get(exc.error_type, 0) + 1
        return dead_letter_of(rec, exc, now)

    def _late(self, partition: int, ts: int) -> InvalidEvent:
        """Why an event at or before its partition's watermark (``core/watermark.py``) is late."""
        behind = (self.watermarks[partition] - ts) / 1000
        return InvalidEvent(
            "late_event",
            f"event time is {behind:.0f}s behind partition {partition}'s watermark (allowed "
            f"lateness {self.lateness_ms / 1000:.0f}s); labels up to the watermark are already "
            "final",
        )

    def _load(
        self, user_ids: Iterable[str], *, missing: Literal["new", "skip"] = "new"
    ) -> dict[str, UserState]:
        """States of these users; a user without one gets a new state, or is left out."""
        ids = list(user_ids)
        if not ids:
            return {}

        def load() -> dict[str, UserState]:
            # Decoded inside the retried step: a state only a newer version can read
            # (NewerFormatError, transient) keeps the batch from going on, uncommitted.
            raw = self.store.load(ids)
            if missing == "skip":
                return {u: UserState.from_bytes(u, b) for u, b in raw.items()}
            return {
                u: UserState.from_bytes(u, raw[u]) if u in raw else UserState(user_id=u)
                for u in ids
            }

        return self.retry.run("load states", load, self.on_retry)

    def _save(
        self, states: dict[str, UserState], dropped: dict[int, dict[str, int | None]]
    ) -> None:
        if not states and not self.watermarks and not dropped:
            return
        blobs = {u: s.to_bytes() for u, s in states.items()}
        due: dict[int, dict[str, int | None]] = {p: dict(d) for p, d in dropped.items()}
        for u, s in states.items():
            due.setdefault(s.partition, {})[u] = self.scorer.due_ms(s)
        wms = dict(self.watermarks)
        held = self.event_clock.blobs()

        def save() -> None:
            self.store.save(blobs, due, wms)
            for name, data in held.items():  # after the states: never ahead of them
                self.store.put_blob(name, data)

        self.retry.run("save states", save, self.on_retry)
        self.event_clock.saved()

    # -- driving --------------------------------------------------------------------------

    def run_until_exhausted(self, on_batch: Callable[[BatchStats], None] | None = None) -> None:
        """Process a finite source to its end, then let the watermark settle due users.

        Raises ``DeadLetterLimitExceeded`` when the input is mostly invalid (see
        ``DeadLetterGuard``), like ``streamscore run``.

        The last batch leaves users waiting whose labels or silences are due at or before the
        final watermarks when there were more than one batch may take (``due_limit``, the
        per-record share): batches without input run until one finds nobody due.
        """
        while not self.source.exhausted():
            stats = self.run_once()
            if on_batch is not None:
                on_batch(stats)
        if self.dlq_guard is not None:
            self.dlq_guard.finish()
        while True:
            stats = self.run_once()
            if on_batch is not None:
                on_batch(stats)
            if stats.due_users == 0 and stats.due_expired == 0:
                return


def _probe(state: UserState) -> UserState:
    """A copy of what tells a state's duplicates apart (positions, id ring, re-key origins)."""
    return UserState(
        state.user_id,
        state.partition,
        state.offset,
        list(state.recent_ids),
        offsets_elsewhere=dict(state.offsets_elsewhere),
        rekeyed=dict(state.rekeyed),
    )
