"""The three ports the runtime talks to; adapters implement them for Kafka, Redis, files and
memory. Anything crossing a process boundary is batched: one call per batch, not per event.

The runtime (``runtime.py``, ``service.py``) uses nothing of an adapter that is not declared
here, and every adapter passes the same contract suite (``tests/contract/``), the in-memory
twins included: those behave like the real thing (a rebalance is applied at the next poll,
outputs are delivered at the flush, a restarted source resumes at the last commit).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from streamscore.core.values import Output


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One input record and where it came from."""

    topic: str
    partition: int
    offset: int
    value: bytes
    timestamp_ms: int | None = None


RebalanceHook = Callable[[set[int]], None]


@dataclass(frozen=True, slots=True)
class CommitStatus:
    """Offset commits not yet confirmed, and how many were refused since the start.

    Commits may be asynchronous (Kafka): a refused one stays ``pending`` and is sent again,
    so ``failed`` only counts answers, for the transient-errors metric.
    """

    pending: Mapping[int, int]
    failed: int


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """Whether the source can reach what it reads, and when a poll last succeeded."""

    connected: bool
    last_poll_ms: int | None  # wall clock; None before the first successful poll


class Source(Protocol):
    """Where events come from: Kafka, a JSONL file, a list."""

    topic: str

    @property
    def owned(self) -> set[int]:
        """The partitions assigned to this source as of its last poll."""
        ...

    def poll(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        """Up to ``max_records`` records; an empty list means none yet (or the end)."""
        ...

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        """Record that everything before these offsets (per partition) is fully processed.

        Only partitions the source owns are committed (a revoked partition's next owner
        commits for it), each exactly at the offset given. A source created again on the same
        group starts each partition there.
        """
        ...

    def commit_status(self) -> CommitStatus:
        """Commits asked for and not confirmed yet, and refusals so far."""
        ...

    def lag(self) -> dict[int, int]:
        """Records between the position and the end of each owned partition, where known."""
        ...

    def health(self) -> SourceHealth:
        """Connected, and the wall-clock time of the last successful poll."""
        ...

    def exhausted(self) -> bool:
        """True when a finite source has nothing more to give."""
        ...

    def caught_up(self, partitions: Collection[int]) -> set[int]:
        """Those of ``partitions`` with nothing left to read for now.

        A partition that returned no records may only have been starved by the others in a
        busy fetch; the runtime treats it as idle only when it is caught up.
        """
        ...

    def on_rebalance(self, assigned: RebalanceHook, revoked: RebalanceHook) -> None:
        """Register callbacks for partitions gained and lost.

        They run inside ``poll``, on the caller's thread, before the records of that poll
        (which come only from partitions owned after it): a rebalance is never applied
        between polls.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class SeekableSource(Source, Protocol):
    """A source whose reader chooses where to start: the trainer's, on ``training-examples``."""

    def seek(self, partition: int, offset: int) -> None:
        """Read the owned ``partition`` from ``offset`` on, from the next poll (from inside an
        assignment hook: the records of the poll running the hook are dropped)."""
        ...


class StateStore(Protocol):
    """Per-user states, due queues and watermarks. Values are opaque bytes."""

    def load(self, user_ids: Collection[str]) -> dict[str, bytes]:
        """States of the users that have one, in one round trip."""
        ...

    def save(
        self,
        states: Mapping[str, bytes],
        due: Mapping[int, Mapping[str, int | None]],
        watermarks: Mapping[int, int],
    ) -> None:
        """Write states, due-queue entries (None removes) and watermarks in one round trip."""
        ...

    def due(self, up_to: Mapping[int, int], limit: int) -> dict[int, list[str]]:
        """Per partition, users whose due time is at or before the given watermark."""
        ...

    def watermarks(self, partitions: Iterable[int]) -> dict[int, int]:
        """Saved watermarks of these partitions."""
        ...

    def get_blob(self, name: str) -> bytes | None:
        """A named blob (model checkpoints)."""
        ...

    def put_blob(self, name: str, data: bytes) -> None:
        """Store a named blob atomically."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class Sink(Protocol):
    """Where output records go."""

    def send(self, outputs: Iterable[Output]) -> None:
        """Queue records for delivery (they may or may not be visible before ``flush``)."""
        ...

    def flush(self) -> None:
        """Block until every queued record is durably delivered, in order, or raise."""
        ...

    def close(self) -> None:
        """Release. Records sent since the last flush may be lost: their batch was never
        committed, so a restart sends them again."""
        ...
