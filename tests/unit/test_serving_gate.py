"""The serving gate: the corrections are served only while their stored predictions beat the
BTYD model's on the labels resolved since, and both predictions travel with every snapshot."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import pytest

from streamscore.core.gate import ServingGate
from streamscore.core.inputs import MODEL_INPUTS
from streamscore.core.models import Models
from streamscore.core.snapshots import Snapshot
from streamscore.core.trainer import Trainer
from streamscore.core.training_records import decode, label_record
from streamscore.core.values import LabelKind, TrainingExample
from tests.unit.test_trainer import INPUTS, churn_example


def serve_corrections(models: Models) -> None:
    """Give the corrections a winning record, as the trainer would after they beat the BTYD
    model on resolved labels (for tests of what served corrections do)."""
    for i in range(100):
        churned = i % 2 == 0
        models.gate.churn_label(0.8 if churned else 0.2, 0.5, churned, 1.0)
        models.gate.value_label(10.0 * churned, 5.0, 10.0 * churned, 1.0)
    assert models.gate.serve_churn_corrections and models.gate.serve_value_corrections


def test_without_a_record_the_btyd_model_is_served() -> None:
    gate = ServingGate()
    assert not gate.serve_churn_corrections
    assert not gate.serve_value_corrections
    # Corrections that have not moved yet predict what the BTYD model does: a tie, no record.
    for _ in range(50):
        gate.churn_label(0.3, 0.3, True, 1.0)
    assert not gate.serve_churn_corrections


def test_corrections_are_served_while_they_win_and_withdrawn_when_they_lose() -> None:
    gate = ServingGate(window=100)
    for i in range(100):  # the corrected prediction is the sharper one
        churned = i % 2 == 0
        gate.churn_label(0.8 if churned else 0.2, 0.5, churned, 1.0)
    assert gate.serve_churn_corrections
    for i in range(60):  # the population moved: the corrections now point the wrong way
        churned = i % 2 == 0
        gate.churn_label(0.2 if churned else 0.8, 0.5, churned, 1.0)
    assert not gate.serve_churn_corrections, "more than half the window now says BTYD is better"


def test_the_race_is_weighted_by_the_sampling_weight() -> None:
    gate = ServingGate()
    gate.churn_label(0.9, 0.5, True, 1.0)  # the corrections win one active user's label...
    gate.churn_label(0.9, 0.5, False, 20.0)  # ...and lose a dormant one standing for twenty
    assert not gate.serve_churn_corrections
    gate.value_label(30.0, 10.0, 31.0, 1.0)
    assert gate.serve_value_corrections
    gate.value_label(30.0, 10.0, 0.0, 5.0)
    assert not gate.serve_value_corrections


def test_labels_without_both_predictions_do_not_count() -> None:
    gate = ServingGate()
    gate.churn_label(math.nan, 0.5, True, 1.0)
    gate.churn_label(0.9, math.nan, True, 1.0)
    gate.value_label(10.0, 5.0, math.nan, 1.0)
    assert gate.describe()["labels_compared"] == {"churn": 0, "value": 0}


def test_the_models_serve_what_the_gate_chose() -> None:
    models = Models()
    # Give the corrections something to say, so that the two predictions differ.
    for _ in range(200):
        models.learn_churn(INPUTS, True)
    raw = [INPUTS[k] for k in MODEL_INPUTS]
    p = models.predict_all(raw)
    assert p.corrected_churn != pytest.approx(p.base.p_churn)
    assert (p.churn, p.value) == (p.base.p_churn, p.base.value)
    assert models.predict(raw) == (p.base.p_churn, p.base.value)
    for i in range(100):
        churned = i % 3 != 0
        models.gate.churn_label(0.9 if churned else 0.1, 0.5, churned, 1.0)
    p = models.predict_all(raw)
    assert p.churn == p.corrected_churn
    assert p.value == p.base.value, "value keeps its own race"


def test_the_trainer_races_the_predictions_stored_with_the_snapshot() -> None:
    trainer = Trainer()
    for i in range(40):
        churned = i % 2 == 0
        trainer.learn(
            churn_example(churned, predicted=0.5, btyd=0.5, corrected=0.7 if churned else 0.3)
        )
    assert trainer.models.gate.serve_churn_corrections
    assert trainer.summary()["serving"] == {"churn": "corrected", "value": "btyd"}
    # The served prediction is what progressive validation scores.
    assert trainer.quality.churn.loss_sum == pytest.approx(40 * -math.log(0.5))


def test_models_pickled_before_the_gate_serve_the_btyd_model() -> None:
    models = Models()
    state = models.__dict__.copy()
    del state["gate"]
    old = Models.__new__(Models)
    old.__setstate__(state)
    assert not old.gate.serve_churn_corrections
    assert pickle.loads(pickle.dumps(old)).gate.describe() == ServingGate().describe()


def test_a_snapshot_keeps_both_predictions_and_which_was_served() -> None:
    snap = Snapshot(
        5, [1.0, 2.0], [], 0.75, 40.0, 12.0,
        baseline_churn=0.375, baseline_value=30.0, churn_served_btyd=True,
    )  # fmt: skip
    (back,) = Snapshot.unpack_all(snap.pack(), 0, 2, 2)  # float32 fields: exact values
    assert back == snap
    assert (back.served_churn, back.churn_p) == (0.375, 0.75)
    assert back.served_value == pytest.approx(40.0), "value served its corrected prediction"
    assert not back.value_served_btyd


def test_a_training_record_carries_the_corrected_prediction() -> None:
    ex = TrainingExample(
        kind=LabelKind.CHURN, inputs=dict(INPUTS), label=1.0, predicted=0.4, baseline=None,
        snapshot_ms=0, label_ms=1, btyd=0.4, corrected=0.65, id="l1",
    )  # fmt: skip
    record = label_record(ex)
    _, back = decode(record)
    assert isinstance(back, TrainingExample)
    assert back.corrected == pytest.approx(0.65)
    del record["corrected"]  # a record from a scorer before the gate
    _, older = decode(record)
    assert isinstance(older, TrainingExample)
    assert math.isnan(older.corrected)


def test_the_demo_summary_says_which_model_scores_carry(tmp_path: Path, capsys: Any) -> None:
    from streamscore.config import Settings
    from streamscore.embedded import demo
    from streamscore.simulator import SimulationConfig
    from streamscore.summary import print_demo

    result = demo(
        Settings(), SimulationConfig(users=120, days=30, seed=3), tmp_path, show_progress=False
    )
    print_demo(result, tmp_path)
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "scores now carry" in x]
    serving = result.report["serving_gate"]["serving"]
    names = {"corrected": "the corrected model", "btyd": "the BTYD model"}
    assert f"{names[serving['churn']]} for churn, {names[serving['value']]} for value" in line
