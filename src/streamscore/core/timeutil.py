"""Event-time helpers. Everything inside the core is integer epoch milliseconds (UTC)."""

from __future__ import annotations

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


def iso(ms: int) -> str:
    """Render epoch milliseconds as RFC 3339 UTC with millisecond precision."""
    return (
        datetime.fromtimestamp(ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
