"""Drift detection: PSI by hand, Page-Hinkley on residuals, both monitors, the simulator's drift.

The two ``slow`` tests run the whole demo (2,000 users, 120 days, ~20 s each). Measured before
on seeds 7, 8 and 9: without drift no detection at all; with ``drift_day=60`` (every user's
dropout hazard tripled) a ``churn_bias`` detection 15-24 days later (churn labels arrive 14
days after their snapshot). One seed each way keeps the suite short.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from streamscore.config import load_settings
from streamscore.core.drift import (
    PSI_EPS,
    PSI_FEATURES,
    BiasDetector,
    DriftLog,
    LabelDrift,
    PopulationDrift,
    PsiWindow,
    psi,
)
from streamscore.embedded import demo
from streamscore.simulator import SimulationConfig

DAY_MS = 86_400_000

# -- psi ----------------------------------------------------------------------------------


def test_psi_of_identical_distributions_is_zero() -> None:
    values = [float(i) for i in range(100)]
    assert psi(values, values) == 0.0
    assert psi(values, list(reversed(values))) == 0.0  # order does not matter


def test_psi_hand_computed_two_bins() -> None:
    # Reference [0, 1, 2, 3] cut at its median 2: shares 1/2, 1/2. Current [0, 0, 0, 3]:
    # 3/4, 1/4. PSI = (3/4 − 1/2)·ln(3/2) + (1/4 − 1/2)·ln(1/2) = 1/4·ln 3.
    assert psi([0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 3.0], bins=2) == pytest.approx(
        0.25 * math.log(3)
    )


def test_psi_hand_computed_empty_bins_use_epsilon() -> None:
    # Ten deciles of 0..99, every current value in the top one: nine bins at PSI_EPS.
    reference = [float(i) for i in range(100)]
    expected = 9 * (PSI_EPS - 0.1) * math.log(PSI_EPS / 0.1) + (1 - 0.1) * math.log(1 / 0.1)
    assert psi(reference, [95.0] * 50) == pytest.approx(expected)
    assert expected > 8  # a total shift is far beyond the 0.25 rule of thumb


def test_psi_grows_with_the_shift() -> None:
    rng = random.Random(1)
    reference = [rng.gauss(0, 1) for _ in range(5000)]
    same = psi(reference, [rng.gauss(0, 1) for _ in range(5000)])
    small = psi(reference, [rng.gauss(0.3, 1) for _ in range(5000)])
    large = psi(reference, [rng.gauss(1.0, 1) for _ in range(5000)])
    assert same < 0.02  # sampling noise only: about (bins − 1)·(1/n + 1/m)
    assert 0.05 < small < 0.25  # PSI ≈ shift² for a normal mean shift in sd units
    assert large > 0.7
    assert same < small < large


def test_psi_of_nothing_is_zero() -> None:
    assert psi([], [1.0]) == 0.0
    assert psi([1.0], []) == 0.0


def test_psi_window_slides() -> None:
    w = PsiWindow(size=3)
    for v in range(5):
        w.add(float(v))
    assert not w.ready
    assert list(w.current) == [2.0, 3.0, 4.0]
    assert list(w.reference) == [0.0, 1.0]
    for v in range(5, 8):
        w.add(float(v))
    assert w.ready
    assert list(w.reference) == [2.0, 3.0, 4.0]
    assert list(w.current) == [5.0, 6.0, 7.0]
    assert w.value() == psi([2.0, 3.0, 4.0], [5.0, 6.0, 7.0]) > 0.25  # disjoint windows


# -- BiasDetector (Page-Hinkley on residuals) ----------------------------------------------


def _churn_detector() -> BiasDetector:
    return BiasDetector(allowance=0.05, threshold=50.0, clip=1.0)  # as in LabelDrift


def test_bias_detector_quiet_on_stationary_noise() -> None:
    rng = random.Random(3)
    detector = _churn_detector()
    # A calibrated model: users churn at 20 %, the model says 0.2.
    fired = [detector.update(float(rng.random() < 0.2) - 0.2) for _ in range(20_000)]
    assert not any(fired)
    assert abs(detector.mean) < 0.05


def test_bias_detector_fires_on_a_mean_shift() -> None:
    rng = random.Random(4)
    detector = _churn_detector()
    for _ in range(5000):
        assert not detector.update(float(rng.random() < 0.2) - 0.2)
    # Churn jumps to 50 % while the model still says 0.2: residual mean +0.3.
    fired_at = next(
        (i for i in range(1000) if detector.update(float(rng.random() < 0.5) - 0.2)), None
    )
    assert fired_at is not None and fired_at < 500, fired_at
    assert detector.mean > 0


def test_bias_detector_fires_on_a_downward_shift_and_clips_outliers() -> None:
    rng = random.Random(5)
    detector = BiasDetector(allowance=0.3, threshold=100.0, clip=5.0)  # the value detector
    for _ in range(5000):
        assert not detector.update(rng.gauss(0, 1))
    assert not detector.update(1e9)  # one wild residual counts as 5, not as a shift
    fired_at = next((i for i in range(2000) if detector.update(rng.gauss(-1.0, 1))), None)
    assert fired_at is not None and fired_at < 500
    assert detector.mean < 0


# -- LabelDrift, PopulationDrift ----------------------------------------------------------


def _derived(rng: random.Random, recency_scale: float = 1.0) -> dict[str, float]:
    return {
        "recency_days": rng.expovariate(1 / 5) * recency_scale,
        "session_rate": rng.expovariate(1 / 0.3),
        "spend_hl30d": rng.expovariate(1 / 40),
        "events_hl7d": rng.expovariate(1 / 3),
    }


def test_label_drift_ignores_labels_during_warmup() -> None:
    m = LabelDrift(warmup_labels=500)
    for i in range(500):
        m.churn_label(0.1, True, i)  # wildly wrong, but the models are still settling
    assert m.log.events == []
    assert m.churn_bias == 0.0
    for i in range(500, 2500):
        m.churn_label(0.1, True, i)
    assert m.churn_bias > 0.5, "past the warm-up the same labels count"


def test_label_drift_reports_churn_bias_with_direction() -> None:
    rng = random.Random(6)
    m = LabelDrift(warmup_labels=100)
    log = m.log
    t = 0
    for _ in range(3000):
        t += 1000
        m.churn_label(0.2, rng.random() < 0.2, t)
    assert log.events == []
    shift_at = t
    for _ in range(2000):
        t += 1000
        m.churn_label(0.2, rng.random() < 0.6, t)
    assert [e.signal for e in log.events][:1] == ["churn_bias"]
    first = log.events[0]
    assert first.kind == "quality"
    assert first.t_ms > shift_at
    assert "churn more than the model predicts" in first.detail
    assert log.counts["churn_bias"] == len([e for e in log.events if e.signal == "churn_bias"])
    assert m.churn_bias > 0.1


def test_population_drift_waits_for_the_churn_model_to_leave_its_warmup() -> None:
    rng = random.Random(7)
    m = PopulationDrift(warmup_labels=100, psi_window=50, psi_every=10)
    for t in range(500):
        m.observe_score(rng.random(), _derived(rng, recency_scale=1 + t), t, labels_learnt=100)
    assert m.psi == {} and m.log.events == []
    for t in range(500):
        m.observe_score(rng.random(), _derived(rng), t, labels_learnt=101)
    assert set(m.psi) == {"churn_score", *PSI_FEATURES}


def test_population_drift_detects_a_feature_shift_once_and_not_the_score() -> None:
    rng = random.Random(7)
    m = PopulationDrift(warmup_labels=0, psi_window=500, psi_every=100)
    t = 0
    for _ in range(2000):
        t += 1000
        m.observe_score(rng.random(), _derived(rng), t, labels_learnt=1)
    assert set(m.psi) == {"churn_score", *PSI_FEATURES}
    assert max(m.psi.values()) < 0.25
    assert m.log.events == []
    # Recency jumps tenfold and the scores all move to the top: only the feature is drift.
    for _ in range(2000):
        t += 1000
        m.observe_score(
            0.9 + 0.1 * rng.random(), _derived(rng, recency_scale=10.0), t, labels_learnt=1
        )
    signals = [e.signal for e in m.log.events]
    assert signals == ["psi_recency_days"]  # once per episode, while the PSI stays high
    assert m.log.events[0].kind == "population"
    assert m.log.events[0].value > 0.25
    assert "recency_days" in m.log.events[0].detail


def test_one_log_keeps_both_kinds_in_the_order_they_were_detected() -> None:
    rng = random.Random(8)
    log = DriftLog()
    labels = LabelDrift(log, warmup_labels=0)
    population = PopulationDrift(log, warmup_labels=0, psi_window=500, psi_every=100)
    for t in range(2000):
        population.observe_score(rng.random(), _derived(rng), t, labels_learnt=1)
        labels.churn_label(0.2, rng.random() < 0.2, t)
    assert log.events == []
    for t in range(2000, 6000):
        population.observe_score(rng.random(), _derived(rng, recency_scale=10.0), t, 1)
    for t in range(6000, 9000):
        labels.churn_label(0.2, rng.random() < 0.7, t)
    signals = [e.signal for e in log.events]
    assert signals[:2] == ["psi_recency_days", "churn_bias"], signals
    assert log.counts["psi_recency_days"] == 1


# -- the simulator's drift through the whole pipeline -------------------------------------


@pytest.mark.slow
def test_demo_without_drift_detects_nothing(tmp_path: Path) -> None:
    result = demo(load_settings(), SimulationConfig(seed=7), tmp_path, show_progress=False)
    assert result.labels > 10_000
    assert result.drift_events == [], [(e.signal, e.detail) for e in result.drift_events]


@pytest.mark.slow
def test_demo_with_drift_detects_churn_bias(tmp_path: Path) -> None:
    config = SimulationConfig(seed=7, drift_day=60.0)
    result = demo(load_settings(), config, tmp_path, show_progress=False)
    drift_ms = config.start_ms + round(60.0 * DAY_MS)
    assert result.drift_events, "the simulated drift went unnoticed"
    assert all(e.t_ms >= drift_ms for e in result.drift_events), "false alarm before the drift"
    churn = [e for e in result.drift_events if e.signal == "churn_bias"]
    assert churn, [(e.signal, e.detail) for e in result.drift_events]
    # Churn labels resolve 14 days after their snapshot: measured 15-24 days after the drift.
    delay_days = (churn[0].t_ms - drift_ms) / DAY_MS
    assert 10 <= delay_days <= 30, delay_days
    assert churn[0].value > 0  # users churn more than predicted
