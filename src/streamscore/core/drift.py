"""Drift detection on what the models see and how well they do.

Two kinds of signal, because they fail differently:

- **Quality drift.** Page-Hinkley watches the residuals (label minus stored prediction) of
  both models and fires when their mean shifts. The first labels, while the models settle,
  are ignored. Measured on the simulator (3 seeds, with and without a tripled dropout rate
  from day 60): no false alarm without drift, churn bias found 15-24 days after the drift
  (labels arrive 14 days late). ADWIN on the log loss, tried first, missed the drift (the
  loss is too noisy), and Page-Hinkley on raw spend errors raised dozens of false alarms.
- **Population drift.** The population stability index (PSI) of the churn score and of key
  features, between a reference window and the current one. The reference is the window just
  before the current one, so a population that slowly ages does not alarm, while a sudden
  shift does. Only feature PSI counts as a detection: the score distribution also moves
  whenever the model learns (0.32 once on a run without drift), so its PSI is exported as a
  gauge to read next to the features'.

DESIGN.md §7 notes that KSWIN and EDDM raise dozens of false alarms on such streams.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from river.drift import PageHinkley

PSI_FEATURES = ("recency_days", "session_rate", "spend_hl30d", "events_hl7d")
PSI_BINS = 10
PSI_EPS = 1e-4


def psi(reference: Sequence[float], current: Sequence[float], bins: int = PSI_BINS) -> float:
    """Population stability index of ``current`` against ``reference`` (quantile bins).

    Rules of thumb: below 0.1 stable, 0.1-0.25 moderate shift, above 0.25 a real shift.
    """
    if not reference or not current:
        return 0.0
    # Every batch computes this over windows of thousands of values: sorted and counted
    # in numpy, each value in the bin ``bisect_right`` would give it.
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    cuts = np.asarray(sorted({float(ref[int(len(ref) * i / bins)]) for i in range(1, bins)}))
    n_bins = len(cuts) + 1

    def shares(values: NDArray[np.float64]) -> list[float]:
        counts = np.bincount(np.searchsorted(cuts, values, side="right"), minlength=n_bins)
        return [max(int(c) / len(values), PSI_EPS) for c in counts]

    expected, actual = shares(ref), shares(np.asarray(current, dtype=np.float64))
    return sum((a - e) * math.log(a / e) for a, e in zip(actual, expected, strict=True))


@dataclass(frozen=True, slots=True)
class DriftEvent:
    """One detection: what drifted, by how much, and at which event time."""

    kind: str
    signal: str
    value: float
    t_ms: int
    detail: str


@dataclass(slots=True)
class PsiWindow:
    """Consecutive reference and current windows of one signal."""

    size: int
    reference: deque[float] = field(default_factory=deque)
    current: deque[float] = field(default_factory=deque)

    def add(self, value: float) -> None:
        """Slide the windows by one observation."""
        self.current.append(value)
        if len(self.current) > self.size:
            self.reference.append(self.current.popleft())
            if len(self.reference) > self.size:
                self.reference.popleft()

    @property
    def ready(self) -> bool:
        """Both windows full."""
        return len(self.reference) >= self.size

    def value(self) -> float:
        """PSI of current against reference."""
        return psi(self.reference, self.current)


class BiasDetector:
    """Page-Hinkley on a model's residuals (label minus stored prediction).

    A drift that matters shows up as a bias the model did not have; residuals are far less
    noisy than the loss, and Page-Hinkley measures against their running mean, so a model
    with a steady bias (a Huber regressor sits below the mean of heavy-tailed spend) does not
    alarm until the bias moves. ``allowance`` is the shift ignored as noise.
    """

    def __init__(self, allowance: float, threshold: float, clip: float) -> None:
        self.detector = PageHinkley(
            min_instances=30, delta=allowance, threshold=threshold, mode="both"
        )
        self.clip = clip
        self.n = 0
        self.mean = 0.0

    def update(self, residual: float) -> bool:
        """Feed one residual; True when its mean has shifted."""
        r = max(-self.clip, min(self.clip, residual))
        self.n += 1
        self.mean += (r - self.mean) / min(self.n, 2000)
        self.detector.update(r)  # type: ignore[no-untyped-call]
        return bool(self.detector.drift_detected)


class DriftLog:
    """Every detection, in the order they were made, with a count per signal.

    Shared by the two halves below when they run in one process, so the log reads in
    processing order whichever half detected what.
    """

    def __init__(self) -> None:
        self.events: list[DriftEvent] = []
        self.counts: dict[str, int] = {}

    def detect(self, kind: str, signal: str, value: float, t_ms: int, detail: str) -> None:
        """Record one detection."""
        self.events.append(DriftEvent(kind, signal, value, t_ms, detail))
        self.counts[signal] = self.counts.get(signal, 0) + 1


class LabelDrift:
    """Quality drift: Page-Hinkley on both models' residuals, fed by resolved labels.

    Part of the learnt lineage (the trainer feeds it, next to progressive validation).
    """

    def __init__(
        self,
        log: DriftLog | None = None,
        *,
        warmup_labels: int = 2000,
        value_warmup_labels: int = 4000,
    ) -> None:
        self.log = log or DriftLog()
        self.warmup_labels = warmup_labels
        self.value_warmup_labels = value_warmup_labels
        self._churn_bias = BiasDetector(allowance=0.05, threshold=50.0, clip=1.0)
        self._value_bias = BiasDetector(allowance=0.3, threshold=100.0, clip=5.0)
        self._churn_seen = 0
        self._value_seen = 0
        self._value_scale = 0.0
        self.churn_bias = 0.0
        self.value_bias = 0.0

    def churn_label(self, predicted: float, churned: bool, t_ms: int) -> None:
        """A resolved churn label with the prediction stored for it."""
        self._churn_seen += 1
        if self._churn_seen <= self.warmup_labels:
            return
        if self._churn_bias.update(float(churned) - predicted):
            bias = self._churn_bias.mean
            direction = "more" if bias > 0 else "less"
            self.log.detect(
                "quality",
                "churn_bias",
                bias,
                t_ms,
                f"users churn {direction} than the model predicts: the mean of label − "
                f"prediction shifted (now {bias:+.3f}; Page-Hinkley)",
            )
        self.churn_bias = self._churn_bias.mean

    def value_label(self, predicted: float, actual: float, t_ms: int) -> None:
        """A resolved spend label with the prediction stored for it."""
        self._value_seen += 1
        err = abs(actual - predicted)
        self._value_scale = (
            err if self._value_seen == 1 else 0.999 * self._value_scale + 0.001 * err
        )
        if self._value_seen <= self.value_warmup_labels:
            return
        if self._value_bias.update((actual - predicted) / max(self._value_scale, 1e-9)):
            bias = self._value_bias.mean
            self.log.detect(
                "quality",
                "value_bias",
                bias,
                t_ms,
                "spend moved away from the value model's predictions: the mean scaled "
                f"residual shifted (now {bias:+.3f}; Page-Hinkley)",
            )
        self.value_bias = self._value_bias.mean


class PopulationDrift:
    """Population drift: PSI of the published churn score and of key features.

    Fed by every published score (the scorer's side). It starts once the churn model has
    learnt ``warmup_labels`` labels: before, the score distribution moves with every label.
    """

    def __init__(
        self,
        log: DriftLog | None = None,
        *,
        warmup_labels: int = 2000,
        psi_window: int = 5000,
        psi_every: int = 1000,
        psi_threshold: float = 0.25,
    ) -> None:
        self.log = log or DriftLog()
        self.warmup_labels = warmup_labels
        self.psi_every = psi_every
        self.psi_threshold = psi_threshold
        self._scores_seen = 0
        self._windows = {name: PsiWindow(psi_window) for name in ("churn_score", *PSI_FEATURES)}
        self.psi: dict[str, float] = {}
        self.psi_alarm: dict[str, bool] = {}

    def observe_score(
        self, churn_p: float, derived: dict[str, float], t_ms: int, labels_learnt: int
    ) -> None:
        """A published score and the features behind it; ``labels_learnt`` by the churn model."""
        if labels_learnt <= self.warmup_labels:
            return
        self._windows["churn_score"].add(churn_p)
        for name in PSI_FEATURES:
            self._windows[name].add(math.log1p(max(derived[name], 0.0)))
        self._scores_seen += 1
        if self._scores_seen % self.psi_every:
            return
        for name, window in self._windows.items():
            if not window.ready:
                continue
            value = window.value()
            self.psi[name] = value
            alarm = value > self.psi_threshold
            # The score distribution also moves when the model learns, so its PSI is a gauge
            # to read next to the features', not a detection on its own.
            if alarm and name != "churn_score" and not self.psi_alarm.get(name, False):
                self.log.detect(
                    "population",
                    f"psi_{name}",
                    value,
                    t_ms,
                    f"PSI of {name} is {value:.2f} (> {self.psi_threshold}) between the last two "
                    f"windows of {window.size} scores",
                )
            self.psi_alarm[name] = alarm
