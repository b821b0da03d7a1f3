"""Every churn alert says why: the reasons are the terms of the score's logit."""

from __future__ import annotations

import math

from streamscore.core.inputs import CHURN_INPUTS, VALUE_INPUTS, named
from streamscore.core.models import ModelParams, Models

N_CHURN = len(CHURN_INPUTS)
DERIVED = dict.fromkeys({*CHURN_INPUTS, *VALUE_INPUTS}, 1.0)


def x(p_quiet_logit: float, rest: float = 0.5) -> list[float]:
    return [p_quiet_logit] + [rest] * (N_CHURN - 1)


def test_before_any_label_the_reason_is_the_heuristic_that_made_the_score() -> None:
    models = Models()
    churn, _ = models.predict(x(2.0), [0.0] * len(VALUE_INPUTS))
    assert churn == 1 / (1 + math.exp(-2.0))
    reasons = models.churn_reasons(x(2.0), DERIVED)
    assert reasons == [{"feature": "p_quiet_logit", "contribution": 2.0, "value": 2.0}]


def test_reasons_are_the_positive_terms_largest_first() -> None:
    models = Models(ModelParams(warmup_labels=10))
    for i in range(400):  # churners have a high first input
        high = i % 2 == 0
        models.learn_churn(named(CHURN_INPUTS, x(3.0 if high else -3.0, rest=float(i % 7))), high)
    reasons = models.churn_reasons(x(3.0, 3.0), DERIVED, top=N_CHURN + 1)
    contributions = [float(r["contribution"]) for r in reasons]
    assert contributions and all(c > 0 for c in contributions)
    assert contributions == sorted(contributions, reverse=True)
    assert reasons[0]["feature"] == "p_quiet_logit"
    assert len(models.churn_reasons(x(3.0, 3.0), DERIVED)) <= 3


def test_a_score_carried_by_the_base_rate_names_the_intercept() -> None:
    models = Models(ModelParams(warmup_labels=10))
    for i in range(300):  # 90% churn whatever the inputs: only the intercept is informative
        models.learn_churn(named(CHURN_INPUTS, x(0.0, rest=0.0)), i % 10 != 0)
    lr = models.churn["LogisticRegression"]
    assert lr.intercept > 0
    reasons = models.churn_reasons(x(0.0, rest=0.0), DERIVED)
    assert reasons[0]["feature"] == "intercept" and float(reasons[0]["contribution"]) > 0
    assert reasons[0]["value"] == 1.0
