"""A learnt correction on top of a baseline model: a GLM with an offset.

The churn and value models start from a buy-till-you-die prediction and learn only how far
the data says it is off: the linear predictor is ``offset + intercept + w · z``, where the
offset is the baseline on the link scale (logit of its churn probability, log of its
expected transaction count) and ``z`` are standardised inputs. With no labels the weights
are zero and the prediction *is* the baseline; L2 pulls back towards it, not towards zero.

river provides the loss and its gradient (``optim.losses``) and the optimiser (AdaGrad:
per-coordinate steps that shrink as evidence accumulates, so the weights settle instead of
drifting); inputs are standardised with weighted running moments.
Learning is one gradient step per labelled example, weighted by its sampling weight.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import NamedTuple

from river import optim

MAX_LINK = 30.0
# Safety bounds on what the correction may do. A standardised input beyond a few standard
# deviations is most often one the moments have not seen enough of yet (early in a stream),
# and a correction of e^4 (55x) on the baseline is already more than data this sparse can
# support: both are clipped rather than trusted.
MAX_Z = 4.0
MAX_CORRECTION = 4.0


class _Moments:
    """Weighted running mean and standard deviation of one input (West's update)."""

    __slots__ = ("m2", "mean", "sd", "w")

    def __init__(self) -> None:
        self.w = 0.0
        self.mean = 0.0
        self.m2 = 0.0
        self.sd = 0.0

    def update(self, value: float, weight: float) -> None:
        self.w += weight
        delta = value - self.mean
        self.mean += delta * weight / self.w
        self.m2 += weight * delta * (value - self.mean)
        self.sd = math.sqrt(self.m2 / self.w) if self.w > 0 and self.m2 > 0 else 0.0

    def scale(self, value: float) -> float:
        if self.sd <= 1e-9:
            return 0.0
        z = (value - self.mean) / self.sd
        return MAX_Z if z > MAX_Z else -MAX_Z if z < -MAX_Z else z


class _Plan(NamedTuple):
    names: tuple[str, ...]
    learnt: int
    entries: list[tuple[float, float, float]]


class OffsetGLM:
    """``link(E[y]) = offset + intercept + w · standardise(x)``, learnt online."""

    def __init__(
        self,
        loss: optim.losses.Loss,
        *,
        learning_rate: float = 0.05,
        l2: float = 1e-3,
        clip: float = 5.0,
    ) -> None:
        self.loss = loss
        self.optimizer = optim.AdaGrad(lr=learning_rate)
        self.intercept_optimizer = optim.AdaGrad(lr=learning_rate)
        self.l2 = l2
        self.clip = clip
        self.weights: dict[Hashable, float] = {}
        self.intercept: dict[Hashable, float] = {"intercept": 0.0}
        self.moments: dict[str, _Moments] = {}
        self.learnt = 0
        self._plan: _Plan | None = None

    def __getstate__(self) -> dict[str, object]:
        """Checkpoints hold the weights and moments, not the plan derived from them."""
        state = self.__dict__.copy()
        state.pop("_plan", None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._plan = None

    def _standardised(self, x: Mapping[str, float]) -> dict[str, float]:
        out = {}
        for k, v in x.items():
            m = self.moments.get(k)
            out[k] = m.scale(v) if m is not None else 0.0
        return out

    def link(self, names: tuple[str, ...], values: Sequence[float], offset: float) -> float:
        """The linear predictor for the inputs ``dict(zip(names, values))`` on top of
        ``offset``: ``_standardised`` then ``_predictor``, as learning computes it, in one
        loop without building the standardised inputs (the same operations in the same
        order, so the same value).

        Every score computes this. Between two learning steps the weights and moments are
        constants, so each input's mean, deviation and weight are looked up once per step
        (a plan for this order of names) instead of twice per input per score.
        """
        plan = self._plan
        if plan is None or plan.names is not names or plan.learnt != self.learnt:
            plan = self._plan = _Plan(names, self.learnt, self._entries(names))
        c = self.intercept["intercept"]
        for v, (mean, sd, w) in zip(values, plan.entries, strict=True):
            if sd:
                z = (v - mean) / sd
                z = MAX_Z if z > MAX_Z else -MAX_Z if z < -MAX_Z else z
            else:
                z = 0.0
            c += w * z
        return self._bounded(c, offset)

    def _entries(self, names: tuple[str, ...]) -> list[tuple[float, float, float]]:
        """Per input: mean, deviation (0.0 where ``_Moments.scale`` gives 0) and weight."""
        out = []
        for k in names:
            m = self.moments.get(k)
            if m is None or m.sd <= 1e-9:
                mean, sd = 0.0, 0.0
            else:
                mean, sd = m.mean, m.sd
            out.append((mean, sd, self.weights.get(k, 0.0)))
        return out

    def _predictor(self, z: Mapping[str, float], offset: float) -> float:
        weights = self.weights.get
        c = self.intercept["intercept"]
        for k, v in z.items():
            c += weights(k, 0.0) * v
        return self._bounded(c, offset)

    @staticmethod
    def _bounded(c: float, offset: float) -> float:
        c = min(max(c, -MAX_CORRECTION), MAX_CORRECTION)
        return min(max(offset + c, -MAX_LINK), MAX_LINK)

    def correction(self, x: Mapping[str, float]) -> dict[str, float]:
        """Each input's share of the learnt correction (weight × standardised value)."""
        z = self._standardised(x)
        return {k: self.weights.get(k, 0.0) * v for k, v in z.items()}

    def learn(self, x: Mapping[str, float], offset: float, y: float, weight: float = 1.0) -> None:
        """One weighted gradient step on a labelled example."""
        for k, v in x.items():
            m = self.moments.get(k)
            if m is None:
                m = self.moments[k] = _Moments()
            m.update(v, weight)
        z = self._standardised(x)
        eta = self._predictor(z, offset)
        g = self.loss.gradient(y, eta) * weight
        g = min(max(g, -self.clip), self.clip)
        grad: dict[Hashable, float] = {
            k: g * v + self.l2 * self.weights.get(k, 0.0) for k, v in z.items()
        }
        for name in grad:
            self.weights.setdefault(name, 0.0)
        self.optimizer.step(w=self.weights, g=grad)
        self.intercept_optimizer.step(w=self.intercept, g={"intercept": g})
        self.learnt += 1


def logit(p: float) -> float:
    """log(p / (1 - p)), clipped away from 0 and 1."""
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def sigmoid(z: float) -> float:
    """The inverse of ``logit``."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
