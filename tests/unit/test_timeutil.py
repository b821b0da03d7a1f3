"""Timestamps in output records: RFC 3339, UTC, milliseconds, and parseable back exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from streamscore.core.timeutil import iso, parse_rfc3339

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# 1970 to 2200: the range event times and wall clocks can take.
MS = st.integers(min_value=0, max_value=7_258_118_400_000)


@given(MS)
def test_iso_matches_the_calendar(ms: int) -> None:
    expected = (EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    assert iso(ms) == expected


@given(MS)
def test_iso_round_trips_through_the_parser(ms: int) -> None:
    assert parse_rfc3339(iso(ms)) == ms


def test_iso_examples() -> None:
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1_700_000_000_001) == "2023-11-14T22:13:20.001Z"
    assert iso(1_700_000_000_999) == "2023-11-14T22:13:20.999Z"
