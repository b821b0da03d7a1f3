"""The input events' contract (DESIGN.md §2) and the decoder that enforces it.

Decoding never raises anything but ``InvalidEvent``: every way a record can be bad maps to an
``error_type`` a dead-letter consumer can group by, and a message a person can act on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

from streamscore.core import strictjson
from streamscore.core.timeutil import MINUTE_MS, iso, parse_rfc3339
from streamscore.errors import InvalidEvent


class EventType(StrEnum):
    """What a user did."""

    SIGNUP = "signup"
    SESSION_START = "session_start"
    PAGE_VIEW = "page_view"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    PURCHASE = "purchase"
    REFUND = "refund"
    SUPPORT_TICKET = "support_ticket"


EVENT_TYPES = frozenset(t.value for t in EventType)
MONETARY_TYPES = frozenset({EventType.PURCHASE, EventType.REFUND})
MAX_PROPERTIES_BYTES = 4096
# No order is worth a trillion: larger amounts are unit or parsing bugs upstream.
MAX_AMOUNT = 1e12

Id128 = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Text128 = Annotated[str, StringConstraints(max_length=128)]
Scalar = str | int | float | bool | None
DEFAULT_MIN_EVENT_MS = 946_684_800_000  # 2000-01-01T00:00:00Z

# What pydantic cannot derive from the fields: ``amount`` is required on purchases and
# refunds and absent (or null) on every other type. With it the schema accepts exactly what
# the decoder accepts, apart from the sizes and time bounds of ``EventLimits``
# (tests/unit/test_schema_agreement.py).
_AMOUNT_RULE: JsonDict = {
    "if": {
        "properties": {"type": {"enum": [EventType.PURCHASE.value, EventType.REFUND.value]}},
        "required": ["type"],
    },
    "then": {"required": ["amount"], "properties": {"amount": {"type": "number"}}},
    "else": {"properties": {"amount": {"type": "null"}}},
}


class Event(BaseModel):
    """One user event as the contract defines it; ``ts`` is normalised to epoch milliseconds.

    Numbers must be JSON numbers: a string such as ``"12.5"`` is refused where pydantic's lax
    mode would convert it, and so are booleans.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        allow_inf_nan=False,
        json_schema_extra={"allOf": [_AMOUNT_RULE]},
    )

    event_id: Id128
    user_id: Id128
    type: EventType
    ts: Annotated[
        int,
        WithJsonSchema({"anyOf": [{"type": "string", "format": "date-time"}, {"type": "integer"}]}),
    ] = Field(
        description="RFC 3339 date-time with an offset (Z or +hh:mm), or integer epoch "
        "milliseconds; not before the min_event_time setting (default 2000-01-01T00:00:00Z)"
    )
    amount: Annotated[float, Strict()] | None = Field(
        default=None,
        ge=0,
        le=MAX_AMOUNT,
        description="order or refund value, a JSON number from 0 to 1e12; required on "
        "purchase and refund events, absent on the others",
    )
    # The length bound keeps the pattern's meaning the same in every regex dialect: Python's
    # ``$`` (used by the jsonschema package) also matches before a trailing newline.
    currency: Annotated[
        str, StringConstraints(min_length=3, max_length=3, pattern=r"^[A-Z]{3}$")
    ] = "USD"
    session_id: Text128 | None = None
    item_id: Text128 | None = None
    category: Text128 | None = None
    properties: dict[str, Scalar] | None = None

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, value: Any) -> int:
        """RFC 3339 text, or a JSON number without a fraction (JSON Schema's "integer")."""
        if isinstance(value, bool):
            raise ValueError("must be an RFC 3339 string or epoch milliseconds, not a boolean")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return parse_rfc3339(value)
        raise ValueError("must be an RFC 3339 string with an offset, or integer epoch milliseconds")

    @model_validator(mode="after")
    def _check_rules(self) -> Event:
        if self.type in MONETARY_TYPES and self.amount is None:
            raise ValueError(f"amount is required for {self.type.value} events")
        if self.type not in MONETARY_TYPES and self.amount is not None:
            raise ValueError(f"amount is not allowed on {self.type.value} events")
        if (
            self.properties is not None
            and len(orjson.dumps(self.properties)) > MAX_PROPERTIES_BYTES
        ):
            raise ValueError(f"properties exceed {MAX_PROPERTIES_BYTES} bytes once encoded")
        return self


@dataclass(frozen=True, slots=True)
class EventLimits:
    """Bounds on what an acceptable event looks like, besides its schema."""

    max_bytes: int = 16_384
    max_future_skew_ms: int = 5 * MINUTE_MS
    # A sanity bound, not a statement about history: the default catches epoch seconds sent
    # as milliseconds and zeroed clocks; a backfill of older data lowers it (min_event_time).
    min_event_ms: int = DEFAULT_MIN_EVENT_MS

    def check_time(self, ts: int, now_ms: int) -> None:
        """Refuse timestamps from the future (beyond the skew) or from before any shop existed."""
        if ts > now_ms + self.max_future_skew_ms:
            ahead = (ts - now_ms) / MINUTE_MS
            raise InvalidEvent(
                "future_timestamp",
                f"ts is {ahead:.1f} min ahead of the receiving clock "
                f"(allowed skew {self.max_future_skew_ms / MINUTE_MS:.1f} min); "
                "check the producer's clock or its timestamp unit (milliseconds expected)",
            )
        if ts < self.min_event_ms:
            bound = iso(self.min_event_ms)
            # Epoch seconds for any date since 1973 stay below 1e11; milliseconds do not.
            seconds = ts * 1000 >= self.min_event_ms and ts < 100_000_000_000
            raise InvalidEvent(
                "past_timestamp",
                f"ts {ts} ({iso(ts) if ts > -62_135_596_800_000 else 'before year 1'}) is before "
                f"min_event_time {bound}; "
                + (
                    "epoch seconds instead of milliseconds?"
                    if seconds
                    else "to accept older events (a backfill), lower STREAMSCORE_MIN_EVENT_TIME"
                ),
            )


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "event"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def decode_event(raw: bytes, *, now_ms: int, limits: EventLimits) -> Event:
    """Turn one record value into an ``Event`` or raise ``InvalidEvent`` saying what is wrong."""
    if len(raw) > limits.max_bytes:
        raise InvalidEvent(
            "too_large",
            f"record is {len(raw)} bytes; the limit is {limits.max_bytes} "
            "(STREAMSCORE_MAX_EVENT_BYTES)",
        )
    try:
        obj = strictjson.loads(raw)
    except strictjson.JSONDecodeError as exc:
        kind = "invalid_utf8" if "UTF-8" in str(exc) else "invalid_json"
        raise InvalidEvent(kind, f"value is not valid JSON: {exc}") from None
    except ValueError as exc:  # a repeated key, or nesting too deep to check for one
        raise InvalidEvent("invalid_json", f"value is not acceptable JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("not_an_object", f"value is a JSON {type(obj).__name__}, not an object")
    declared = obj.get("type")
    if isinstance(declared, str) and declared not in EVENT_TYPES:
        raise InvalidEvent(
            "unknown_type",
            f"type {declared[:64]!r} is not one of {', '.join(sorted(EVENT_TYPES))}",
        )
    try:
        event = Event.model_validate(obj)
    except ValidationError as exc:
        raise InvalidEvent("invalid_field", _describe(exc)) from None
    limits.check_time(event.ts, now_ms)
    return event
