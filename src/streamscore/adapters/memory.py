"""In-memory state store and list source/sink: the embedded default and the test twins.

The store keeps the same serialized bytes the Redis store keeps, so sizes, round trips and the
contract tests are the same for both.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Mapping

from streamscore.core.records import TOPIC_EVENTS
from streamscore.core.scorer import Output
from streamscore.ports import RebalanceHook, SourceRecord


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


class ListSource:
    """A finite source over in-memory records (tests, the demo)."""

    def __init__(self, records: Iterable[SourceRecord], topic: str = TOPIC_EVENTS) -> None:
        self.topic = topic
        self._it = iter(records)
        self._done = False
        self.committed: dict[int, int] = {}

    def poll(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        batch: list[SourceRecord] = []
        for rec in self._it:
            batch.append(rec)
            if len(batch) >= max_records:
                return batch
        self._done = True
        return batch

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        self.committed.update(next_offsets)

    def exhausted(self) -> bool:
        return self._done

    def caught_up(self, partitions: Collection[int]) -> set[int]:
        return set(partitions) if self._done else set()

    def on_rebalance(self, assigned: RebalanceHook, revoked: RebalanceHook) -> None:
        assigned({0})

    def close(self) -> None:
        return None


class ListSink:
    """Collects outputs per topic in memory."""

    def __init__(self) -> None:
        self.records: dict[str, list[dict[str, object]]] = {}
        self.flushes = 0

    def send(self, outputs: Iterable[Output]) -> None:
        for o in outputs:
            self.records.setdefault(o.topic, []).append(o.value)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        return None
