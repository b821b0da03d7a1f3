"""The input events' decoder (DESIGN.md §2): what it accepts, and how it refuses the rest.

Every refusal must carry the ``error_type`` a dead-letter consumer groups by and a message a
person can act on; nothing but ``InvalidEvent`` may ever escape the decoder.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamscore.core.events import EventLimits, EventType, decode_event
from streamscore.errors import InvalidEvent
from tests.strategies import json_scalars, json_values

# 2026-01-01T00:00:00Z = 56 years of 365 days + 14 leap days since 1970, in ms.
JAN1_2026_MS = ((2026 - 1970) * 365 + 14) * 86_400_000
assert JAN1_2026_MS == 1_767_225_600_000
MINUTE = 60_000
DAY = 86_400_000
NOW = JAN1_2026_MS + 30 * DAY  # the receiving clock in these tests
LIMITS = EventLimits()


_DROP = object()  # marks a field to leave out


def raw_event(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "event_id": "e1",
        "user_id": "u1",
        "type": "page_view",
        "ts": JAN1_2026_MS,
    }
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not _DROP})


def decode(raw: bytes, now_ms: int = NOW, limits: EventLimits = LIMITS):
    return decode_event(raw, now_ms=now_ms, limits=limits)


def refused(raw: bytes, now_ms: int = NOW, limits: EventLimits = LIMITS) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        decode(raw, now_ms, limits)
    exc = info.value
    assert exc.message, "every refusal needs a message"
    assert str(exc) == exc.message
    return exc


# -- accepted ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "expected_ms"),
    [
        ("2026-01-01T00:00:00Z", JAN1_2026_MS),
        ("2026-01-01T02:00:00+02:00", JAN1_2026_MS),
        ("2025-12-31T19:00:00-05:00", JAN1_2026_MS),
        ("2026-01-01T00:00:00.250Z", JAN1_2026_MS + 250),
        ("2026-01-02T03:04:05Z", JAN1_2026_MS + DAY + 3 * 3_600_000 + 4 * MINUTE + 5_000),
        ("2026-01-01T00:00:00.123456789Z", JAN1_2026_MS + 123),  # finer than ms: truncated
        ("2026-01-01T00:00:00.5Z", JAN1_2026_MS + 500),
        ("2026-01-01T00:00:00-00:00", JAN1_2026_MS),  # RFC 3339's "offset unknown"
        (JAN1_2026_MS, JAN1_2026_MS),
        (1.767225600e12, JAN1_2026_MS),  # JSON Schema's "integer" has no fraction, any notation
        (JAN1_2026_MS + 1, JAN1_2026_MS + 1),
        (float(JAN1_2026_MS), JAN1_2026_MS),
    ],
)
def test_timestamps_are_normalised_to_epoch_ms(ts: object, expected_ms: int) -> None:
    event = decode(raw_event(ts=ts))
    assert event.ts == expected_ms
    assert isinstance(event.ts, int)


def test_lower_case_t_and_z_are_rfc3339_too() -> None:
    assert decode(raw_event(ts="2026-01-01t00:00:00z")).ts == JAN1_2026_MS


def test_valid_page_view_fields() -> None:
    event = decode(
        raw_event(
            session_id="s1",
            item_id="i" * 128,
            category="shoes",
            properties={"colour": "red", "size": 42, "promo": True, "x": None, "w": 1.5},
            extra_field="ignored",
        )
    )
    assert event.type is EventType.PAGE_VIEW
    assert event.amount is None
    assert event.currency == "USD"
    assert event.session_id == "s1"
    assert event.properties == {"colour": "red", "size": 42, "promo": True, "x": None, "w": 1.5}


@pytest.mark.parametrize(("amount", "expected"), [(19.99, 19.99), (0, 0.0), (7, 7.0), (1e12, 1e12)])
def test_purchase_amount_is_a_json_number(amount: object, expected: float) -> None:
    event = decode(raw_event(type="purchase", amount=amount, currency="EUR"))
    assert event.amount == pytest.approx(expected)
    assert event.currency == "EUR"


@pytest.mark.parametrize("amount", ["12.50", "3", "1_000", " 7", "1e3", "0x10"])
def test_numbers_in_strings_are_refused(amount: str) -> None:
    """pydantic's lax mode would read these as numbers ("1_000" as 1000.0); JSON says text."""
    exc = refused(raw_event(type="purchase", amount=amount))
    assert exc.error_type == "invalid_field"
    assert "amount" in exc.message and "number" in exc.message


@pytest.mark.parametrize("ts", ["1767225600000", "1767225600000.0"])
def test_epoch_milliseconds_in_a_string_are_refused(ts: str) -> None:
    exc = refused(raw_event(ts=ts))
    assert exc.error_type == "invalid_field"
    assert "RFC 3339" in exc.message


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_id":"e1","user_id":"u1","type":"purchase","ts":1767225600000,'
        b'"amount":5,"amount":5000}',
        b'{"event_id":"e1","user_id":"u1","user_id":"u2","type":"page_view","ts":1767225600000}',
        b'{"event_id":"e1","user_id":"u1","type":"page_view","ts":1767225600000,'
        b'"properties":{"a":1,"a":1}}',
        b'{"event_id":"e1","user_id":"u1","type":"page_view","ts":1767225600000,'
        b'"extra":[{"k":"x:y","k":2}]}',  # even inside an ignored field
        b'{"event_id":"e1","user_id":"u1","type":"page_view","ts":"2026-01-01T00:00:00Z",'
        b'"x":"\\u003a","x":1}',  # an escaped colon takes the exact path
    ],
)
def test_repeated_keys_are_refused_as_invalid_json(raw: bytes) -> None:
    """orjson keeps the last of repeated keys; which one a reader sees is not defined."""
    exc = refused(raw)
    assert exc.error_type == "invalid_json"
    assert "appears more than once" in exc.message


def test_colons_in_strings_and_escapes_are_not_mistaken_for_repeats() -> None:
    raw = (
        b'{"event_id":"e:1","user_id":"u\\u003a1","type":"page_view",'
        b'"ts":"2026-01-01T00:00:00+00:00","properties":{"url":"https://x/a:b","k:":"::"}}'
    )
    event = decode(raw)
    assert event.user_id == "u:1"
    assert event.properties == {"url": "https://x/a:b", "k:": "::"}


def test_refund_needs_amount_too() -> None:
    assert decode(raw_event(type="refund", amount=5)).amount == 5.0
    exc = refused(raw_event(type="refund"))
    assert exc.error_type == "invalid_field"
    assert "amount" in exc.message and "refund" in exc.message


def test_ids_of_exactly_128_chars_are_fine() -> None:
    event = decode(raw_event(event_id="e" * 128, user_id="u" * 128))
    assert len(event.event_id) == len(event.user_id) == 128


# -- refused: what kind, and a readable why -------------------------------------------------------


def test_not_json() -> None:
    exc = refused(b'{"event_id": "e1", "user_id": ')
    assert exc.error_type == "invalid_json"
    assert "JSON" in exc.message


def test_garbage_bytes_are_not_json() -> None:
    assert refused(b"hello world").error_type == "invalid_json"
    assert refused(b"").error_type == "invalid_json"


@pytest.mark.parametrize("raw", [b"\xff\xfe\xfd", b'{"event_id": "\xc3\x28"}', b'"\xe2\x82"'])
def test_invalid_utf8(raw: bytes) -> None:
    exc = refused(raw)
    assert exc.error_type == "invalid_utf8"
    assert "UTF-8" in exc.message


@pytest.mark.parametrize(
    ("raw", "kind"), [(b"[1, 2]", "list"), (b"42", "int"), (b'"text"', "str"), (b"null", "None")]
)
def test_json_that_is_not_an_object(raw: bytes, kind: str) -> None:
    exc = refused(raw)
    assert exc.error_type == "not_an_object"
    assert "object" in exc.message
    assert kind in exc.message


def test_unknown_type_names_the_type_and_the_allowed_ones() -> None:
    exc = refused(raw_event(type="checkout"))
    assert exc.error_type == "unknown_type"
    assert "'checkout'" in exc.message
    assert "purchase" in exc.message and "page_view" in exc.message


def test_unknown_type_message_is_bounded() -> None:
    exc = refused(raw_event(type="x" * 5000))
    assert exc.error_type == "unknown_type"
    assert len(exc.message) < 500


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (raw_event(user_id=_DROP), "user_id"),
        (raw_event(event_id=_DROP), "event_id"),
        (raw_event(type=_DROP), "type"),
        (raw_event(ts=_DROP), "ts"),
        (raw_event(user_id=42), "user_id"),
        (raw_event(event_id=["e1"]), "event_id"),
        (raw_event(type=7), "type"),
        (raw_event(ts=True), "ts"),
        (raw_event(ts=1.5e12 + 0.5), "ts"),
        (raw_event(ts={"at": 1}), "ts"),
        (raw_event(event_id=""), "event_id"),
        (raw_event(user_id=""), "user_id"),
        (raw_event(event_id="e" * 129), "event_id"),
        (raw_event(user_id="u" * 129), "user_id"),
        (raw_event(session_id="s" * 129), "session_id"),
        (raw_event(currency="usd"), "currency"),
        (raw_event(currency="DOLLARS"), "currency"),
        (raw_event(properties={"nested": {"a": 1}}), "properties"),
        (raw_event(properties=["a"]), "properties"),
    ],
)
def test_invalid_fields_name_the_field(raw: bytes, field: str) -> None:
    exc = refused(raw)
    assert exc.error_type == "invalid_field"
    assert field in exc.message


def test_amount_forbidden_on_page_view() -> None:
    exc = refused(raw_event(amount=10))
    assert exc.error_type == "invalid_field"
    assert "amount" in exc.message and "page_view" in exc.message
    assert "not allowed" in exc.message


def test_amount_required_on_purchase() -> None:
    exc = refused(raw_event(type="purchase"))
    assert exc.error_type == "invalid_field"
    assert "amount" in exc.message and "required" in exc.message


@pytest.mark.parametrize("amount", [-0.01, -5, "-3"])
def test_negative_amount(amount: object) -> None:
    exc = refused(raw_event(type="purchase", amount=amount))
    assert exc.error_type == "invalid_field"
    assert "amount" in exc.message


@pytest.mark.parametrize("amount", ["NaN", "nan", "Infinity", "-inf", True, False, "ten", [1]])
def test_non_finite_boolean_or_text_amount(amount: object) -> None:
    exc = refused(raw_event(type="purchase", amount=amount))
    assert exc.error_type == "invalid_field"
    assert "amount" in exc.message


def test_amount_overflowing_a_double_is_refused() -> None:
    raw = b'{"event_id":"e1","user_id":"u1","type":"purchase","ts":1767225600000,"amount":1e999}'
    assert refused(raw).error_type in {"invalid_json", "invalid_field"}


@pytest.mark.parametrize(
    "ts",
    [
        "2026-01-01T00:00:00",  # naive: which zone?
        "2026-01-01",  # a date alone
        "2026-01-01T00:00:00+25:00",  # no such offset
        "yesterday",
        "",
        # ISO 8601 forms that RFC 3339 (and JSON Schema's date-time) exclude:
        "2026-W01-4T00:00Z",  # week date
        "2026-001T00:00:00Z",  # ordinal date
        "20260101T000000Z",  # basic format
        "2026-01-01 00:00:00Z",  # a space for the T (RFC 3339 section 5.6 lets an
        # application choose it; JSON Schema's date-time does not)
        "2026-01-01T00:00Z",  # no seconds
        "2026-01-01T00:00:00+02:00:30",  # offset with seconds
        "2026-01-01T00:00:00+0200",  # offset without colon
        "2026-01-01T00:00:00+02",  # offset hours only
        "2026-01-01T00:00:00,5Z",  # comma decimal sign
        "2026-01-01T00:00:00.Z",  # empty fraction
        "2026-1-1T00:00:00Z",  # one-digit month and day
        "+2026-01-01T00:00:00Z",  # expanded year
        "2026-02-29T00:00:00Z",  # no such day
        "2026-01-01T24:00:00Z",  # no such hour
        "2016-12-31T23:59:60Z",  # a leap second: refused, see parse_rfc3339
        "２０２６-01-01T00:00:00Z",  # digits from another script
        "2026-01-01T00:00:00Z ",  # trailing space
    ],
)
def test_timestamps_that_are_not_rfc3339(ts: str) -> None:
    exc = refused(raw_event(ts=ts))
    assert exc.error_type == "invalid_field"
    assert "ts" in exc.message
    assert repr(ts) in exc.message


def test_timestamp_message_gives_an_example_with_an_offset() -> None:
    exc = refused(raw_event(ts="2026-01-01T00:00:00"))
    assert "2026-01-01T12:00:00Z" in exc.message


def test_future_skew_is_relative_to_now_ms() -> None:
    skew = LIMITS.max_future_skew_ms
    assert skew == 5 * MINUTE
    # Exactly at the allowed skew: fine; one millisecond more: refused.
    assert decode(raw_event(ts=NOW + skew)).ts == NOW + skew
    exc = refused(raw_event(ts=NOW + skew + 1))
    assert exc.error_type == "future_timestamp"
    assert "ahead" in exc.message
    # The same event time is fine for a later clock: the check follows now_ms, not the wall.
    assert decode(raw_event(ts=NOW + skew + 1), now_ms=NOW + 1).ts == NOW + skew + 1


def test_far_future_names_the_distance_in_minutes() -> None:
    exc = refused(raw_event(ts=NOW + 2 * DAY))
    assert exc.error_type == "future_timestamp"
    assert "2880.0 min" in exc.message  # two days ahead


def test_epoch_microseconds_look_like_the_far_future() -> None:
    assert refused(raw_event(ts=JAN1_2026_MS * 1000)).error_type == "future_timestamp"


def test_far_past() -> None:
    earliest = LIMITS.min_event_ms
    assert earliest == 946_684_800_000  # 2000-01-01T00:00:00Z
    assert decode(raw_event(ts=earliest)).ts == earliest
    exc = refused(raw_event(ts=earliest - 1))
    assert exc.error_type == "past_timestamp"
    assert "min_event_time 2000-01-01T00:00:00.000Z" in exc.message
    assert refused(raw_event(ts="1999-12-31T23:59:59Z")).error_type == "past_timestamp"
    assert refused(raw_event(ts=0)).error_type == "past_timestamp"
    assert refused(raw_event(ts=-5)).error_type == "past_timestamp"


def test_epoch_seconds_get_a_hint() -> None:
    exc = refused(raw_event(ts=JAN1_2026_MS // 1000))
    assert exc.error_type == "past_timestamp"
    assert "seconds" in exc.message


def test_history_before_min_event_time_names_the_setting_and_is_accepted_below_it() -> None:
    purchase_1997 = raw_event(ts="1997-01-01T00:00:00Z", type="purchase", amount=29.5)
    exc = refused(purchase_1997)
    assert exc.error_type == "past_timestamp"
    assert "STREAMSCORE_MIN_EVENT_TIME" in exc.message and "seconds" not in exc.message
    older = EventLimits(min_event_ms=0)  # 1970
    assert decode(purchase_1997, limits=older).ts == 852_076_800_000


def test_record_size_limit_is_inclusive() -> None:
    limits = EventLimits(max_bytes=1000)
    body = raw_event()
    # JSON allows trailing whitespace: pad a valid event to exactly the limit, then one more.
    exact = body + b" " * (1000 - len(body))
    assert len(exact) == 1000
    assert decode(exact, limits=limits).event_id == "e1"
    exc = refused(exact + b" ", limits=limits)
    assert exc.error_type == "too_large"
    assert "1001" in exc.message and "1000" in exc.message


def test_too_large_is_checked_before_parsing() -> None:
    exc = refused(b"\xff" * 20_000)
    assert exc.error_type == "too_large"


def test_properties_limit_is_4_kib_encoded() -> None:
    # {"k":"<n x's>"} encodes to 8 + n bytes.
    at_limit = {"k": "x" * 4088}
    assert len(orjson.dumps(at_limit)) == 4096
    assert decode(raw_event(properties=at_limit)).properties == at_limit
    exc = refused(raw_event(properties={"k": "x" * 4089}))
    assert exc.error_type == "invalid_field"
    assert "properties" in exc.message and "4096" in exc.message


def test_properties_limit_counts_encoded_bytes_not_characters() -> None:
    # "é" is two bytes in UTF-8: 2100 of them are 4200 bytes but only 2100 characters.
    exc = refused(raw_event(properties={"k": "é" * 2100}))
    assert exc.error_type == "invalid_field"


# -- never anything but InvalidEvent --------------------------------------------------------------

timestamp_like = (
    st.datetimes(timezones=st.timezones() | st.none()).map(lambda d: d.isoformat())
    | st.from_regex(r"\A[0-9T:+\-.Zz W]{0,32}\Z")
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.text(max_size=130) | json_scalars,
        "user_id": st.text(max_size=130) | json_scalars,
        "type": st.sampled_from([t.value for t in EventType]) | json_scalars,
        "ts": timestamp_like | json_scalars,
        "amount": st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=12)
        | json_scalars,
        "currency": st.sampled_from(["USD", "EUR", "usd", ""]) | json_scalars,
        "session_id": json_scalars,
        "properties": json_values,
    },
)


def _decodes_or_refuses(raw: bytes) -> None:
    try:
        event = decode(raw)
    except InvalidEvent as exc:
        assert exc.error_type in {
            "invalid_json",
            "invalid_utf8",
            "not_an_object",
            "unknown_type",
            "invalid_field",
            "future_timestamp",
            "past_timestamp",
            "too_large",
        }
        assert exc.message
    else:
        assert LIMITS.min_event_ms <= event.ts <= NOW + LIMITS.max_future_skew_ms


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_invalid_event(raw: bytes) -> None:
    _decodes_or_refuses(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_only_raises_invalid_event(value: object) -> None:
    _decodes_or_refuses(orjson.dumps(value))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_like)
def test_event_shaped_json_only_raises_invalid_event(value: dict[str, object]) -> None:
    _decodes_or_refuses(orjson.dumps(value))
