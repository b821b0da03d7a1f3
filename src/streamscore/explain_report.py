"""``streamscore explain USER_ID``: one user's state, scores and why, for a support agent.

Reads the user's state and the model checkpoint from Redis (nothing is written), scores the
user as of their partition's saved watermark (the event time the scorer has reached; their
last event if later), and prints features, both scores, each score's additive contributions
(``core/explain.py``) and the training snapshots still waiting for their label.
"""

from __future__ import annotations

from typing import Any

import orjson

from streamscore.adapters.pseudonymous import maybe_pseudonymous
from streamscore.adapters.redis_store import RedisStateStore
from streamscore.config import Settings
from streamscore.core.explain import OFFSET_CHURN, OFFSET_VALUE, explain
from streamscore.core.scorer import Scorer
from streamscore.core.state import UserState
from streamscore.core.timeutil import iso
from streamscore.errors import StreamscoreError
from streamscore.model_checkpoints import LineageStore
from streamscore.wiring import in_process_scorer

DERIVED_SHOWN = (
    ("recency_days", "days since the last event"),
    ("days_since_purchase", "days since the last purchase"),
    ("tenure_days", "days since the first event"),
    ("events", "events"),
    ("sessions", "sessions"),
    ("purchases", "purchases"),
    ("spend", "spend"),
    ("avg_order_value", "average order"),
    ("purchase_gap_days", "usual days between purchases"),
    ("purchase_gap_ratio", "days since purchase ÷ usual gap"),
    ("refund_rate", "refunds per purchase"),
    ("tickets", "support tickets"),
)


def report(settings: Settings, user_id: str) -> dict[str, Any] | None:
    """Everything ``explain`` shows, as data; None when the user has no state."""
    store = maybe_pseudonymous(RedisStateStore.from_settings(settings), settings)
    try:
        raw = store.load([user_id]).get(user_id)
        if raw is None:
            return None
        state = UserState.from_bytes(user_id, raw)
        scorer, trainer = in_process_scorer(settings.scoring(), settings.model_params())
        published = LineageStore(settings, store).load()  # the version the scorers serve
        if published is not None:
            trainer.models, trainer.rfm = published.models, published.rfm
        restored = published is not None
        watermark = store.watermarks([state.partition]).get(state.partition, 0)
    finally:
        store.close()
    return build(scorer, state, watermark, restored=restored)


def build(scorer: Scorer, state: UserState, watermark: int, *, restored: bool) -> dict[str, Any]:
    """The report of one state as of ``max(watermark, last event)``."""
    f = state.features
    as_of = max(watermark, f.last_seen_ms)
    ev = scorer.evaluate(state, as_of)
    models = scorer.lineage.models
    cfg = scorer.config
    return {
        "user_id": state.user_id,
        "as_of": iso(as_of),
        "model_version": models.version,
        "models_restored": restored,
        "churn_probability": round(ev.churn, 6),
        "churn_horizon_days": cfg.churn_horizon_days,
        "predicted_value": round(ev.value, 2),
        "value_horizon_days": cfg.value_horizon_days,
        "segment": ev.segment,
        "lifecycle_stage": ev.lifecycle,
        "alert_active": state.alert.active,
        "last_alert": iso(state.alert.last_alert_ms) if state.alert.last_alert_ms else None,
        "first_seen": iso(f.first_seen_ms),
        "last_seen": iso(f.last_seen_ms),
        "features": {k: round(v, 4) for k, v in ev.derived.items()},
        "explanation": explain(models, ev.churn_x),
        "pending_snapshots": [
            {
                "at": iso(s.t_ms),
                "predicted_churn": round(s.served_churn, 4),
                "predicted_value": round(s.served_value, 2),
                "active_since": s.returned,
                "spend_since": round(s.spend, 2),
                "churn_label_due": iso(s.t_ms + cfg.churn_horizon_ms),
                "churn_learnt": s.churn_learnt,
                "value_label_due": iso(s.t_ms + cfg.value_horizon_ms),
                "value_learnt": s.value_learnt,
                "weight": round(s.weight, 3),
            }
            for s in state.snapshots
        ],
    }


def _term_line(term: dict[str, Any], up: str, down: str) -> str:
    c = float(term["contribution"])
    name = term["feature"]
    if name == OFFSET_CHURN:
        what = (
            f"population model: {term['value']:.0%} chance of no activity, given rhythm and silence"
        )
    elif name == OFFSET_VALUE:
        what = f"population model: {term['value']:.2f} orders expected"
    elif name == "intercept":
        what = "learnt base correction (intercept)"
    elif name == "bound":
        what = "correction cut at its safety bound"
    else:
        what = f"{name} = {term['value']:g}: {up if c > 0 else down}"
    return f"  {c:+8.4f}  {what}"


def text(rep: dict[str, Any]) -> str:
    """The report in words."""
    why = rep["explanation"]
    days = rep["churn_horizon_days"]
    lines = [
        f"user {rep['user_id']}, as of {rep['as_of']} (model {rep['model_version']}"
        + ("" if rep["models_restored"] else ", no checkpoint: fresh models")
        + ")",
        "",
        f"churn probability  {rep['churn_probability']:.2f}  (no activity within {days:g} days)",
        f"predicted value    {rep['predicted_value']:.2f}  (spend within "
        f"{rep['value_horizon_days']:g} days)",
        f"segment            {rep['segment']}, lifecycle stage {rep['lifecycle_stage']}",
        "alert              "
        + ("active" if rep["alert_active"] else "not active")
        + (f", last raised {rep['last_alert']}" if rep["last_alert"] else ""),
        f"seen               {rep['first_seen']} to {rep['last_seen']}",
        "",
        "features",
    ]
    feats = rep["features"]
    lines += [f"  {feats[k]:>10g}  {label}" for k, label in DERIVED_SHOWN if k in feats]
    lines += [
        "",
        f"why this churn probability: terms on the log-odds scale, adding up to "
        f"{why['churn']['logit']:+.4f}",
    ]
    lines += [_term_line(t, "raises the risk", "lowers the risk") for t in why["churn"]["terms"]]
    lines += [
        "",
        f"why this predicted value: terms on the log scale of expected orders, adding up to "
        f"{why['value']['log_orders']:+.4f}, times {why['value']['order_value']:.2f} per order",
    ]
    lines += [
        _term_line(t, "more orders expected", "fewer orders expected")
        for t in why["value"]["terms"]
    ]
    snaps = rep["pending_snapshots"]
    lines += ["", f"training snapshots waiting for their label: {len(snaps)}"]
    for s in snaps:
        churn = "learnt" if s["churn_learnt"] else f"due {s['churn_label_due'][:10]}"
        value = "learnt" if s["value_learnt"] else f"due {s['value_label_due'][:10]}"
        lines.append(
            f"  {s['at'][:16]}  predicted churn {s['predicted_churn']:.2f}, value "
            f"{s['predicted_value']:.2f}; active since: {'yes' if s['active_since'] else 'no'}, "
            f"spend since {s['spend_since']:.2f}; churn label {churn}, value label {value}"
        )
    return "\n".join(lines)


def explain_user(settings: Settings, user_id: str, *, as_json: bool) -> int:
    """Print the report; exit code 1 when the user has no state."""
    rep = report(settings, user_id)
    if rep is None:
        raise StreamscoreError(
            f"no state for user {user_id!r} under key prefix {settings.redis_key_prefix!r}: never "
            f"seen, expired (state_retention_days={settings.state_retention_days:g}), or erased"
        )
    print(orjson.dumps(rep, option=orjson.OPT_INDENT_2).decode() if as_json else text(rep))
    return 0
