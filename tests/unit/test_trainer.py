"""The trainer: every training example is scored against its stored prediction, then learnt."""

from __future__ import annotations

import dataclasses
import math

import pytest

from streamscore.core.inputs import MODEL_INPUTS
from streamscore.core.trainer import Trainer
from streamscore.core.validation import log_loss
from streamscore.core.values import LabelKind, PopulationSample, TrainingExample

DAY = 86_400_000


# A customer with two repeat orders, the latest 10 days ago, 40 days after the first.
INPUTS = {**dict.fromkeys(MODEL_INPUTS, 0.0), "x": 2.0, "t_x": 30.0, "T": 40.0, "px": 2.0}
INPUTS |= {"pt_x": 30.0, "orders": 3.0, "mean_order": 25.0, "gap_cv": 0.4, "spend_30d": 10.0}


def churn_example(churned: bool, predicted: float = 0.3, **kw: object) -> TrainingExample:
    inputs = dict(INPUTS)
    return TrainingExample(
        kind=LabelKind.CHURN,
        inputs=kw.pop("inputs", inputs),  # type: ignore[arg-type]
        label=1.0 if churned else 0.0,
        predicted=predicted,
        baseline=None,
        snapshot_ms=0,
        label_ms=14 * DAY,
        **kw,  # type: ignore[arg-type]
    )


def value_example(spend: float, predicted: float, baseline: float) -> TrainingExample:
    return TrainingExample(
        kind=LabelKind.VALUE,
        inputs=dict(INPUTS),
        label=spend,
        orders=2.0,
        predicted=predicted,
        baseline=baseline,
        snapshot_ms=0,
        label_ms=30 * DAY,
    )


def test_a_churn_example_is_validated_with_its_stored_prediction_before_it_is_learnt() -> None:
    trainer = Trainer()
    seen: list[int] = []
    learn = trainer.models.learn_churn

    def spy(inputs: dict[str, float], churned: bool, weight: float = 1.0) -> bool:
        seen.append(trainer.quality.churn.count)
        return learn(inputs, churned, weight)

    trainer.models.learn_churn = spy  # type: ignore[method-assign]
    trainer.learn(churn_example(True, predicted=0.3))
    assert seen == [1], "the quality metrics saw the label before the model learnt it"
    assert trainer.quality.churn.loss_sum == pytest.approx(log_loss(0.3, True))
    assert trainer.quality.churn.positives == 1
    assert trainer.models.churn_learnt == 1


def test_a_value_example_is_validated_against_the_prediction_and_the_baseline() -> None:
    trainer = Trainer()
    trainer.learn(value_example(spend=40.0, predicted=25.0, baseline=10.0))
    v = trainer.quality.value
    assert (v.count, v.abs_err, v.naive_abs_err, v.total_actual) == (1, 15.0, 30.0, 40.0)
    assert v.total_predicted == 25.0
    assert trainer.models.value_learnt == 1
    assert trainer.models.churn_learnt == 0


def test_an_example_missing_an_optional_input_is_learnt_without_it() -> None:
    # A snapshot upgraded from an older input set may lack inputs the models now take.
    trainer = Trainer()
    for i in range(6):
        inputs = {k: v * (1 + i % 3) for k, v in INPUTS.items() if k != "carts"}
        trainer.learn(churn_example(i % 2 == 0, inputs=inputs))
    assert trainer.models.churn_learnt == 6 and trainer.unlearnt == 0
    weights = trainer.models.churn.weights
    assert weights.get("log_carts", 0.0) == 0.0
    assert weights["log_recency"] != 0.0


def test_an_example_without_the_btyd_summary_is_validated_but_not_learnt() -> None:
    trainer = Trainer()
    trainer.learn(churn_example(True, inputs={"refund_rate": 0.0}))
    assert trainer.quality.churn.count == 1
    assert trainer.models.churn_learnt == 0 and trainer.unlearnt == 1


def test_the_weight_of_an_example_scales_its_step() -> None:
    def after(weight: float | None) -> float:
        trainer = Trainer()
        example = churn_example(True) if weight is None else churn_example(True, weight=weight)
        for _ in range(3):
            trainer.learn(example)
        return float(trainer.models.churn.intercept["intercept"])

    assert after(None) == after(1.0)
    # AdaGrad normalises the step by the gradients seen, so a heavier example moves the
    # intercept further only through the clipped, weighted gradient: never less far.
    assert after(3.0) >= after(1.0) > 0.0
    trainer = Trainer()
    trainer.learn(churn_example(True, weight=3.0))
    assert trainer.quality.churn.weight_sum == 3.0


def test_the_btyd_prediction_stored_with_a_snapshot_is_validated_beside_the_model() -> None:
    trainer = Trainer()
    trainer.learn(churn_example(True, predicted=0.3, btyd=0.6))
    trainer.learn(churn_example(False, predicted=0.3))  # an upgraded snapshot: no BTYD view
    assert trainer.quality.churn.count == 2
    assert trainer.btyd_quality.churn.count == 1
    assert trainer.btyd_quality.churn.loss_sum == pytest.approx(log_loss(0.6, True))


def test_population_samples_feed_the_rfm_quantiles_of_buyers() -> None:
    trainer = Trainer()
    trainer.observe(PopulationSample(days_since_purchase=3.0, purchases=0.0, spend=0.0))
    assert trainer.rfm.recency.total == 0  # never bought: not in the RFM population
    for days in (1.0, 5.0, 20.0, 60.0, 200.0):
        trainer.observe(PopulationSample(days, 2.0, 50.0))
    assert trainer.rfm.recency.total == 5
    assert trainer.rfm.scores(0.5, 2.0, 50.0)[0] == 5  # more recent than all: best R


def test_a_training_example_carries_no_user_id() -> None:
    # DESIGN.md §3: the training-examples topic carries no user id.
    names = {f.name for f in dataclasses.fields(TrainingExample)}
    assert not any("user" in name for name in names)
    assert math.isclose(churn_example(False).label, 0.0)
