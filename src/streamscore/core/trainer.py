"""The learnt lineage and the one place it learns: models, RFM quantiles, quality, drift.

Every resolved label arrives here as a ``TrainingExample`` and is, in this order, scored
against the prediction stored with its snapshot (progressive validation, the label-drift
detectors, the serving gate's race of corrected against BTYD predictions) and learnt
(DESIGN.md §4). The trainer needs no user id and no user state, so it
runs wherever the ``training-examples`` topic is read (``streamscore/training.py``).
"""

from __future__ import annotations

import math

from streamscore.core.drift import LabelDrift
from streamscore.core.models import Models
from streamscore.core.segments import RfmScorer
from streamscore.core.validation import Quality
from streamscore.core.values import (
    CustomerObservation,
    LabelKind,
    Output,
    PopulationSample,
    TrainingExample,
)


class Trainer:
    """Owns the models, the RFM quantiles, progressive validation and label drift.

    A ``Learner`` (what the scorer hands labels to) and a ``Lineage`` (what it predicts with).
    """

    def __init__(
        self,
        models: Models | None = None,
        rfm: RfmScorer | None = None,
        quality: Quality | None = None,
        drift: LabelDrift | None = None,
    ) -> None:
        self.models = models or Models()
        self.rfm = rfm or RfmScorer()
        self.quality = quality or Quality()
        # The fitted BTYD model alone, validated on the same labels: the baseline the learnt
        # corrections have to beat (the demo and report.json show both).
        self.btyd_quality = Quality()
        self.drift = drift or LabelDrift()
        self.unlearnt = 0  # examples validated but not learnt (made for older inputs)
        # The event time of the newest label learnt (its snapshot's plus the horizon): how far
        # the lineage has learnt in event time, which scorers compare with their watermarks.
        self.labels_until_ms = 0

    def learn(self, example: TrainingExample) -> None:
        """Validate ``example`` against the prediction stored with it, then learn it."""
        w = example.weight
        btyd = example.btyd
        if example.kind is LabelKind.CHURN:
            churned = example.churned
            self.quality.churn.update(example.predicted, churned, example.snapshot_ms, w)
            if not math.isnan(btyd):
                self.btyd_quality.churn.update(btyd, churned, example.snapshot_ms, w)
            self.drift.churn_label(example.predicted, churned, example.label_ms)
            self.models.gate.churn_label(example.corrected, btyd, churned, w)
            learnt = self.models.learn_churn(example.inputs, churned, w)
        else:
            spend = example.label
            baseline = 0.0 if example.baseline is None else example.baseline
            self.quality.value.update(example.predicted, baseline, spend, w)
            if not math.isnan(btyd):
                self.btyd_quality.value.update(btyd, baseline, spend, w)
            self.drift.value_label(example.predicted, spend, example.label_ms)
            self.models.gate.value_label(example.corrected, btyd, spend, w)
            learnt = self.models.learn_value(example.inputs, example.orders, w)
        if not learnt:
            self.unlearnt += 1
        self.labels_until_ms = max(self.labels_until_ms, example.label_ms)

    def observe(self, sample: PopulationSample) -> None:
        """Add a customer at a snapshot to the RFM population."""
        self.rfm.observe(sample.days_since_purchase, sample.purchases, sample.spend)

    def wants(self, key_hash: int) -> bool:
        """Whether the population model's sample takes this customer."""
        return self.models.wants(key_hash)

    def observe_customer(self, observation: CustomerObservation) -> None:
        """A sampled customer's summary after an event, for the population fit."""
        o = observation
        self.models.observe(o.key_hash, o.inputs, o.t_ms, o.partition)

    def take(self) -> list[Output]:
        """Nothing to publish: this learner learns at each call."""
        return []

    def delivered(self) -> None:
        return None

    def summary(self) -> dict[str, object]:
        """What a published version tells the scorers of the lineage's quality (the figures
        their metrics show), in JSON types."""
        churn, value = self.quality.churn, self.quality.value
        return {
            "labels_learnt": {"churn": self.models.churn_learnt, "value": self.models.value_learnt},
            "labels_validated": {"churn": churn.count, "value": value.count},
            "labels_not_learnt": self.unlearnt,
            "labels_until_ms": self.labels_until_ms or None,
            "churn_auc": churn.auc(),
            "churn_rolling_auc": churn.rolling_auc(),
            "churn_rolling_log_loss": churn.rolling_log_loss(),
            "value_rolling_mae": value.rolling_mae(),
            "calibration": [
                {k: row[k] for k in ("bucket", "observed_rate", "mean_predicted")}
                for row in churn.report()["calibration"]
            ],
            "bias": {"churn": self.drift.churn_bias, "value": self.drift.value_bias},
            **self.models.gate.describe(),
        }
