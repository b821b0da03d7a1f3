"""A partition's watermark, and the rule that keeps one stray timestamp from moving it.

The watermark promises that every event at or before it has been seen: labels and silences
up to it are final, and an event at or before it is late. It trails the partition's
*frontier* (the newest event time the partition agrees on) by the allowed lateness plus one
millisecond, so an event exactly at the lateness bound is still on time:

    watermark = frontier - lateness - 1 ms

The classic frontier is the newest event time seen, and one device with a clock far ahead
(set to the wrong day, a time zone sent as UTC, a test event) drags it there: every good
event after it is late until the stream catches up. So a record more than ``max_lead`` ahead
of the frontier does not move it on its own. It is admitted (it is an event like any other,
just early) and held as a candidate; the frontier moves only once the far-ahead records in a
row come from ``agreeing`` different users, and then to the earliest time among them: the
time they all agree the stream has reached. Users, not records, vote because one bad clock
sends bursts (a session of page views), and the earliest, not the latest, because the bad
clock may be one of the voters. A record within the lead (the stream going on as before)
moves the frontier as always and forgets the candidates, so an outlier is forgotten for good
at the next ordinary record. A real jump (a partition that was quiet for hours, a producer
that resumes after an outage) waits for ``agreeing`` users; a partition with fewer active
users than that waits until its watermark follows the others (``idle_partition_seconds``),
or for ever with ``watermark_max_lead_seconds`` left on and one user: set it to 0 for
single-user streams.

The rule sees each record once, in offset order, with nothing but the watermark and the
candidates (which remember the last offset that voted, so a record read again after a crash
is not a second vote), so it gives the same watermarks for any cut of the input into batches
and across restarts, as long as the candidates are saved with the watermark
(``Candidates.to_bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import orjson


class Verdict(Enum):
    """What one record's event time meant for its partition's watermark."""

    LATE = "late"  # at or before the watermark
    ON_TIME = "on_time"  # moved the frontier, or fell behind it within the lateness
    HELD = "held"  # far ahead: a candidate, the watermark did not move
    AGREED = "agreed"  # far ahead, and the candidates before it agree: the frontier jumped


@dataclass(frozen=True, slots=True)
class WatermarkRule:
    """How a partition's event times move its watermark.

    ``max_lead_ms`` None is the classic rule (every record may move the frontier).
    """

    lateness_ms: int
    max_lead_ms: int | None = None
    agreeing: int = 2

    def watermark_of(self, frontier_ms: int) -> int:
        """The watermark that trails this frontier."""
        return frontier_ms - self.lateness_ms - 1

    def frontier_of(self, watermark_ms: int) -> int:
        """The frontier a (positive) watermark trails."""
        return watermark_ms + self.lateness_ms + 1


@dataclass(slots=True)
class Candidates:
    """A partition's far-ahead records in a row: each voting user's earliest event time, and
    the offset of the last record that voted."""

    earliest: dict[str, int] = field(default_factory=dict)
    last_offset: int = -1

    def __bool__(self) -> bool:
        return bool(self.earliest)

    def clear(self) -> None:
        self.earliest.clear()

    def to_bytes(self) -> bytes:
        """The stored form (kept beside the watermark, so a restart knows them)."""
        return orjson.dumps({"v": 2, "users": self.earliest, "last": self.last_offset})

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> Candidates:
        """Inverse of ``to_bytes``; nothing stored (or unreadable) is no candidate."""
        if not raw:
            return cls()
        try:
            d = orjson.loads(raw)
            users = {str(u): int(t) for u, t in d["users"].items()}
            return cls(users, int(d["last"]))
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            return cls()


def admit(
    rule: WatermarkRule, watermark_ms: int, ahead: Candidates, offset: int, ts: int, *, user: str
) -> tuple[Verdict, int]:
    """The verdict on ``user``'s record at ``offset`` with event time ``ts``, and the
    watermark after it. ``ahead`` is updated in place."""
    if watermark_ms and ts <= watermark_ms:
        return Verdict.LATE, watermark_ms
    frontier = rule.frontier_of(watermark_ms) if watermark_ms else None
    lead = rule.max_lead_ms
    if frontier is None or lead is None or ts <= frontier + lead:
        if offset > ahead.last_offset:
            ahead.clear()
        if frontier is None or ts > frontier:
            return Verdict.ON_TIME, max(watermark_ms, rule.watermark_of(ts))
        return Verdict.ON_TIME, watermark_ms
    if offset <= ahead.last_offset:
        return Verdict.HELD, watermark_ms  # read again (a redelivery): no second vote
    ahead.last_offset = offset
    ahead.earliest[user] = min(ts, ahead.earliest.get(user, ts))
    if len(ahead.earliest) < rule.agreeing:
        return Verdict.HELD, watermark_ms
    agreed = min(ahead.earliest.values())
    ahead.clear()
    return Verdict.AGREED, max(watermark_ms, rule.watermark_of(agreed))
