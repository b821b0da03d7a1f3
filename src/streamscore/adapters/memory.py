"""In-memory state store and list source/sink: the embedded default and the test twins.

The store keeps the same serialized bytes the Redis store keeps, so sizes, round trips and the
contract tests are the same for both.
"""

from __future__ import annotations

import bisect
import heapq
import time
from collections import deque
from collections.abc import Collection, Iterable, Iterator, Mapping

from streamscore.core.records import TOPIC_EVENTS
from streamscore.core.values import Output
from streamscore.ports import CommitStatus, RebalanceHook, SourceHealth, SourceRecord


class MemoryStateStore:
    """A ``StateStore`` in process memory."""

    def __init__(self) -> None:
        self.states: dict[str, bytes] = {}
        self._due: dict[int, dict[str, int]] = {}
        self._heaps: dict[int, list[tuple[int, str]]] = {}
        self._watermarks: dict[int, int] = {}
        self._blobs: dict[str, bytes] = {}

    def load(self, user_ids: Collection[str]) -> dict[str, bytes]:
        return {u: self.states[u] for u in user_ids if u in self.states}

    def save(
        self,
        states: Mapping[str, bytes],
        due: Mapping[int, Mapping[str, int | None]],
        watermarks: Mapping[int, int],
    ) -> None:
        self.states.update(states)
        for partition, entries in due.items():
            current = self._due.setdefault(partition, {})
            heap = self._heaps.setdefault(partition, [])
            for user, at in entries.items():
                if at is None:
                    current.pop(user, None)
                elif current.get(user) != at:
                    current[user] = at
                    heapq.heappush(heap, (at, user))
        for partition, wm in watermarks.items():
            self._watermarks[partition] = max(wm, self._watermarks.get(partition, wm))

    def due(self, up_to: Mapping[int, int], limit: int) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for partition, wm in up_to.items():
            heap = self._heaps.get(partition, [])
            current = self._due.get(partition, {})
            users: list[str] = []
            # Entries stay queued until a save moves or removes them, as in Redis; stale
            # heap entries (superseded times) are dropped on the way.
            seen: set[str] = set()
            keep: list[tuple[int, str]] = []
            while heap and heap[0][0] <= wm and len(users) < limit:
                at, user = heapq.heappop(heap)
                if current.get(user) == at and user not in seen:
                    users.append(user)
                    seen.add(user)
                    keep.append((at, user))
            for item in keep:
                heapq.heappush(heap, item)
            if users:
                out[partition] = users
        return out

    def due_count(self) -> int:
        """How many users wait in due queues (for tests and metrics)."""
        return sum(len(d) for d in self._due.values())

    def watermarks(self, partitions: Iterable[int]) -> dict[int, int]:
        return {p: self._watermarks[p] for p in partitions if p in self._watermarks}

    def get_blob(self, name: str) -> bytes | None:
        return self._blobs.get(name)

    def put_blob(self, name: str, data: bytes) -> None:
        self._blobs[name] = data

    def close(self) -> None:
        return None


class MemoryGroup:
    """A consumer group's committed offsets, kept apart from any one source as Kafka keeps
    them: a source created again on the same group resumes where the last one committed."""

    def __init__(self) -> None:
        self.committed: dict[int, int] = {}


class ListSource:
    """A source over records in memory with a Kafka consumer's semantics (tests, the demo).

    - Assignment is queued and applied at the next ``poll``, rebalance hooks included, like
      ``KafkaSource``: at first all of ``partitions`` (as a group's only member gets them;
      by default those a list's records are on, or partition 0 of a lazy iterable);
      ``revoke`` and ``assign`` queue a rebalance the same way (what another member joining
      or leaving does).
    - Each partition is read from its group's committed offset: records below it are never
      returned, and a partition assigned again starts there, re-reading what was polled but
      not committed. Records are kept until committed, so the rewind is exact.
    - ``records`` may be any iterable, read lazily as polls need it (the demo's simulator);
      a list or tuple is read at once, so ``lag`` is exact. ``produce`` appends records, as
      a producer writing to the topic would. ``hold`` keeps a partition's records from being
      returned, as when a busy fetch serves the other partitions first.
    - ``endless`` sources never say they are exhausted (a live topic).
    - ``max_span_ms``: a poll also ends before a record whose timestamp is more than this
      after the first record's, so that replaying a sparse history moves event time (and
      with it watermarks, labels and refits) in steps as a live stream would, rather than
      months per batch.
    """

    def __init__(
        self,
        records: Iterable[SourceRecord] = (),
        topic: str = TOPIC_EVENTS,
        *,
        partitions: Iterable[int] | None = None,
        group: MemoryGroup | None = None,
        endless: bool = False,
        max_span_ms: int | None = None,
    ) -> None:
        self.topic = topic
        self.max_span_ms = max_span_ms
        self.group = group or MemoryGroup()
        self.endless = endless
        self._incoming: Iterator[SourceRecord] = iter(records)
        self._drained = False
        self._turn = 0  # which readable partition a poll starts with
        # Per partition: fetched records not yet committed, in offset order.
        self._kept: dict[int, _Log] = {}
        self._position: dict[int, int] = {}  # owned partition -> next offset to return
        self._next_offset: dict[int, int] = {}  # for ``produce``
        self._held: set[int] = set()
        eager = isinstance(records, list | tuple)
        if partitions is None:  # the topic's partitions: those its records are on
            partitions = ({r.partition for r in records} or {0}) if eager else {0}
        self._rebalances: deque[tuple[str, set[int]]] = deque([("assigned", set(partitions))])
        self._assigned_hook: RebalanceHook | None = None
        self._revoked_hook: RebalanceHook | None = None
        self._last_poll_ms: int | None = None
        self._closed = False
        if eager:
            self._fetch(None)

    @property
    def committed(self) -> dict[int, int]:
        """The group's committed offsets."""
        return self.group.committed

    @property
    def owned(self) -> set[int]:
        """Partitions assigned to this source as of its last poll."""
        return set(self._position)

    # -- test controls: what producers and other group members would do --------------------

    def produce(self, partition: int, value: bytes, timestamp_ms: int | None = None) -> int:
        """Append a record to ``partition`` at its next offset; returns that offset."""
        offset = self._next_offset.get(partition, 0)
        self._keep(SourceRecord(self.topic, partition, offset, value, timestamp_ms))
        return offset

    def revoke(self, partitions: Iterable[int]) -> None:
        """Queue the loss of ``partitions`` (applied, hook called, at the next poll)."""
        self._rebalances.append(("revoked", set(partitions)))

    def assign(self, partitions: Iterable[int]) -> None:
        """Queue the gain of ``partitions``, read from their committed offsets."""
        self._rebalances.append(("assigned", set(partitions)))

    def seek(self, partition: int, offset: int) -> None:
        """Read an owned ``partition`` from ``offset`` on (not before the group's commit:
        committed records are forgotten)."""
        if partition not in self._position:
            raise ValueError(f"partition {partition} of {self.topic} is not owned")
        if offset < self.group.committed.get(partition, 0):
            raise ValueError(f"offset {offset} of partition {partition} is before the commit")
        self._position[partition] = offset

    def hold(self, partitions: Iterable[int]) -> None:
        """Keep these partitions' records from polls until ``release``."""
        self._held |= set(partitions)

    def release(self, partitions: Iterable[int]) -> None:
        """Let held partitions' records through again."""
        self._held -= set(partitions)

    # -- Source ----------------------------------------------------------------------------

    def on_rebalance(self, assigned: RebalanceHook, revoked: RebalanceHook) -> None:
        self._assigned_hook, self._revoked_hook = assigned, revoked

    def poll(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        if self._closed:
            raise RuntimeError("poll on a closed source")
        self._apply_rebalances()
        self._fetch(max_records)
        # Like Kafka's fetcher: partition after partition, starting one further each poll so
        # a partition with a backlog cannot starve the others.
        readable = self._readable()
        out: list[SourceRecord] = []
        span = self.max_span_ms
        until: int | None = None
        if readable:
            first = self._turn % len(readable)
            self._turn += 1
            for p in readable[first:] + readable[:first]:
                taken = self._log(p).take(self._position[p], max_records - len(out))
                cut = False
                if span is not None and taken:
                    if until is None:
                        until = next((r.timestamp_ms + span for r in taken if r.timestamp_ms), None)
                    if until is not None:
                        keep = next(
                            (i for i, r in enumerate(taken) if (r.timestamp_ms or 0) > until),
                            len(taken),
                        )
                        cut = keep < len(taken)
                        taken = taken[:keep]
                if taken:
                    out += taken
                    self._position[p] = taken[-1].offset + 1
                if cut or len(out) >= max_records:
                    break
        self._last_poll_ms = time.time_ns() // 1_000_000
        return out

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        for p, offset in next_offsets.items():
            if p not in self._position:
                continue  # revoked: its next owner commits for it
            self.group.committed[p] = offset
            self._log(p).forget_before(offset)

    def commit_status(self) -> CommitStatus:
        return CommitStatus(pending={}, failed=0)  # synchronous, and memory never refuses

    def lag(self) -> dict[int, int]:
        """Records kept beyond the position (for a lazy iterable: those fetched so far)."""
        return {p: self._unread(p) for p in self._position}

    def health(self) -> SourceHealth:
        return SourceHealth(connected=not self._closed, last_poll_ms=self._last_poll_ms)

    def exhausted(self) -> bool:
        if self.endless or self._rebalances:
            return False  # a queued assignment may bring records
        return self._drained and not any(self._unread(p) for p in self._position)

    def caught_up(self, partitions: Collection[int]) -> set[int]:
        if not self._drained:
            return set()
        return {p for p in self._readable() if p in partitions and not self._unread(p)}

    def close(self) -> None:
        self._closed = True

    # -- inside ----------------------------------------------------------------------------

    def _apply_rebalances(self) -> None:
        while self._rebalances:
            kind, parts = self._rebalances.popleft()
            if kind == "assigned":
                for p in parts:
                    self._position[p] = self.group.committed.get(p, 0)
                if self._assigned_hook is not None:
                    self._assigned_hook(parts)
            else:
                for p in parts:
                    self._position.pop(p, None)
                if self._revoked_hook is not None:
                    self._revoked_hook(parts)

    def _keep(self, rec: SourceRecord) -> None:
        p = rec.partition
        self._next_offset[p] = max(self._next_offset.get(p, 0), rec.offset + 1)
        if rec.offset < self.group.committed.get(p, 0):
            return  # committed by an earlier member of the group
        self._log(p).add(rec)

    def _fetch(self, wanted: int | None) -> None:
        """Read the iterable until ``wanted`` records are readable (None: to its end)."""
        if self._drained:
            return
        readable = self._readable()
        have = sum(self._unread(p) for p in readable)
        for rec in self._incoming:
            self._keep(rec)
            if rec.partition in readable:
                have += 1
                if wanted is not None and have >= wanted:
                    return
        self._drained = True

    def _readable(self) -> list[int]:
        return sorted(p for p in self._position if p not in self._held)

    def _log(self, partition: int) -> _Log:
        log = self._kept.get(partition)
        if log is None:
            log = self._kept[partition] = _Log()
        return log

    def _unread(self, partition: int) -> int:
        return self._log(partition).count_from(self._position.get(partition, 0))


class _Log:
    """One partition's kept records, in offset order."""

    __slots__ = ("offsets", "records", "start")

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.records: list[SourceRecord] = []
        self.start = 0  # records before it are committed and forgotten

    def add(self, rec: SourceRecord) -> None:
        if not self.offsets or rec.offset > self.offsets[-1]:
            self.offsets.append(rec.offset)
            self.records.append(rec)
            return
        i = bisect.bisect_right(self.offsets, rec.offset, lo=self.start)
        self.offsets.insert(i, rec.offset)
        self.records.insert(i, rec)

    def _index(self, offset: int) -> int:
        return bisect.bisect_left(self.offsets, offset, lo=self.start)

    def count_from(self, offset: int) -> int:
        return len(self.offsets) - self._index(offset)

    def take(self, offset: int, n: int) -> list[SourceRecord]:
        """Up to ``n`` records from ``offset`` on."""
        i = self._index(offset)
        return self.records[i : i + n]

    def forget_before(self, offset: int) -> None:
        self.start = max(self.start, self._index(offset))
        if self.start > 1024 and self.start * 2 > len(self.offsets):
            del self.offsets[: self.start], self.records[: self.start]
            self.start = 0


class ListSink:
    """Collects outputs per topic in memory; like a producer, delivers them at ``flush``."""

    def __init__(self) -> None:
        self.records: dict[str, list[dict[str, object]]] = {}
        self.pending: list[Output] = []
        self.flushes = 0

    def send(self, outputs: Iterable[Output]) -> None:
        self.pending.extend(outputs)

    def flush(self) -> None:
        for o in self.pending:
            self.records.setdefault(o.topic, []).append(o.value)
        self.pending.clear()
        self.flushes += 1

    def close(self) -> None:
        self.pending.clear()  # unflushed: their batch was never committed
