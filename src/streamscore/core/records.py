"""Output records (DESIGN.md §3): the pydantic models document the contract and generate the
JSON Schemas; the builders produce plain dicts on the hot path, and a test validates what
they build against these models.

Every record's ``id`` is derived from its input, so a consumer can deduplicate after a replay.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from streamscore.core.events import Event
from streamscore.core.timeutil import iso

TOPIC_EVENTS = "user-events"
TOPIC_SCORES = "user-scores"
TOPIC_ALERTS = "churn-alerts"
TOPIC_SEGMENTS = "segment-changes"
TOPIC_DLQ = "user-events-dlq"
OUTPUT_TOPICS = (TOPIC_SCORES, TOPIC_ALERTS, TOPIC_SEGMENTS, TOPIC_DLQ)


def record_id(*parts: object) -> str:
    """A deterministic 128-bit id from the parts that identify a record's input."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(str(part).encode())
        h.update(b"\x1f")
    return h.hexdigest()


# An RFC 3339 UTC time as output records carry it; "date-time" tells schema validators.
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UserScore(_Record):
    """A user's churn probability and expected spend as of an event time."""

    id: str
    user_id: str
    as_of: Timestamp = Field(description="event time the score refers to (RFC 3339)")
    churn_probability: float = Field(ge=0, le=1)
    predicted_value: float = Field(ge=0)
    value_horizon_days: float
    segment: str
    lifecycle_stage: str
    model_version: str
    scored_at: Timestamp = Field(description="wall-clock time the score was computed (RFC 3339)")
    trigger: Literal["event", "silence"] = Field(
        description="scored on new events, or rescored because the user went quiet"
    )


class Reason(_Record):
    """One term that pushed the churn score up: an input's weight × scaled value, or the
    model's ``intercept`` (its base rate); before the model has learnt enough labels, the
    probability-alive heuristic ``p_quiet_logit`` that made the score. Never an empty list."""

    feature: str
    contribution: float
    value: float


class ChurnAlert(_Record):
    """A user who crossed the churn threshold, with what to do about it."""

    id: str
    user_id: str
    as_of: Timestamp = Field(description="event time of the score behind it (RFC 3339)")
    churn_probability: float = Field(ge=0, le=1)
    predicted_value: float = Field(ge=0)
    segment: str
    reasons: list[Reason]
    recommended_action: str
    model_version: str


class SegmentChange(_Record):
    """A change of RFM segment or lifecycle stage."""

    id: str
    user_id: str
    as_of: Timestamp = Field(description="event time of the score behind it (RFC 3339)")
    previous: str | None
    current: str
    lifecycle_previous: str | None
    lifecycle_current: str


class DlqSource(_Record):
    """Where a dead-lettered record came from."""

    topic: str
    partition: int
    offset: int


class DeadLetter(_Record):
    """An input record that broke the contract, kept whole with the reason."""

    id: str
    error_type: str
    error: str
    source: DlqSource
    raw: str = Field(description="the original record value, base64")
    received_at: Timestamp = Field(description="wall-clock time it was dead-lettered")


SCHEMAS: dict[str, type[BaseModel]] = {
    TOPIC_EVENTS: Event,
    TOPIC_SCORES: UserScore,
    TOPIC_ALERTS: ChurnAlert,
    TOPIC_SEGMENTS: SegmentChange,
    TOPIC_DLQ: DeadLetter,
}


def dead_letter(
    *, topic: str, partition: int, offset: int, raw: bytes, error_type: str, error: str, now_ms: int
) -> dict[str, object]:
    """Build a ``user-events-dlq`` record."""
    return {
        "id": record_id("dlq", topic, partition, offset),
        "error_type": error_type,
        "error": error,
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "raw": base64.b64encode(raw).decode(),
        "received_at": iso(now_ms),
    }
