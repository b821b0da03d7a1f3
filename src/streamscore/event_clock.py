"""The owned partitions' watermarks and the far-ahead records they wait on (``core/watermark``).

The runtime asks ``admit`` about every decoded event in offset order, saves the watermarks
with the states (``StateStore.save``) and the candidates beside them (``blobs``, written
right after the states and before the commit), and loads both when a partition is assigned.
Candidates saved after the states can only be behind them; the records after them are then
read again (nothing is committed before the save) and vote again, so the watermarks are
those of an uninterrupted run.

It also says, in the log, what far-ahead records did: held (info), agreed on (info: the
watermark jumps), or forgotten (a warning: the stream went on at its own time, so they were
outliers and moved nothing); at most one line per partition and kind a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

from streamscore.core.timeutil import iso
from streamscore.core.watermark import Candidates, Verdict, WatermarkRule, admit

log = logging.getLogger("streamscore.runtime")
LOG_EVERY_S = 60.0
BLOB_PREFIX = "watermark-candidates:"


def blob_name(partition: int) -> str:
    """The store blob that holds a partition's candidates."""
    return f"{BLOB_PREFIX}{partition}"


class EventClock:
    """Watermarks (``watermarks``, by partition) and far-ahead candidates of owned partitions."""

    def __init__(self, rule: WatermarkRule) -> None:
        self.rule = rule
        self.watermarks: dict[int, int] = {}
        self._ahead: dict[int, Candidates] = {}
        self._dirty: set[int] = set()
        self._counts: dict[tuple[int, str], int] = {}  # unreported, by partition and kind
        self._logged_at: dict[tuple[int, str], float] = {}

    def assigned(self, watermarks: Mapping[int, int], blobs: Mapping[int, bytes | None]) -> None:
        """Take over partitions at their saved watermarks and candidates."""
        for p, raw in blobs.items():
            self.watermarks[p] = watermarks.get(p, self.watermarks.get(p, 0))
            self._ahead[p] = Candidates.from_bytes(raw)
            self._dirty.discard(p)

    def revoked(self, partitions: Iterable[int]) -> None:
        """Forget partitions another process now owns (their candidates are saved)."""
        for p in partitions:
            self.watermarks.pop(p, None)
            self._ahead.pop(p, None)
            self._dirty.discard(p)

    def admit(self, partition: int, offset: int, ts: int, user: str) -> Verdict:
        """The verdict on one decoded event of ``user``; moves the partition's watermark."""
        wm = self.watermarks.get(partition, 0)
        ahead = self._ahead.setdefault(partition, Candidates())
        before = dict(ahead.earliest), ahead.last_offset
        verdict, self.watermarks[partition] = admit(self.rule, wm, ahead, offset, ts, user=user)
        if (ahead.earliest, ahead.last_offset) != before:
            self._dirty.add(partition)
        if verdict is Verdict.HELD:
            self._report_held(partition, ts, wm)
        elif before[0] and verdict is Verdict.ON_TIME and not ahead:
            self._report_forgotten(partition, before[0])
        elif verdict is Verdict.AGREED:
            self._report_agreed(partition, wm)
        return verdict

    def follow(self, partition: int, watermark: int) -> None:
        """Move an idle partition's watermark (never back)."""
        self.watermarks[partition] = max(self.watermarks.get(partition, 0), watermark)

    def blobs(self) -> dict[str, bytes]:
        """Candidates changed since the last ``saved``, as store blobs."""
        return {blob_name(p): self._ahead[p].to_bytes() for p in self._dirty if p in self._ahead}

    def saved(self) -> None:
        """The blobs of ``blobs`` are in the store."""
        self._dirty.clear()

    # -- what the log says ----------------------------------------------------------------

    def _throttled(self, partition: int, kind: str) -> int:
        """How many of ``kind`` happened since the last line about them, or 0 to stay quiet
        (at most one line per partition and kind a minute: a sparse partition holds a record
        at every gap, a broken clock may send a stream of outliers)."""
        key = (partition, kind)
        self._counts[key] = self._counts.get(key, 0) + 1
        now = time.monotonic()
        if now < self._logged_at.get(key, 0.0):
            return 0
        self._logged_at[key] = now + LOG_EVERY_S
        return self._counts.pop(key)

    def _report_held(self, partition: int, ts: int, wm: int) -> None:
        if not (n := self._throttled(partition, "held")):
            return
        frontier = self.rule.frontier_of(wm)
        log.info(
            "partition %d: an event at %s is %s ahead of the partition's stream (%s), more than "
            "watermark_max_lead_seconds (%.0fs): applied, but the watermark moves there only "
            "when far-ahead records in a row come from %d users%s",
            partition,
            iso(ts),
            _duration(ts - frontier),
            iso(frontier),
            (self.rule.max_lead_ms or 0) / 1000,
            self.rule.agreeing,
            f" ({n} held since the last report)" if n > 1 else "",
        )

    def _report_forgotten(self, partition: int, held: dict[str, int]) -> None:
        if not (n := self._throttled(partition, "outlier")):
            return
        log.warning(
            "partition %d: the stream went on at its own time (%s): far-ahead records of %s "
            "(from %s on) did not move the watermark: a producer's or device's clock may be "
            "wrong%s",
            partition,
            iso(self.rule.frontier_of(self.watermarks[partition])),
            ", ".join(repr(u) for u in list(held)[:3]) + (" ..." if len(held) > 3 else ""),
            iso(min(held.values())),
            f"; {n} such runs since the last report" if n > 1 else "",
        )

    def _report_agreed(self, partition: int, before: int) -> None:
        if not (n := self._throttled(partition, "agreed")):
            return
        after = self.watermarks[partition]
        log.info(
            "partition %d: far-ahead records of %d users in a row agree the stream has moved %s "
            "ahead: its "
            "watermark moves to %s%s",
            partition,
            self.rule.agreeing,
            _duration(after - before),
            iso(after),
            f" ({n} such jumps since the last report)" if n > 1 else "",
        )


def _duration(ms: int) -> str:
    s = ms / 1000
    if s >= 86_400 * 2:
        return f"{s / 86_400:.1f} days"
    if s >= 7200:
        return f"{s / 3600:.1f} h"
    return f"{s:.0f}s"
