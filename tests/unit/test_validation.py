"""Progressive-validation metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from streamscore.core.validation import (
    AUC_BINS,
    ChurnQuality,
    ValueQuality,
    auc_from_bins,
    exact_auc,
    log_loss,
    normalised_gini,
)

# -- AUC ----------------------------------------------------------------------------------------


def test_auc_from_bins_perfect_reversed_and_tied() -> None:
    assert auc_from_bins([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0
    assert auc_from_bins([1, 1, 0, 0], [0, 0, 1, 1]) == 0.0
    assert auc_from_bins([0, 3, 0], [0, 2, 0]) == 0.5  # all in one bin: every pair a tie


def test_auc_from_bins_mixed() -> None:
    # Positives in bins 1 and 2, negatives in bins 0 and 1. Pairs (pos, neg):
    # (1, 0) win, (1, 1) tie, (2, 0) win, (2, 1) win → (3 + 0.5) / 4.
    assert auc_from_bins([0, 1, 1], [1, 1, 0]) == pytest.approx(0.875)
    # Weighted: 2 positives in bin 2, 3 negatives in bin 0, 1 negative in bin 2:
    # 2·3 wins + 2·1 ties → (6 + 1) / 8.
    assert auc_from_bins([0, 0, 2], [3, 0, 1]) == pytest.approx(7 / 8)


def test_auc_needs_both_classes() -> None:
    assert auc_from_bins([0, 0], [1, 2]) is None
    assert auc_from_bins([1, 2], [0, 0]) is None
    assert exact_auc([0.2, 0.4], [True, True]) is None
    assert exact_auc([0.2, 0.4], [False, False]) is None


def test_exact_auc_textbook_example() -> None:
    # Negatives 0.1 and 0.4, positives 0.35 and 0.8: 3 of 4 pairs ordered right.
    assert exact_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)


def test_exact_auc_ties_count_half() -> None:
    assert exact_auc([0.5, 0.5], [True, False]) == pytest.approx(0.5)
    # Positives {0.5, 0.9}, negatives {0.2, 0.5}: wins 3, one tie → 3.5 / 4.
    assert exact_auc([0.2, 0.5, 0.5, 0.9], [False, True, False, True]) == pytest.approx(0.875)
    # Three-way tie with 1 positive and 2 negatives, plus a clear win and a clear loss:
    # positives {0.3, 0.7}, negatives {0.3, 0.3, 0.9}.
    # 0.3 vs 0.3, 0.3 vs 0.3 → two ties; 0.3 vs 0.9 loss; 0.7 beats 0.3 twice, loses to 0.9.
    # (2·0.5 + 2) / 6 = 0.5.
    assert exact_auc([0.3, 0.3, 0.3, 0.7, 0.9], [True, False, False, True, False]) == (
        pytest.approx(0.5)
    )


def test_exact_auc_is_order_free_and_perfect_when_separated() -> None:
    assert exact_auc([0.9, 0.1, 0.8, 0.2], [True, False, True, False]) == 1.0
    assert exact_auc([0.1, 0.9, 0.2, 0.8], [True, False, True, False]) == 0.0


# -- log loss -----------------------------------------------------------------------------------


def test_log_loss() -> None:
    assert log_loss(0.8, True) == pytest.approx(-math.log(0.8))  # 0.2231
    assert log_loss(0.8, False) == pytest.approx(-math.log(0.2))  # 1.6094
    assert log_loss(0.5, True) == pytest.approx(math.log(2))
    # Clipped: a certain and wrong prediction costs -ln(1e-7) ≈ 16.12, not infinity.
    assert log_loss(0.0, True) == pytest.approx(-math.log(1e-7))
    assert log_loss(1.0, False) == pytest.approx(-math.log(1e-7))
    assert log_loss(1.0, True) == pytest.approx(1e-7, rel=1e-3)


# -- normalised Gini ----------------------------------------------------------------------------


def test_normalised_gini_perfect_reversed_and_partial() -> None:
    actual = [1.0, 2.0, 3.0, 4.0]
    assert normalised_gini([10, 20, 30, 40], actual) == pytest.approx(1.0)
    assert normalised_gini([4, 3, 2, 1], actual) == pytest.approx(-1.0)
    # Ordered by prediction the actuals are 3, 4, 2, 1: cumulative shares .3 .7 .9 1 →
    # Gini 2.9/4 − 5/8 = 0.1; the perfect order 4 3 2 1 gives 3/4 − 5/8 = 0.125.
    assert normalised_gini([1, 2, 4, 3], actual) == pytest.approx(0.1 / 0.125)


def test_normalised_gini_zero_inflated() -> None:
    # Spend is mostly zero: predicted order puts the only buyer second of four.
    # Actuals by prediction 0, 8, 0, 0 → shares 0, 1, 1, 1 → 3/4 − 5/8 = 0.125;
    # perfect: 8 first → 1, 1, 1, 1 → 1 − 5/8 = 0.375.
    assert normalised_gini([0.9, 0.5, 0.1, 0.0], [0.0, 8.0, 0.0, 0.0]) == pytest.approx(1 / 3)


def test_normalised_gini_undefined_cases() -> None:
    assert normalised_gini([1.0], [1.0]) is None
    assert normalised_gini([1.0, 2.0], [0.0, 0.0]) is None
    assert normalised_gini([1.0, 2.0], [5.0, 5.0]) is None  # nothing to rank


# -- running churn metrics and calibration ------------------------------------------------------


def test_churn_quality_counts_loss_auc_and_calibration() -> None:
    q = ChurnQuality()
    labels = [(0.05, False), (0.15, True), (0.12, False), (0.95, True), (1.0, True)]
    losses = [q.update(p, y) for p, y in labels]
    expected_losses = [
        -math.log(0.95),
        -math.log(0.15),
        -math.log(0.88),
        -math.log(0.95),
        -math.log(1 - 1e-7),
    ]
    assert losses == pytest.approx(expected_losses)
    report = q.report()
    assert report["labels"] == 5
    assert report["churned"] == 3
    assert report["base_rate"] == pytest.approx(0.6)
    assert report["log_loss"] == pytest.approx(sum(expected_losses) / 5)
    assert report["roc_auc"] == 1.0  # every churner scored above every stayer
    assert report["calibration"] == [
        {"bucket": "0.0-0.1", "n": 1, "mean_predicted": pytest.approx(0.05), "observed_rate": 0.0},
        {
            "bucket": "0.1-0.2",
            "n": 2,
            "mean_predicted": pytest.approx(0.135),
            "observed_rate": 0.5,
        },
        {
            "bucket": "0.9-1.0",
            "n": 2,  # p = 1.0 lands in the top bucket, not an 11th
            "mean_predicted": pytest.approx(0.975),
            "observed_rate": 1.0,
        },
    ]
    assert sum(q.pos_bins) + sum(q.neg_bins) == 5
    assert q.pos_bins[AUC_BINS - 1] == 1  # p = 1.0 is clamped into the last bin
    assert q.pos_bins[950] == 1  # 0.95


def test_churn_quality_empty_report() -> None:
    report = ChurnQuality().report()
    assert report["labels"] == 0
    assert report["roc_auc"] is None and report["log_loss"] is None
    assert report["base_rate"] is None
    assert report["calibration"] == []
    assert ChurnQuality().rolling_auc() is None
    assert ChurnQuality().rolling_log_loss() is None


def test_churn_quality_rolling_window() -> None:
    q = ChurnQuality(window=3)
    for p, y in [(0.9, False), (0.1, True), (0.2, False), (0.8, True), (0.6, True)]:
        q.update(p, y)
    # Only the last three: (0.2, F), (0.8, T), (0.6, T) → both churners above the stayer.
    assert q.rolling_auc() == 1.0
    assert q.rolling_log_loss() == pytest.approx(
        (-math.log(0.8) - math.log(0.8) - math.log(0.6)) / 3
    )
    # The cumulative AUC still sees all five: positives {0.1, 0.8, 0.6}, negatives
    # {0.9, 0.2}: 0.1 loses twice, 0.8 and 0.6 each beat 0.2 and lose to 0.9 → 2 / 6.
    assert q.auc() == pytest.approx(2 / 6)


def test_value_quality() -> None:
    v = ValueQuality(window=2)
    assert v.update(predicted=10.0, naive=0.0, actual=30.0) == 20.0
    assert v.update(predicted=5.0, naive=5.0, actual=0.0) == 5.0
    assert v.update(predicted=40.0, naive=10.0, actual=50.0) == 10.0
    report = v.report()
    assert report["labels"] == 3
    assert report["mean_actual"] == pytest.approx(80 / 3)
    assert report["mae"] == pytest.approx(35 / 3)
    assert report["naive_mae"] == pytest.approx((30 + 5 + 40) / 3)
    # Ordered by prediction: actuals 50, 30, 0 — the perfect order.
    assert report["normalised_gini"] == pytest.approx(1.0)
    assert v.rolling_mae() == pytest.approx(7.5)  # last two errors


def test_value_quality_sample_is_bounded() -> None:
    v = ValueQuality(sample_size=10)
    for i in range(100):
        v.update(float(i), 0.0, float(i))
    assert len(v.sample) == 10
    assert v.count == 100
    assert v.report()["normalised_gini"] == pytest.approx(1.0)
