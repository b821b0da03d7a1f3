"""Erasure requests in the running pipeline: read, delete, retract, confirm, exactly once.

``user-erasures`` is partitioned like the input (same partition count, keyed by user id), and
partition p of it is read by whichever process owns partition p of the input: the one that
loads and saves the users of that partition, so no other process can write a state back
after it was deleted. Its offsets are kept in the state store, not in Kafka, and advance
only after the confirmations of what they cover are flushed. Per batch, before its events:

1. read the requests of the owned partitions from the saved offsets;
2. one store round trip writes each user's erasure mark, deletes their state and due entry;
3. tombstones (null values) for the user on every user-keyed output topic, then the
   confirmation, go out with the batch's outputs (flushed before its states are saved);
4. after the save, one more round trip records the next offsets (and drops expired marks).

A process killed anywhere in between reads the same requests again on restart and does the
same again: the deletion is idempotent, the tombstones and the confirmation (same id) are
repeated, and the marks keep the user's older events out meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from streamscore.core.erasure import (
    Erasure,
    ErasureMarks,
    confirmation,
    decode_erasure,
    retractions,
)
from streamscore.core.state import UserState
from streamscore.core.values import Output
from streamscore.errors import InvalidEvent, StoredFormatError
from streamscore.guards import OnRetry, RetryPolicy
from streamscore.ports import ErasureSource, ErasureStore, SourceRecord
from streamscore.runtime import dead_letter_of

log = logging.getLogger("streamscore.erasures")
MAX_REQUESTS_PER_BATCH = 500


class Erasures:
    """The erasure step of ``runtime.Pipeline``; holds the owned partitions' offsets and marks."""

    def __init__(
        self,
        source: ErasureSource,
        store: ErasureStore,
        *,
        keep_ms: int,
        key: bytes | None = None,
        retry: RetryPolicy | None = None,
        on_retry: OnRetry | None = None,
        max_records: int = MAX_REQUESTS_PER_BATCH,
    ) -> None:
        self.source = source
        self.store = store
        self.marks = ErasureMarks(keep_ms, key)
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self.max_records = max_records
        self._partitions = source.partitions()
        self.positions: dict[int, int] = {}  # owned partition -> next request to read
        self._unsaved: dict[int, int] = {}  # positions read but not yet saved
        self.erased = 0  # users erased (requests carried out) since the start
        self.dropped_events = 0  # events of erased users at or before their erasure

    # -- ownership follows the input's partitions ------------------------------------------

    def assigned(self, partitions: Iterable[int]) -> None:
        """Pick up the offsets and marks the partitions' previous owner saved."""
        parts = [p for p in partitions if p < self._partitions]
        offsets, marks = self.retry.run(
            "load erasure log", lambda: self.store.erasure_log(parts), self.on_retry
        )
        for p in parts:
            self.positions[p] = offsets.get(p, 0)
            self.marks.load(p, marks.get(p, {}))

    def revoked(self, partitions: Iterable[int]) -> None:
        """Forget what another process now owns (it was saved, or is read again)."""
        parts = list(partitions)
        for p in parts:
            self.positions.pop(p, None)
            self._unsaved.pop(p, None)
        self.marks.forget_partitions(parts)

    # -- per batch -------------------------------------------------------------------------

    def blocks(self, user_id: str, ts_ms: int) -> bool:
        """An event of an erased user at or before the erasure: drop it, unseen."""
        if self.marks.blocks(user_id, ts_ms):
            self.dropped_events += 1
            return True
        return False

    def process(self, now_ms: int) -> list[Output]:
        """Carry out the requests waiting on the owned partitions; returns their outputs."""
        if not self.positions:
            return []
        records = self.retry.run(
            "read erasures",
            lambda: self.source.read(self.positions, self.max_records),
            self.on_retry,
        )
        if not records:
            return []
        out: list[Output] = []
        requests: list[tuple[int, Erasure]] = []
        for rec in records:
            self.positions[rec.partition] = self._unsaved[rec.partition] = rec.offset + 1
            try:
                requests.append((rec.partition, decode_erasure(rec.value, rec.key)))
            except InvalidEvent as exc:
                out.append(self._dead_letter(rec, exc, now_ms))
        if requests:
            out.extend(self._erase(requests, now_ms))
        return out

    def _erase(self, requests: list[tuple[int, Erasure]], now_ms: int) -> list[Output]:
        users = list(dict.fromkeys(e.user_id for _, e in requests))
        raw = self.retry.run("load states", lambda: self.store.load(users), self.on_retry)
        found: dict[str, tuple[int | None, int]] = {}  # user -> (due partition, snapshots)
        for uid, data in raw.items():
            try:
                state = UserState.from_bytes(uid, data)
            except StoredFormatError:
                found[uid] = (None, 0)  # unreadable: deleted all the same
                continue
            found[uid] = (state.partition if state.partition >= 0 else None, len(state.snapshots))
        marks: dict[int, dict[str, bytes | None]] = {}
        kept = []
        for p, e in requests:
            fp, mark = self.marks.mark_for(e)
            marks.setdefault(p, {})[fp] = mark.encode()
            kept.append((p, fp, mark))
        deleted = {u: found.get(u, (None, 0))[0] for u in users}
        self.retry.run("erase users", lambda: self.store.erase(deleted, marks, {}), self.on_retry)
        for p, fp, mark in kept:
            self.marks.add(p, fp, mark)
        out: list[Output] = []
        for _, e in requests:
            _, snapshots = found.get(e.user_id, (None, 0))
            out.extend(retractions(e.user_id))
            out.append(
                confirmation(
                    e, now_ms=now_ms, state_found=e.user_id in found, pending_snapshots=snapshots
                )
            )
        self.erased += len(requests)
        log.info(
            "erased %d users (requests %s)", len(requests), [e.request_id for _, e in requests]
        )
        return out

    def after_save(self, watermarks: Mapping[int, int]) -> None:
        """Once the batch's outputs are flushed and its states saved: record the next
        offsets, and drop the marks the watermarks have left behind."""
        expired = self.marks.expired(watermarks)
        if not self._unsaved and not expired:
            return
        offsets = dict(self._unsaved)
        gone: dict[int, dict[str, bytes | None]] = {
            p: dict.fromkeys(fps, None) for p, fps in expired.items()
        }
        self.retry.run(
            "save erasure offsets", lambda: self.store.erase({}, gone, offsets), self.on_retry
        )
        self._unsaved.clear()

    def _dead_letter(self, rec: SourceRecord, exc: InvalidEvent, now_ms: int) -> Output:
        log.warning(
            "erasure request at %s partition %d offset %d is invalid: %s",
            rec.topic,
            rec.partition,
            rec.offset,
            exc.message,
        )
        return dead_letter_of(rec, exc, now_ms)
