"""Event-time helpers. Everything inside the core is integer epoch milliseconds (UTC)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


def days(ms: float) -> float:
    """Convert a duration in milliseconds to days."""
    return ms / DAY_MS


def to_ms(days_: float) -> int:
    """Convert a duration in days to whole milliseconds."""
    return round(days_ * DAY_MS)


def parse_rfc3339(text: str) -> int:
    """Parse an RFC 3339 timestamp that carries an offset; naive times are ambiguous, so refused."""
    try:
        parsed = datetime.fromisoformat(text.upper())  # RFC 3339 allows lower-case t and z
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}") from exc
    if parsed.tzinfo is None or ("T" not in text.upper() and " " not in text):
        raise ValueError(f"timestamp {text!r} needs a date, a time and an offset such as Z")
    return round(parsed.timestamp() * 1000)


@functools.lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat()[:19]


def iso(ms: int) -> str:
    """Render epoch milliseconds as RFC 3339 UTC with millisecond precision.

    Every output record carries two or three of these. The calendar part is cached per
    second (a batch's ``scored_at`` and a user's events share seconds), and the
    milliseconds are integer arithmetic, so no float rounding can shift them.
    """
    seconds, millis = divmod(ms, 1000)
    return f"{_iso_second(seconds)}.{millis:03d}Z"
