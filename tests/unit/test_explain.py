"""Explanations add up: the terms of each score sum to the value it was computed from, on
trained models, with the safety bound as a term when it cuts; alerts always carry them,
scores only with explain_scores."""

from __future__ import annotations

import math
import random

from streamscore.core.explain import OFFSET_CHURN, OFFSET_VALUE, explain
from streamscore.core.glm import MAX_CORRECTION, sigmoid
from streamscore.core.inputs import MODEL_INPUTS
from streamscore.core.models import Models
from streamscore.core.records import ChurnAlert, Explanation, UserScore
from tests.unit.test_serving_gate import serve_corrections

BASE = {**dict.fromkeys(MODEL_INPUTS, 0.0), "x": 2.0, "t_x": 20.0, "T": 60.0, "px": 2.0}
BASE |= {"pt_x": 20.0, "orders": 3.0, "mean_order": 30.0}


def raw(**changes: float) -> list[float]:
    values = {**BASE, **changes}
    return [values[name] for name in MODEL_INPUTS]


def _trained(seed: int = 3) -> Models:
    """Corrections that learnt from tickets, carts and spend (every weight non-zero)."""
    rng = random.Random(seed)
    models = Models()
    for _ in range(800):
        tickets, carts, spend = rng.randint(0, 3), rng.randint(0, 5), rng.uniform(0, 200)
        inputs = dict(zip(MODEL_INPUTS, raw(tickets=tickets, carts=carts, spend_30d=spend),
                          strict=True))  # fmt: skip
        models.learn_churn(inputs, churned=rng.random() < 0.2 + 0.2 * tickets)
        models.learn_value(inputs, orders=float(rng.randint(0, 2) + carts // 2))
    serve_corrections(models)
    return models


def _sum(terms: list[dict[str, object]]) -> float:
    return sum(float(str(t["contribution"])) for t in terms)


def test_terms_sum_to_the_scores_the_models_predict() -> None:
    models = _trained()
    rng = random.Random(7)
    for _ in range(50):
        x = raw(tickets=rng.randint(0, 3), carts=rng.randint(0, 5), spend_30d=rng.uniform(0, 200),
                T=rng.uniform(30, 300), t_x=rng.uniform(0, 30))  # fmt: skip
        churn, value = models.predict(x)
        why = Explanation.model_validate(explain(models, x))
        terms = [t.model_dump() for t in why.churn.terms]
        assert terms[0]["feature"] == OFFSET_CHURN and terms[1]["feature"] == "intercept"
        assert len(terms) > 3  # the inputs' terms are there, not only offset and intercept
        assert abs(_sum(terms) - why.churn.logit) < 5e-4 * len(terms)
        assert abs(sigmoid(why.churn.logit) - churn) < 1e-4
        vterms = [t.model_dump() for t in why.value.terms]
        assert vterms[0]["feature"] == OFFSET_VALUE
        assert abs(_sum(vterms) - why.value.log_orders) < 5e-4 * len(vterms)
        assert math.isclose(math.exp(why.value.log_orders) * why.value.order_value, value,
                            rel_tol=1e-3)  # fmt: skip


def test_inputs_are_listed_largest_first() -> None:
    why = explain(_trained(), raw(tickets=3.0, carts=5.0))
    inputs = [abs(t["contribution"]) for t in why["churn"]["terms"][2:] if t["feature"] != "bound"]
    assert inputs == sorted(inputs, reverse=True)


def test_a_correction_cut_at_its_bound_shows_the_cut() -> None:
    models = _trained()
    models.churn.intercept["intercept"] = 50.0  # far beyond the safety bound
    x = raw(tickets=2.0)
    why = explain(models, x)
    terms = why["churn"]["terms"]
    assert terms[-1]["feature"] == "bound"
    assert abs(_sum(terms) - why["churn"]["logit"]) < 5e-4 * len(terms)
    assert abs(sigmoid(why["churn"]["logit"]) - models.predict(x)[0]) < 1e-4
    correction = why["churn"]["logit"] - terms[0]["contribution"]
    assert abs(correction - MAX_CORRECTION) < 1e-3


def test_records_carry_explanations_that_validate() -> None:
    from streamscore.core.alerts import AlertPolicy
    from streamscore.core.events import Event
    from streamscore.core.state import UserState
    from streamscore.core.values import ScoringConfig
    from streamscore.wiring import in_process_scorer

    t0 = 1_767_225_600_000
    for explain_scores in (False, True):
        # An alert at the first score: any churn probability raises it.
        cfg = ScoringConfig(
            alerts=AlertPolicy(raise_at=0.0, clear_at=0.0, critical_at=1.0, min_purchases=0),
            explain_scores=explain_scores,
        )
        scorer, _ = in_process_scorer(cfg)
        state = UserState("u1")
        event = Event.model_validate(
            {"event_id": "e1", "user_id": "u1", "type": "purchase", "ts": t0, "amount": 10.0}
        )
        out = scorer.apply_events(state, [(0, 0, event)], t0)
        score = next(o.value for o in out if o.topic == "user-scores")
        alert = next(o.value for o in out if o.topic == "churn-alerts")
        assert score is not None and alert is not None
        assert ("explanation" in score) is explain_scores
        UserScore.model_validate(score)
        checked = ChurnAlert.model_validate(alert)
        assert checked.explanation is not None
        assert abs(sigmoid(checked.explanation.churn.logit) - checked.churn_probability) < 1e-3


def test_the_report_of_a_known_user_reads_and_adds_up() -> None:
    from streamscore.core.events import Event
    from streamscore.core.state import UserState
    from streamscore.core.timeutil import DAY_MS
    from streamscore.core.values import ScoringConfig
    from streamscore.explain_report import build, text
    from streamscore.wiring import in_process_scorer

    t0 = 1_767_225_600_000
    scorer, _ = in_process_scorer(ScoringConfig())
    state = UserState("known")
    events = [
        Event.model_validate(
            {
                "event_id": f"e{i}",
                "user_id": "known",
                "type": kind,
                "ts": t0 + i * 5 * DAY_MS,
                **extra,
            }
        )
        for i, (kind, extra) in enumerate(
            [("session_start", {}), ("purchase", {"amount": 30.0}), ("support_ticket", {})]
        )
    ]
    scorer.apply_events(state, [(0, i, e) for i, e in enumerate(events)], t0)
    watermark = t0 + 20 * DAY_MS
    rep = build(scorer, state, watermark, restored=False)
    assert rep["as_of"] == "2026-01-21T00:00:00.000Z"
    assert rep["features"]["purchases"] == 1 and rep["features"]["tickets"] == 1
    assert len(rep["pending_snapshots"]) == len(state.snapshots) > 0
    churn = scorer.evaluate(state, watermark).churn
    assert abs(rep["churn_probability"] - churn) < 1e-6
    assert abs(sigmoid(rep["explanation"]["churn"]["logit"]) - churn) < 1e-4
    words = text(rep)
    assert "user known, as of 2026-01-21T00:00:00.000Z" in words
    assert "population model:" in words and "chance of no activity" in words
    assert f"training snapshots waiting for their label: {len(state.snapshots)}" in words
