"""Event-time helpers. Everything inside the core is integer epoch milliseconds (UTC)."""

from __future__ import annotations

import functools
import re
from datetime import UTC, date, datetime

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


# RFC 3339 section 5.6 ``date-time``, exactly as JSON Schema's "date-time" format checks it:
# full-date "T" full-time, seconds required, any number of fraction digits, and an offset
# that is Z or +hh:mm / -hh:mm. ABNF strings are case-insensitive, so "t" and "z" are valid
# too. ASCII digits only (``re.ASCII``: Python's ``\d`` would also match other scripts).
_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:[Zz]|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
RFC3339_HINT = "e.g. 2026-01-01T12:00:00Z or 2026-01-01T13:00:00.250+01:00"


def parse_rfc3339(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 ``date-time``; anything else raises ``ValueError``.

    Strict on purpose: ISO 8601 forms that RFC 3339 excludes (week dates, ordinal dates,
    basic format without separators, a space instead of "T", missing seconds, offsets with
    seconds, no offset at all) are refused, so the decoder accepts exactly what the
    ``user-events`` JSON Schema accepts. A leap second (second 60) is refused as well:
    POSIX time has no place for it, and JSON Schema validators refuse it too. Fractions
    finer than a millisecond are truncated.
    """
    shown = repr(text if len(text) <= 64 else text[:60] + "...")
    m = _DATE_TIME.fullmatch(text)
    if m is None:
        raise ValueError(f"{shown} is not an RFC 3339 timestamp with an offset ({RFC3339_HINT})")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if hour > 23 or minute > 59 or second > 59:
        what = "a leap second" if second == 60 else "not a time of day"
        raise ValueError(f"{shown} is {what}; RFC 3339 times run 00:00:00 to 23:59:59")
    try:
        ordinal = date(year, month, day).toordinal()
    except ValueError:
        raise ValueError(f"{shown} is not a calendar date") from None
    ms = ((ordinal - _EPOCH_ORDINAL) * 86_400 + hour * 3600 + minute * 60 + second) * 1000
    if (fraction := m.group(7)) is not None:
        ms += int(fraction[:3].ljust(3, "0"))
    if (sign := m.group(8)) is not None:
        off_h, off_m = int(m.group(9)), int(m.group(10))
        if off_h > 23 or off_m > 59:
            raise ValueError(f"{shown} has an offset beyond ±23:59")
        offset = (off_h * 60 + off_m) * MINUTE_MS
        ms -= offset if sign == "+" else -offset
    return ms


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
