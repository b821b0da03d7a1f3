"""Every churn alert says why: the BTYD model's evidence first, then the corrections that
raise the score."""

from __future__ import annotations

from streamscore.core.glm import logit
from streamscore.core.inputs import MODEL_INPUTS
from streamscore.core.models import Models
from tests.unit.test_serving_gate import serve_corrections

BASE = {**dict.fromkeys(MODEL_INPUTS, 0.0), "x": 2.0, "t_x": 20.0, "T": 60.0, "px": 2.0}
BASE |= {"pt_x": 20.0, "orders": 3.0, "mean_order": 30.0}


def raw(**changes: float) -> list[float]:
    values = {**BASE, **changes}
    return [values[name] for name in MODEL_INPUTS]


def test_before_any_label_the_reason_is_the_btyd_evidence_that_made_the_score() -> None:
    models = Models()
    churn, _ = models.predict(raw())
    base = models.baseline(raw())
    assert churn == base.p_churn
    assert models.churn_reasons(raw()) == [
        {
            "feature": "btyd_churn_probability",
            "contribution": round(logit(base.p_churn), 4),
            "value": round(base.p_churn, 3),
        }
    ]


def test_corrections_that_raise_the_score_follow_largest_first() -> None:
    # Customers who open support tickets churn whatever the BTYD model says; those who do
    # not, stay: the correction learns to raise the score of ticket openers.
    models = Models()
    inputs = dict(zip(MODEL_INPUTS, raw(), strict=True))
    for i in range(600):
        tickets = float(i % 2)
        models.learn_churn({**inputs, "tickets": tickets * 3}, churned=bool(tickets))
    serve_corrections(models)
    reasons = models.churn_reasons(raw(tickets=3.0), top=5)
    assert reasons[0]["feature"] == "btyd_churn_probability"
    corrections = reasons[1:]
    assert corrections and corrections[0]["feature"] == "log_tickets"
    contributions = [float(r["contribution"]) for r in corrections]
    assert all(c > 0 for c in contributions)
    assert contributions == sorted(contributions, reverse=True)
    assert len(models.churn_reasons(raw(tickets=3.0))) <= 3
    # The same customer without tickets: the correction lowers the score, it is no reason.
    assert all(r["feature"] != "log_tickets" for r in models.churn_reasons(raw()))
    assert models.predict(raw(tickets=3.0))[0] > models.predict(raw())[0]
