"""Why a score is what it is: each model's additive contributions, exact by construction.

Both models are a GLM correction on top of the population (BTYD) model (``models.py``), so on
the link scale a score is a sum:

- churn: ``logit(p) = offset + intercept + Σ wᵢ·zᵢ``, the offset being the logit of the
  population model's probability of no activity within the horizon;
- value: ``log(expected orders) = offset + intercept + Σ wᵢ·zᵢ`` (offset: the log of the
  population model's expected orders), and the predicted value is that count times
  Gamma-Gamma's expected order value, reported as its own factor.

While the serving gate serves the BTYD model's prediction (``gate.py``), that score has the
offset as its only term.

``zᵢ`` is the standardised input (clipped at ±4 sd) and ``wᵢ`` its learnt weight; a correction
beyond the safety bound (±4) is cut, and the cut is a term of its own (``bound``), so the
terms always add up to the link value the score was computed from. Contributions are rounded
to 4 decimals when reported (the sum then agrees to the rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from streamscore.core.glm import MAX_CORRECTION, MAX_LINK, OffsetGLM, logit
from streamscore.core.models import Models

OFFSET_CHURN = "btyd_churn_logit"
OFFSET_VALUE = "btyd_log_orders"


def _offset_term(name: str, offset: float, value: float) -> dict[str, Any]:
    return {"feature": name, "contribution": round(offset, 4), "value": round(value, 6)}


def _terms(
    glm: OffsetGLM,
    x: dict[str, float],
    offset_name: str,
    offset: float,
    offset_value: float,
    *,
    served: bool,
) -> tuple[float, list[dict[str, Any]]]:
    """The link value and its terms: offset, intercept, inputs (largest first), bound; the
    offset alone when the corrections are not ``served``."""
    if not served:
        return offset, [_offset_term(offset_name, offset, offset_value)]
    intercept = glm.intercept["intercept"]
    parts = glm.correction(x)
    correction = intercept + sum(parts.values())
    kept = min(max(correction, -MAX_CORRECTION), MAX_CORRECTION)
    link = min(max(offset + kept, -MAX_LINK), MAX_LINK)
    bound = link - offset - correction
    terms: list[dict[str, Any]] = [
        _offset_term(offset_name, offset, offset_value),
        {"feature": "intercept", "contribution": round(intercept, 4), "value": None},
    ]
    inputs = sorted(parts.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    terms += [
        {"feature": k, "contribution": round(c, 4), "value": round(x[k], 4)}
        for k, c in inputs
        if round(c, 4) != 0
    ]
    if abs(bound) > 1e-12:
        terms.append({"feature": "bound", "contribution": round(bound, 4), "value": None})
    return link, terms


def explain(models: Models, raw: Sequence[float]) -> dict[str, Any]:
    """Both scores' contributions for one raw input vector (``inputs.model_inputs``), as the
    ``explanation`` of ``records.Explanation``."""
    base = models.baseline(raw)
    x = models.correction_inputs(raw, base)
    gate = models.gate
    churn_link, churn_terms = _terms(
        models.churn,
        x,
        OFFSET_CHURN,
        logit(base.p_churn),
        base.p_churn,
        served=gate.serve_churn_corrections,
    )
    log_orders = math.log(max(base.orders, 1e-9))
    value_link, value_terms = _terms(
        models.value, x, OFFSET_VALUE, log_orders, base.orders, served=gate.serve_value_corrections
    )
    return {
        "churn": {"logit": round(churn_link, 4), "terms": churn_terms},
        "value": {
            "log_orders": round(value_link, 4),
            "order_value": round(base.order_value, 2),
            "terms": value_terms,
        },
    }
