"""The models' inputs: which derived features they take, how each enters, and the schema id.

Kept apart from ``models.py`` (which needs river) because stored snapshots and training
examples carry these inputs: the state codec and anything that moves examples around need the
names, not the learners.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

# Model inputs: derived feature name → whether it enters as log1p (counts, amounts and
# durations are heavy-tailed) or as is (logits, ratios in [0, 1]).
CHURN_INPUTS: dict[str, bool] = {
    "p_quiet_logit": False,
    "p_alive_logit": False,
    "recency_days": True,
    "tenure_days": True,
    "sessions": True,
    "session_rate": True,
    "session_gap_ratio": True,
    "events_hl7d": True,
    "events_hl30d": True,
    "purchases": True,
    "days_since_purchase": True,
    "purchase_gap_ratio": True,
    "spend": True,
    "tickets": True,
    "refund_rate": False,
    "cart_to_purchase": False,
}
VALUE_INPUTS: dict[str, bool] = {
    "spend": True,
    "spend_hl7d": True,
    "spend_hl30d": True,
    "purchases": True,
    "avg_order_value": True,
    "p_alive_logit": False,
    "days_since_purchase": True,
    "purchase_gap_days": True,
    "recency_days": True,
    "session_rate": True,
    "session_gap_ratio": True,
    "events_hl30d": True,
    "refund_rate": False,
}
FEATURE_SCHEMA = hashlib.sha256(
    ("|".join(CHURN_INPUTS) + "#" + "|".join(VALUE_INPUTS)).encode()
).hexdigest()[:12]


_CHURN_SPEC = tuple(CHURN_INPUTS.items())
_VALUE_SPEC = tuple(VALUE_INPUTS.items())


def _vector(spec: tuple[tuple[str, bool], ...], derived: dict[str, float]) -> list[float]:
    log1p = math.log1p
    out = []
    for name, logged in spec:
        v = derived[name]
        out.append((log1p(v) if v > 0 else 0.0) if logged else v)
    return out


def churn_inputs(derived: dict[str, float]) -> list[float]:
    """The churn model's input vector, in ``CHURN_INPUTS`` order."""
    return _vector(_CHURN_SPEC, derived)


def value_inputs(derived: dict[str, float]) -> list[float]:
    """The value model's input vector, in ``VALUE_INPUTS`` order."""
    return _vector(_VALUE_SPEC, derived)


def named(names: Iterable[str], values: Iterable[float]) -> dict[str, float]:
    """An input vector as a mapping by name; NaN marks an input that could not be derived."""
    return {k: v for k, v in zip(names, values, strict=True) if not math.isnan(v)}


def vector(names: Iterable[str], inputs: Mapping[str, float]) -> list[float]:
    """The inverse of ``named``: values in ``names`` order, NaN for the missing ones."""
    return [inputs.get(k, math.nan) for k in names]
