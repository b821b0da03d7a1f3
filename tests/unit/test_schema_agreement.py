"""The decoder and the published JSON Schema of ``user-events`` accept the same documents.

A producer team validates its records against ``schemas/user-events.schema.json`` (with a
standard validator); the scorer must then accept exactly those, or one side silently loses
events. Hypothesis generates event-shaped JSON, valid and invalid (RFC 3339 variants, numbers
as strings, wrong types, lengths, extra fields), and the test compares the ``jsonschema``
package (draft 2020-12, date-time format checked by rfc3339-validator) with ``decode_event``.

What only the decoder can check is set aside: record size, the 4 KiB bound on properties, and
the time bounds (``EventLimits``: future skew, ``min_event_time``) are deployment settings, not
structure, so the decoder runs here with limits that never bind. Repeated keys are outside
what a schema can see (a validator gets the parsed object): tests/unit/test_events.py covers
them. Integers beyond what a double holds (about 1e308) cannot be compared either: orjson
refuses them as invalid JSON (RFC 8259 section 6 calls such numbers non-interoperable).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streamscore.core.events import EventLimits, EventType, decode_event
from streamscore.errors import InvalidEvent
from tests.strategies import json_scalars as scalars
from tests.strategies import json_values

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "user-events.schema.json").read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)
OPEN_LIMITS = EventLimits(max_bytes=10**9, max_future_skew_ms=10**400, min_event_ms=-(10**400))
BASE = 1_767_225_600_000


def test_the_validator_checks_date_time() -> None:
    """Without rfc3339-validator installed, jsonschema skips date-time: this test would lie."""
    assert "date-time" in jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers
    assert not VALIDATOR.is_valid({"event_id": "e", "user_id": "u", "type": "signup", "ts": "x"})


def _rfc3339_texts() -> st.SearchStrategy[str]:
    """Valid RFC 3339 date-times and near misses, piece by piece."""

    def build(parts: tuple[Any, ...]) -> str:
        year, month, day, sep, hour, minute, second, fraction, offset = parts
        return f"{year}-{month}-{day}{sep}{hour}:{minute}:{second}{fraction}{offset}"

    two = st.integers(0, 99).map(lambda n: f"{n:02d}")
    return st.tuples(
        st.integers(0, 9999).map(lambda n: f"{n:04d}")
        | st.sampled_from(["26", "+2026", "２０２６"]),
        st.integers(0, 13).map(lambda n: f"{n:02d}") | st.just("1"),
        st.integers(0, 32).map(lambda n: f"{n:02d}"),
        st.sampled_from(["T", "t", " ", "_", ""]),
        st.integers(0, 25).map(lambda n: f"{n:02d}"),
        two,
        st.integers(0, 61).map(lambda n: f"{n:02d}"),
        st.sampled_from(["", ".5", ".250", ".123456789", ".", ",5"]),
        st.sampled_from(["Z", "z", "+00:00", "-05:30", "+23:59", "+24:00", "+02", "+0200", ""])
        | st.tuples(st.sampled_from("+-"), two, two).map(lambda t: f"{t[0]}{t[1]}:{t[2]}"),
    ).map(build) | st.sampled_from(["2026-W01-4T00:00Z", "2026-001T00:00:00Z", "20260101T000000Z"])


ids = st.text(max_size=130) | st.text(min_size=126, max_size=130) | scalars
timestamps = (
    _rfc3339_texts()
    | st.integers(-(10**30), 10**30)
    | st.integers(BASE - 10**12, BASE + 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(0, 10**15).map(float)
    | st.integers(0, 10**15).map(str)
    | scalars
)
amounts = (
    st.floats(-10.0, 2e12, allow_nan=False)
    | st.integers(-5, 2 * 10**12)
    | st.sampled_from(["12.5", "1_000", "3", "NaN", "1e3", " 7"])
    | scalars
    | st.lists(st.integers(0, 9), max_size=2)
)
currencies = st.sampled_from(["USD", "EUR", "usd", "US", "USDD", "USD\n", "U$D", ""]) | scalars
optional_texts = st.text(max_size=130) | st.text(min_size=127, max_size=129) | scalars
properties = (
    st.dictionaries(st.text(max_size=8), scalars | json_values, max_size=4)
    | st.dictionaries(st.text(max_size=8), scalars, max_size=4)
    | json_values
)


@st.composite
def valid_rfc3339(draw: st.DrawFn) -> str:
    """A valid date-time in any of its spellings (fraction lengths, t/z, offsets)."""
    year, month = draw(st.integers(1, 9999)), draw(st.integers(1, 12))
    day = draw(st.integers(1, 28 if month == 2 else 30))
    hour, minute, second = (
        draw(st.integers(0, 23)),
        draw(st.integers(0, 59)),
        draw(st.integers(0, 59)),
    )
    fraction = draw(st.sampled_from(["", ".0", ".25", ".999", ".000001", ".123456789012"]))
    offset = draw(
        st.sampled_from(["Z", "z", "+00:00", "-00:00"])
        | st.tuples(st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59)).map(
            lambda t: f"{t[0]}{t[1]:02d}:{t[2]:02d}"
        )
    )
    sep = draw(st.sampled_from("Tt"))
    clock = f"{hour:02d}:{minute:02d}:{second:02d}"
    return f"{year:04d}-{month:02d}-{day:02d}{sep}{clock}{fraction}{offset}"


FIELDS = {
    "event_id": ids,
    "user_id": ids,
    "type": st.sampled_from([t.value for t in EventType]) | st.text(max_size=12) | scalars,
    "ts": timestamps | valid_rfc3339(),
    "amount": amounts,
    "currency": currencies,
    "session_id": optional_texts,
    "item_id": optional_texts,
    "category": optional_texts,
    "properties": properties,
}


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one or two fields replaced, removed or added: the interesting edge."""
    kind = draw(st.sampled_from([t.value for t in EventType]))
    doc: dict[str, Any] = {
        "event_id": draw(st.text(min_size=1, max_size=128)),
        "user_id": draw(st.text(min_size=1, max_size=128)),
        "type": kind,
        "ts": draw(valid_rfc3339() | st.integers(-(10**15), 10**15)),
    }
    if kind in {"purchase", "refund"}:
        doc["amount"] = draw(st.floats(0, 1e12) | st.integers(0, 10**12))
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.sampled_from(sorted(FIELDS)))
        if draw(st.integers(0, 4)) == 0:
            doc.pop(field, None)
        else:
            doc[field] = draw(FIELDS[field])
    return doc


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """Near-valid events, arbitrary event-shaped objects, extra fields, and non-objects."""
    doc: dict[str, Any] = draw(near_valid() | st.fixed_dictionaries({}, optional=FIELDS))
    if draw(st.integers(0, 9)) == 0:
        doc.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    if draw(st.integers(0, 19)) == 0:
        return draw(json_values)
    return doc


def _decoder_accepts(raw: bytes) -> tuple[bool, str]:
    try:
        decode_event(raw, now_ms=BASE, limits=OPEN_LIMITS)
    except InvalidEvent as exc:
        return False, f"{exc.error_type}: {exc.message}"
    return True, ""


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
@example({"event_id": "e", "user_id": "u", "type": "purchase", "ts": BASE, "amount": "12.5"})
@example({"event_id": "e", "user_id": "u", "type": "page_view", "ts": "2026-W01-4T00:00Z"})
@example({"event_id": "e", "user_id": "u", "type": "page_view", "ts": "2026-01-01t00:00:00z"})
@example({"event_id": "e", "user_id": "u", "type": "page_view", "ts": "2016-12-31T23:59:60Z"})
@example({"event_id": "e", "user_id": "u", "type": "page_view", "ts": 1.767e12})
@example({"event_id": "e", "user_id": "u", "type": "signup", "ts": BASE, "currency": "USD\n"})
@example({"event_id": "e", "user_id": "u", "type": "signup", "ts": BASE, "amount": None})
@example({"event_id": "e", "user_id": "u", "type": "refund", "ts": BASE, "amount": True})
def test_decoder_and_json_schema_agree(doc: Any) -> None:
    raw = json.dumps(doc, ensure_ascii=False, allow_nan=False).encode()
    schema_says = VALIDATOR.is_valid(doc)
    decoder_says, why = _decoder_accepts(raw)
    errors = [e.message for e in VALIDATOR.iter_errors(doc)][:3]
    assert schema_says == decoder_says, (raw[:300], why, errors)
