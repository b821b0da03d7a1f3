"""The report's curves against hand-checkable cases; the AUC timeline stays bounded."""

from __future__ import annotations

import itertools
import random

import pytest

from streamscore.core.curves import AucTimeline, gain_curve, lift_by_decile, roc_points
from streamscore.core.validation import ChurnQuality, exact_auc

DAY = 86_400_000


def test_roc_points_run_from_origin_to_corner_and_rise() -> None:
    pos = [0.0, 0.0, 1.0, 3.0]  # positives in the top bins
    neg = [3.0, 1.0, 0.0, 0.0]
    pts = roc_points(pos, neg, points=4)
    assert pts[0] == [0.0, 0.0] and pts[-1] == [1.0, 1.0]
    assert [0.0, 1.0] in pts  # a perfect separation passes through the top-left corner
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(pts))
    assert roc_points([0.0, 0.0], [1.0, 1.0]) == []


def test_timeline_blocks_merge_and_stay_bounded() -> None:
    tl = AucTimeline(max_blocks=8, block_size=10)
    rng = random.Random(1)
    for i in range(1000):
        churned = rng.random() < 0.3
        p = min(max(rng.gauss(0.7 if churned else 0.3, 0.15), 0.0), 0.999)
        tl.update(p, churned, i * DAY)
    assert len(tl.blocks) <= 9
    rows = tl.report()
    assert sum(r["labels"] for r in rows) == 1000
    full = [r["labels"] for r in rows[:-1]]
    assert len(set(full)) == 1 and full[0] == tl.block_size  # equal blocks after merging
    assert all(a["to"] <= b["from"] for a, b in itertools.pairwise(rows))
    assert all(0.8 < r["roc_auc"] <= 1.0 for r in rows if r["labels"] >= 50)


def test_timeline_auc_matches_the_exact_auc_of_its_block() -> None:
    q = ChurnQuality()
    rng = random.Random(2)
    labels = [(round(rng.random(), 2), rng.random() < 0.4) for _ in range(200)]
    for i, (p, y) in enumerate(labels):
        q.update(p, y, i * DAY)
    first = q.report()["auc_over_time"][0]
    block = labels[:250]
    want = exact_auc([p for p, _ in block], [y for _, y in block])
    assert first["roc_auc"] == pytest.approx(want, abs=0.01)  # 100 bins vs exact ranks
    assert first["labels"] == 200


def test_gain_curve_random_perfect_and_model() -> None:
    sample = [(float(i), float(i)) for i in range(100)]  # the model ranks perfectly
    g = gain_curve(sample, points=10)
    assert g["model"] == g["perfect"]
    assert g["model"][0] == 0.0 and g["model"][-1] == 1.0
    reversed_model = [(-a, a) for _, a in sample]
    worst = gain_curve(reversed_model, points=10)
    # Ranked backwards: below the diagonal everywhere (half the customers, a quarter of spend).
    assert all(w <= s for w, s in zip(worst["model"], worst["share"], strict=True))
    assert worst["model"][5] == pytest.approx(sum(range(50)) / sum(range(100)), abs=1e-4)
    assert gain_curve([(1.0, 0.0), (2.0, 0.0)])["share"] == []


def test_lift_by_decile_orders_by_prediction() -> None:
    sample = [(float(i), float(2 * i)) for i in range(100)]
    rows = lift_by_decile(sample)
    assert [r["decile"] for r in rows] == list(range(1, 11))
    assert rows[0]["mean_predicted"] == pytest.approx(94.5)
    assert rows[0]["mean_actual"] == pytest.approx(189.0)
    assert rows[-1]["mean_actual"] == pytest.approx(9.0)
    assert lift_by_decile(sample[:9]) == []
