"""Output records (DESIGN.md §3): the pydantic models document the contract and generate the
JSON Schemas; the builders produce plain dicts on the hot path, and a test validates what
they build against these models.

Every record's ``id`` is derived from its input, so a consumer can deduplicate after a replay.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from streamscore.core.events import Event
from streamscore.core.timeutil import iso

TOPIC_EVENTS = "user-events"
TOPIC_SCORES = "user-scores"
TOPIC_ALERTS = "churn-alerts"
TOPIC_SEGMENTS = "segment-changes"
TOPIC_DLQ = "user-events-dlq"
# What the model lineage learns from: one partition, read by the one trainer (README: "One
# model lineage"); records carry no user id and are written by ``core/training_records.py``.
TOPIC_TRAINING = "training-examples"
TOPIC_ERASURES = "user-erasures"  # input: requests to forget a user (``core/erasure.py``)
TOPIC_CONFIRMATIONS = "erasure-confirmations"
OUTPUT_TOPICS = (TOPIC_SCORES, TOPIC_ALERTS, TOPIC_SEGMENTS, TOPIC_DLQ)
ERASURE_TOPICS = (TOPIC_ERASURES, TOPIC_CONFIRMATIONS)  # only where erasures are wired (run)
# The topics keyed by user whose records an erasure retracts with a null-value tombstone.
USER_KEYED_TOPICS = (TOPIC_SCORES, TOPIC_ALERTS, TOPIC_SEGMENTS)
# The header of an input record the scorer re-keyed by its user_id (on_key_mismatch=rekey):
# "<partition>:<offset>" of the record it copies, which is how a second copy is recognised.
REKEYED_FROM_HEADER = "streamscore-rekeyed-from"

# A dead letter keeps at most this much of the record it is about: the default
# max_event_bytes, so a record refused for anything but its size is kept whole, and the
# largest dead letter (raw in base64, plus a bounded error text) stays near 35 KB, far inside
# the broker's default 1 MB limit. ``raw_size`` and ``raw_sha256`` describe the whole value.
DLQ_RAW_MAX_BYTES = 16_384
DLQ_ERROR_MAX_CHARS = 2_000
UNDELIVERABLE = "undeliverable_output"


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
    explanation: Explanation | None = Field(
        default=None, description="present with explain_scores=true"
    )


class Reason(_Record):
    """One term that pushed the churn score up: an input's weight × scaled value, or the
    model's ``intercept`` (its base rate); before the model has learnt enough labels, the
    probability-alive heuristic ``p_quiet_logit`` that made the score. Never an empty list."""

    feature: str
    contribution: float
    value: float


class Contribution(_Record):
    """One additive term of a score on its link scale: the population model's offset, the
    correction's intercept, an input's weight × standardised value, or the safety ``bound``."""

    feature: str
    contribution: float
    value: float | None = Field(
        description="the input as the correction sees it (the offset: the population model's "
        "own estimate); null for the intercept and the bound"
    )


class ChurnExplanation(_Record):
    """The terms sum to ``logit``, the log-odds of ``churn_probability``."""

    logit: float
    terms: list[Contribution]


class ValueExplanation(_Record):
    """The terms sum to ``log_orders``; ``predicted_value`` = exp(log_orders) × order_value."""

    log_orders: float = Field(description="log of the expected orders within the horizon")
    order_value: float = Field(description="Gamma-Gamma's expected spend per order")
    terms: list[Contribution]


class Explanation(_Record):
    """Both scores' additive contributions, exact for the linear parts (``core/explain.py``)."""

    churn: ChurnExplanation
    value: ValueExplanation


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
    explanation: Explanation | None = Field(
        default=None, description="the scores' additive contributions (always set by this version)"
    )


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


class UndeliveredOutput(_Record):
    """An output record Kafka refused for good (``error_type: undeliverable_output``)."""

    topic: str = Field(description="the output topic that refused it")
    id: str = Field(description="the record's id")
    key: str | None
    size: int = Field(description="bytes of the record's value")
    sha256: str = Field(description="SHA-256 of the record's value, hex")


class DeadLetter(_Record):
    """An input record that broke the contract (its first 16 KiB, with size and hash of the
    whole), or an output record Kafka would not take, with the reason."""

    id: str
    error_type: str
    error: str = Field(description=f"what is wrong, at most {DLQ_ERROR_MAX_CHARS} characters")
    source: DlqSource | None = Field(
        description="the input record; null only for an undeliverable output that came from "
        "no single input record (a score, an alert or a segment change)"
    )
    raw: str = Field(
        description=f"the input record's value, base64, cut to its first {DLQ_RAW_MAX_BYTES} "
        "bytes (empty for an undeliverable output)"
    )
    raw_size: int = Field(description="bytes of the whole input value")
    raw_sha256: str = Field(description="SHA-256 of the whole input value, hex")
    raw_truncated: bool = Field(description="raw holds only a prefix of the value")
    received_at: Timestamp = Field(description="wall-clock time it was dead-lettered")
    undelivered: UndeliveredOutput | None = Field(
        default=None, description="set for error_type undeliverable_output"
    )


class LabelRecord(_Record):
    """A resolved label with the prediction stored when its snapshot was taken."""

    id: str = Field(description="hash of user, snapshot time and model: the same on a replay")
    type: Literal["label"]
    v: int = Field(description="format of this record")
    model: Literal["churn", "value"]
    schema_id: str = Field(description="id of the input set `inputs` follows")
    inputs: list[float | None] = Field(
        description="the models' inputs at the snapshot, in the order of the input set; "
        "null: not derivable"
    )
    label: float = Field(description="churn: 1 churned, 0 not; value: spend within the horizon")
    predicted: float = Field(description="the prediction the scores carried at the snapshot")
    baseline: float | None = Field(description="value: the naive baseline; churn: null")
    snapshot_ms: int
    label_ms: int = Field(description="when the label became final (snapshot + horizon)")
    weight: float = Field(description="inverse of the probability the snapshot was taken with")
    model_version: str | None = Field(description="version that made the prediction")
    orders: float | None = Field(description="value: orders within the horizon")
    btyd: float | None = Field(description="the buy-till-you-die model's own prediction then")
    corrected: float | None = Field(
        default=None,
        description="the corrected model's prediction then, served or not (the serving "
        "gate's race); absent from records of scorers before it",
    )


class PopulationRecord(_Record):
    """A customer at a snapshot: what the RFM quantiles are fitted to."""

    id: str = Field(description="hash of user and snapshot time")
    type: Literal["rfm"]
    v: int
    days_since_purchase: float
    purchases: float
    spend: float


class CustomerRecord(_Record):
    """A sampled customer's summary after an event: what the population model is fitted to."""

    id: str = Field(description="hash of key_hash and t_ms")
    type: Literal["customer"]
    v: int
    key_hash: int = Field(description="64-bit hash standing for the customer (not the id)")
    t_ms: int = Field(description="event time of the customer's latest event")
    partition: int = Field(
        default=-1,
        description="input partition of the customer (-1: unknown); the population fit "
        "measures each customer's silence by how far their own partition has been read",
    )
    schema_id: str
    inputs: list[float | None]


class TrainingRecord(RootModel[LabelRecord | PopulationRecord | CustomerRecord]):
    """One record of ``training-examples``: one call of the scorer's learner, no user id."""

    root: Annotated[LabelRecord | PopulationRecord | CustomerRecord, Field(discriminator="type")]


class ErasureRequest(_Record):
    """A request to forget everything held about one user (input topic ``user-erasures``,
    keyed by the user id). Events of the user at or before ``requested_at`` are never
    applied again; later ones start a new state."""

    request_id: str = Field(min_length=1, max_length=128, description="unique per request")
    user_id: str = Field(min_length=1, max_length=128)
    requested_at: Timestamp = Field(
        description="the erasure's time (RFC 3339): events at or before it are dropped"
    )


class ErasureConfirmation(_Record):
    """Sent once a user's state, due entries and pending snapshots are deleted and a
    tombstone is on every user-keyed output topic. Repeated after a crash (same ``id``)."""

    id: str
    request_id: str
    user_id: str
    requested_at: Timestamp
    erased_at: Timestamp = Field(description="wall-clock time the deletion was saved")
    state_found: bool = Field(description="whether a state existed (it may have expired)")
    pending_snapshots: int = Field(ge=0, description="training snapshots deleted with it")
    tombstones: list[str] = Field(description="output topics a null-value tombstone went to")


SCHEMAS: dict[str, type[BaseModel]] = {
    TOPIC_EVENTS: Event,
    TOPIC_SCORES: UserScore,
    TOPIC_ALERTS: ChurnAlert,
    TOPIC_SEGMENTS: SegmentChange,
    TOPIC_DLQ: DeadLetter,
    TOPIC_TRAINING: TrainingRecord,
    TOPIC_CONFIRMATIONS: ErasureConfirmation,
    TOPIC_ERASURES: ErasureRequest,
}


def dead_letter(
    *, topic: str, partition: int, offset: int, raw: bytes, error_type: str, error: str, now_ms: int
) -> dict[str, object]:
    """Build a ``user-events-dlq`` record; bounded in size whatever ``raw`` and ``error`` are."""
    kept = raw[:DLQ_RAW_MAX_BYTES]
    return {
        "id": record_id("dlq", topic, partition, offset),
        "error_type": error_type,
        "error": _bounded(error),
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "raw": base64.b64encode(kept).decode(),
        "raw_size": len(raw),
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
        "raw_truncated": len(kept) < len(raw),
        "received_at": iso(now_ms),
    }


def undeliverable_letter(
    *,
    topic: str,
    value: dict[str, object],
    key: str | None,
    encoded: bytes,
    reason: str,
    now_ms: int,
    of_dead_letter: bool,
) -> dict[str, object]:
    """A small ``user-events-dlq`` record about an output record Kafka refused for good.

    ``value`` is the refused record (``encoded``, its bytes, sent to the topic named
    ``topic``). When it is a dead letter itself (``of_dead_letter``), the new one keeps its
    source, error and input hash, without the raw bytes; for a score, an alert or a segment
    change, the record's id and key say what it was.
    """
    inner = value if of_dead_letter else {}
    rid = str(value.get("id", ""))
    error = f"{topic} refused record {rid} ({len(encoded)} bytes): {reason}"
    if inner:
        error += f"; it was a dead letter: {inner.get('error_type')}: {inner.get('error')}"
    return {
        "id": record_id("undeliverable", topic, rid),
        "error_type": UNDELIVERABLE,
        "error": _bounded(error),
        "source": inner.get("source"),
        "raw": "",
        "raw_size": inner.get("raw_size", 0),
        "raw_sha256": inner.get("raw_sha256", hashlib.sha256(b"").hexdigest()),
        "raw_truncated": bool(inner.get("raw_size")),
        "received_at": iso(now_ms),
        "undelivered": {
            "topic": topic,
            "id": rid,
            "key": key,
            "size": len(encoded),
            "sha256": hashlib.sha256(encoded).hexdigest(),
        },
    }


def _bounded(text: str) -> str:
    if len(text) <= DLQ_ERROR_MAX_CHARS:
        return text
    return text[: DLQ_ERROR_MAX_CHARS - 32] + f" ... ({len(text)} chars)"
