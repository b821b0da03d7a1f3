"""Progressive validation: every resolved label is scored against the prediction stored with
its snapshot before any model learns from it.

Two views are kept. Cumulative figures for the report (AUC from a 1,000-bin histogram, exact to
the bin; log loss; MAE next to a naive baseline; normalised Gini on a reservoir sample; the
curves of ``curves.py``: ROC, AUC per block of labels over time, gain and lift) and rolling
ones for dashboards and drift (the last ``window`` labels).
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from streamscore.core.curves import AucTimeline, auc_of_bins, gain_curve, lift_by_decile, roc_points

EPS = 1e-7
AUC_BINS = 1000
CALIBRATION_BUCKETS = 10


def log_loss(p: float, y: bool) -> float:
    """Binary cross-entropy of one prediction, clipped away from 0 and 1."""
    p = min(max(p, EPS), 1 - EPS)
    return -math.log(p if y else 1 - p)


def auc_from_bins(pos: list[float], neg: list[float]) -> float | None:
    """ROC AUC from score histograms: P(score of a positive > score of a negative)."""
    return auc_of_bins(pos, neg)


def exact_auc(scores: list[float], labels: list[bool]) -> float | None:
    """ROC AUC by rank sum, ties counted half; for tests and the demo's oracle."""
    pairs = sorted(zip(scores, labels, strict=True))
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        return None
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j + 1) / 2
        rank_sum += avg_rank * sum(1 for k in range(i, j) if pairs[k][1])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def normalised_gini(predicted: list[float], actual: list[float]) -> float | None:
    """Gini of actuals ordered by prediction, divided by the Gini of the perfect order."""

    def gini(order_by: list[float]) -> float:
        rows = sorted(zip(order_by, actual, strict=True), key=lambda r: -r[0])
        total = sum(actual)
        cum = 0.0
        acc = 0.0
        for _, a in rows:
            cum += a
            acc += cum / total
        n = len(rows)
        return acc / n - (n + 1) / (2 * n)

    if len(actual) < 2 or sum(actual) <= 0:
        return None
    best = gini(actual)
    return gini(predicted) / best if best else None


@dataclass(slots=True)
class ChurnQuality:
    """Running churn metrics: cumulative for reports, rolling for dashboards."""

    window: int = 2000
    pos_bins: list[float] = field(default_factory=lambda: [0.0] * AUC_BINS)
    neg_bins: list[float] = field(default_factory=lambda: [0.0] * AUC_BINS)
    loss_sum: float = 0.0
    count: int = 0
    positives: int = 0
    calib_pred: list[float] = field(default_factory=lambda: [0.0] * CALIBRATION_BUCKETS)
    calib_true: list[float] = field(default_factory=lambda: [0.0] * CALIBRATION_BUCKETS)
    calib_n: list[int] = field(default_factory=lambda: [0] * CALIBRATION_BUCKETS)
    calib_w: list[float] = field(default_factory=lambda: [0.0] * CALIBRATION_BUCKETS)
    weight_sum: float = 0.0
    positive_weight: float = 0.0
    recent: deque[tuple[float, bool]] = field(default_factory=deque)
    timeline: AucTimeline = field(default_factory=AucTimeline)

    def update(
        self, p: float, churned: bool, t_ms: int | None = None, weight: float = 1.0
    ) -> float:
        """Record one resolved label; returns its log loss (fed to the drift detector).

        ``t_ms`` (when the prediction was made) places the label on the AUC-over-time curve.
        ``weight`` is the snapshot's sampling weight: the cumulative figures (AUC, log loss,
        base rate, calibration) are those of the population the snapshots were drawn from;
        the rolling window and the timeline count labels as they come.
        """
        b = min(int(p * AUC_BINS), AUC_BINS - 1)
        (self.pos_bins if churned else self.neg_bins)[b] += weight
        loss = log_loss(p, churned)
        self.loss_sum += loss * weight
        self.count += 1
        self.positives += churned
        self.weight_sum += weight
        self.positive_weight += weight if churned else 0.0
        c = min(int(p * CALIBRATION_BUCKETS), CALIBRATION_BUCKETS - 1)
        self.calib_pred[c] += p * weight
        self.calib_true[c] += churned * weight
        self.calib_n[c] += 1
        self.calib_w[c] += weight
        self.recent.append((p, churned))
        if len(self.recent) > self.window:
            self.recent.popleft()
        if t_ms is not None:
            self.timeline.update(p, churned, t_ms)
        return loss

    def auc(self) -> float | None:
        """Cumulative ROC AUC."""
        return auc_from_bins(self.pos_bins, self.neg_bins)

    def calibration_error(self) -> float | None:
        """Expected calibration error over the ten equal-width buckets (weighted)."""
        w = self.weight_sum
        if not w:
            return None
        return (
            sum(abs(self.calib_pred[i] - self.calib_true[i]) for i in range(CALIBRATION_BUCKETS))
            / w
        )

    def rolling_auc(self) -> float | None:
        """Exact ROC AUC over the last ``window`` labels."""
        if not self.recent:
            return None
        scores, labels = zip(*self.recent, strict=True)
        return exact_auc(list(scores), list(labels))

    def rolling_log_loss(self) -> float | None:
        """Mean log loss over the last ``window`` labels."""
        if not self.recent:
            return None
        return sum(log_loss(p, y) for p, y in self.recent) / len(self.recent)

    def report(self) -> dict[str, Any]:
        """Cumulative figures for report.json."""
        w = self.weight_sum
        return {
            "labels": self.count,
            "churned": self.positives,
            "base_rate": self.positive_weight / w if w else None,
            "roc_auc": self.auc(),
            "log_loss": self.loss_sum / w if w else None,
            "calibration_error": self.calibration_error(),
            "calibration": [
                {
                    "bucket": f"{i / CALIBRATION_BUCKETS:.1f}-{(i + 1) / CALIBRATION_BUCKETS:.1f}",
                    "n": n,
                    "mean_predicted": self.calib_pred[i] / self.calib_w[i],
                    "observed_rate": self.calib_true[i] / self.calib_w[i],
                }
                for i, n in enumerate(self.calib_n)
                if n and self.calib_w[i]
            ],
            "roc_curve": roc_points(self.pos_bins, self.neg_bins),
            "auc_over_time": self.timeline.report(),
        }


@dataclass(slots=True)
class ValueQuality:
    """Running value metrics against a naive baseline (past daily spend × horizon)."""

    window: int = 2000
    sample_size: int = 20_000
    abs_err: float = 0.0
    naive_abs_err: float = 0.0
    count: int = 0
    total_actual: float = 0.0
    total_predicted: float = 0.0
    weight_sum: float = 0.0
    sample: list[tuple[float, float]] = field(default_factory=list)
    recent: deque[float] = field(default_factory=deque)
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def update(self, predicted: float, naive: float, actual: float, weight: float = 1.0) -> float:
        """Record one resolved spend label; returns its absolute error.

        The means (MAE, mean actual and predicted) are weighted by the snapshot's sampling
        weight; the Gini comes from an unweighted reservoir sample of the labels.
        """
        err = abs(predicted - actual)
        self.abs_err += err * weight
        self.naive_abs_err += abs(naive - actual) * weight
        self.count += 1
        self.weight_sum += weight
        self.total_actual += actual * weight
        self.total_predicted += predicted * weight
        if len(self.sample) < self.sample_size:
            self.sample.append((predicted, actual))
        else:
            j = self._rng.randrange(self.count)
            if j < self.sample_size:
                self.sample[j] = (predicted, actual)
        self.recent.append(err)
        if len(self.recent) > self.window:
            self.recent.popleft()
        return err

    def rolling_mae(self) -> float | None:
        """Mean absolute error over the last ``window`` labels."""
        return sum(self.recent) / len(self.recent) if self.recent else None

    def report(self) -> dict[str, Any]:
        """Cumulative figures for report.json."""
        n = self.count
        w = self.weight_sum
        gini = None
        if self.sample:
            preds, actuals = zip(*self.sample, strict=True)
            gini = normalised_gini(list(preds), list(actuals))
        return {
            "labels": n,
            "mean_actual": self.total_actual / w if w else None,
            "mean_predicted": self.total_predicted / w if w else None,
            "mae": self.abs_err / w if w else None,
            "naive_mae": self.naive_abs_err / w if w else None,
            "normalised_gini": gini,
            "gain_curve": gain_curve(self.sample),
            "lift_by_decile": lift_by_decile(self.sample),
        }


@dataclass(slots=True)
class Quality:
    """Progressive validation of both models."""

    churn: ChurnQuality = field(default_factory=ChurnQuality)
    value: ValueQuality = field(default_factory=ValueQuality)
