"""The two online models and the reasons behind a churn score (their inputs: ``inputs.py``).

Both are river pipelines, a standard scaler in front of a linear model: about 10 µs per
prediction and learn, stable under drift, and their weights explain a score (the reasons on a
churn alert are the largest weight × scaled-input products). Heavier learners (ARF, AMF) cost
100× more per event and are not defaults (DESIGN.md §7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from river import compose, linear_model, optim, preprocessing

from streamscore.core.inputs import CHURN_INPUTS, FEATURE_SCHEMA, VALUE_INPUTS

MODEL_FAMILY = "scaled-linear"


def model_version(generation: int) -> str:
    """The version every score carries: family, feature schema and checkpoint generation."""
    return f"{MODEL_FAMILY}-{FEATURE_SCHEMA[:6]}-g{generation}"


def _named(names: dict[str, Any], values: list[float]) -> dict[str, float]:
    return dict(zip(names, values, strict=True))


@dataclass(frozen=True, slots=True)
class ModelParams:
    """Learning rates and regularisation; defaults were tuned on the simulator."""

    churn_learning_rate: float = 0.02
    value_learning_rate: float = 0.05
    value_huber_delta: float = 50.0
    l2: float = 1e-4
    warmup_labels: int = 500


class Models:
    """Churn classifier and value regressor, learnt online from resolved snapshots."""

    def __init__(self, params: ModelParams | None = None) -> None:
        p = params or ModelParams()
        self.params = p
        self.churn = compose.Pipeline(
            preprocessing.StandardScaler(),
            linear_model.LogisticRegression(optimizer=optim.SGD(p.churn_learning_rate), l2=p.l2),
        )
        # Spend is zero for half the snapshots and heavy-tailed for the rest: a Huber loss
        # keeps the few large orders from throwing the weights around, and Adam copes with
        # the very different scales of the inputs while the scaler's statistics settle.
        self.value = compose.Pipeline(
            preprocessing.StandardScaler(),
            linear_model.LinearRegression(
                optimizer=optim.Adam(p.value_learning_rate),
                loss=optim.losses.Huber(p.value_huber_delta),
                l2=p.l2,
                intercept_lr=0.1,
            ),
        )
        self.generation = 0
        self.churn_learnt = 0
        self.value_learnt = 0

    @property
    def version(self) -> str:
        """Carried by every score: family, feature schema and checkpoint generation."""
        return model_version(self.generation)

    def predict(self, churn_x: list[float], value_x: list[float]) -> tuple[float, float]:
        """Churn probability and expected spend within the value horizon."""
        if self.churn_learnt < self.params.warmup_labels:
            # Until the model has seen enough labels, the probability-alive heuristic it
            # takes as its first input is a far better guess than an untrained 0.5.
            churn = 1.0 / (1.0 + math.exp(-churn_x[0]))
        else:
            proba = self.churn.predict_proba_one(_named(CHURN_INPUTS, churn_x))
            churn = float(proba.get(True, 0.0))
        value = 0.0
        if self.value_learnt:
            value = max(float(self.value.predict_one(_named(VALUE_INPUTS, value_x))), 0.0)
        return churn, value

    def learn_churn(self, inputs: dict[str, float], churned: bool, weight: float = 1.0) -> None:
        """One SGD step on a resolved churn label (inputs by name; a missing one is skipped)."""
        if weight == 1.0:
            self.churn.learn_one(inputs, churned)
        else:
            self.churn.learn_one(inputs, churned, w=weight)
        self.churn_learnt += 1

    def learn_value(self, inputs: dict[str, float], spend: float, weight: float = 1.0) -> None:
        """One SGD step on a resolved spend label (Huber loss)."""
        if weight == 1.0:
            self.value.learn_one(inputs, spend)
        else:
            self.value.learn_one(inputs, spend, w=weight)
        self.value_learnt += 1

    def churn_reasons(
        self, churn_x: list[float], derived: dict[str, float], top: int = 3
    ) -> list[dict[str, float | str]]:
        """What pushed the churn score up, largest first; never empty.

        Each reason is one term of the score's logit: weight × scaled input, or the model's
        ``intercept`` (its base rate; ``value`` 1). While the model warms up the score is the
        probability-alive heuristic, so its one reason is that input (``p_quiet_logit``, the
        whole logit). The terms add up to the logit, so a score above 0.5 always has a
        positive one; below, the largest term is given.
        """
        if self.churn_learnt < self.params.warmup_labels:
            logit = churn_x[0]
            return [
                {
                    "feature": "p_quiet_logit",
                    "contribution": round(logit, 4),
                    "value": round(logit, 3),
                }
            ]
        scaler = self.churn["StandardScaler"]
        lr = self.churn["LogisticRegression"]
        weights = lr.weights
        scaled = scaler.transform_one(_named(CHURN_INPUTS, churn_x))
        terms = [(float(weights.get(k, 0.0)) * float(v), k, derived[k]) for k, v in scaled.items()]
        terms.append((float(lr.intercept), "intercept", 1.0))
        terms.sort(key=lambda t: t[0], reverse=True)
        chosen = [t for t in terms[:top] if round(t[0], 4) > 0] or terms[:1]
        return [
            {"feature": k, "contribution": round(c, 4), "value": round(value, 3)}
            for c, k, value in chosen
        ]
