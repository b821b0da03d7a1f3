"""The records of an evaluation: ``user-scores``, ``segment-changes``, ``churn-alerts``.

Plain dicts on the hot path, in the field order of the pydantic models in ``records.py``
(which document the contract, and against which a test validates what is built here). Every
``id`` is derived from the input that caused the record, so consumers can deduplicate.
"""

from __future__ import annotations

from typing import Any

from streamscore.core.records import TOPIC_ALERTS, TOPIC_SEGMENTS, record_id
from streamscore.core.timeutil import iso
from streamscore.core.values import Evaluation, Output, ScoringConfig


def score_record(
    config: ScoringConfig,
    user_id: str,
    ev: Evaluation,
    t_ms: int,
    now_ms: int,
    *,
    trigger: str,
    key: str,
    model_version: str,
    explanation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``user-scores`` record of an evaluation as of ``t_ms`` (``key``: what caused it)."""
    record = {
        "id": record_id("score", user_id, trigger, key),
        "user_id": user_id,
        "as_of": iso(t_ms),
        "churn_probability": round(ev.churn, 6),
        "predicted_value": round(ev.value, 2),
        "value_horizon_days": config.value_horizon_days,
        "segment": ev.segment,
        "lifecycle_stage": ev.lifecycle,
        "model_version": model_version,
        "scored_at": iso(now_ms),
        "trigger": trigger,
    }
    if explanation is not None:
        record["explanation"] = explanation
    return record


def segment_change(
    user_id: str,
    ev: Evaluation,
    t_ms: int,
    *,
    previous: str | None,
    lifecycle_previous: str | None,
) -> Output:
    """The ``segment-changes`` record of a move to the evaluation's segment or stage."""
    return Output(
        TOPIC_SEGMENTS,
        user_id,
        {
            "id": record_id("segment", user_id, t_ms, ev.segment, ev.lifecycle),
            "user_id": user_id,
            "as_of": iso(t_ms),
            "previous": previous,
            "current": ev.segment,
            "lifecycle_previous": lifecycle_previous,
            "lifecycle_current": ev.lifecycle,
        },
    )


def churn_alert(
    config: ScoringConfig,
    user_id: str,
    ev: Evaluation,
    t_ms: int,
    *,
    reasons: list[dict[str, float | str]],
    model_version: str,
    explanation: dict[str, Any] | None = None,
) -> Output:
    """The ``churn-alerts`` record of an evaluation that raised an alert."""
    return Output(
        TOPIC_ALERTS,
        user_id,
        {
            "id": record_id("alert", user_id, t_ms),
            "user_id": user_id,
            "as_of": iso(t_ms),
            "churn_probability": round(ev.churn, 6),
            "predicted_value": round(ev.value, 2),
            "segment": ev.segment,
            "reasons": reasons,
            "recommended_action": config.alerts.action(ev.churn, ev.value),
            "model_version": model_version,
            "explanation": explanation,
        },
    )
