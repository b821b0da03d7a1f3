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
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from streamscore.core.timeutil import DAY_MS, MINUTE_MS, parse_rfc3339
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


class Event(BaseModel):
    """One user event as the contract defines it; ``ts`` is normalised to epoch milliseconds."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    event_id: Id128
    user_id: Id128
    type: EventType
    ts: Annotated[
        int,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "format": "date-time"},
                    {"type": "integer", "minimum": 946684800000},
                ]
            }
        ),
    ] = Field(description="RFC 3339 timestamp with offset, or epoch milliseconds")
    amount: float | None = Field(
        default=None, ge=0, le=MAX_AMOUNT, description="order or refund value, 0 to 1e12"
    )
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "USD"
    session_id: Text128 | None = None
    item_id: Text128 | None = None
    category: Text128 | None = None
    properties: dict[str, Scalar] | None = None

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("must be an RFC 3339 string or epoch milliseconds, not a boolean")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return parse_rfc3339(value)
        raise ValueError("must be an RFC 3339 string with an offset, or integer epoch milliseconds")

    @field_validator("amount", mode="before")
    @classmethod
    def _no_bool_amount(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value

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
    min_event_ms: int = 946_684_800_000  # 2000-01-01: earlier is a bug upstream, not history

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
            raise InvalidEvent(
                "past_timestamp",
                f"ts {ts} is before the earliest accepted event time {self.min_event_ms}; "
                "epoch seconds instead of milliseconds?"
                if ts > self.min_event_ms // 1000 - DAY_MS
                else f"ts {ts} is before the earliest accepted event time {self.min_event_ms}",
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
            "too_large", f"record is {len(raw)} bytes; the limit is {limits.max_bytes}"
        )
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        kind = "invalid_utf8" if "UTF-8" in str(exc) else "invalid_json"
        raise InvalidEvent(kind, f"value is not valid JSON: {exc}") from None
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
