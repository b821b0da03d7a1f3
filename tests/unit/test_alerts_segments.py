"""Alert hysteresis and actions, RFM segments, lifecycle stages and streaming quantiles."""

from __future__ import annotations

import math

import pytest

from streamscore.core.alerts import AlertPolicy, AlertState
from streamscore.core.quantiles import LogHistogram
from streamscore.core.segments import Lifecycle, RfmScorer, next_lifecycle, segment_name

DAY = 86_400_000
T0 = 1_767_225_600_000
POLICY = AlertPolicy()

# -- alert hysteresis and cooldown --------------------------------------------------------------


def test_policy_defaults() -> None:
    assert (POLICY.raise_at, POLICY.clear_at, POLICY.critical_at) == (0.7, 0.5, 0.9)
    assert POLICY.cooldown_days == 7.0
    assert POLICY.min_purchases == 1


def test_raise_at_threshold_then_no_reraise_until_cleared_and_cooled_down() -> None:
    a = AlertState()
    assert not a.step(POLICY, 0.69, T0, purchases=2)
    assert a.step(POLICY, 0.70, T0, purchases=2)  # inclusive threshold
    assert a.active and a.last_alert_ms == T0
    assert not a.step(POLICY, 0.95, T0 + DAY, purchases=2)  # still raised: no repeat
    assert not a.step(POLICY, 0.50, T0 + 2 * DAY, purchases=2)  # not below clear_at
    assert a.active
    assert not a.step(POLICY, 0.49, T0 + 3 * DAY, purchases=2)  # cleared
    assert not a.active
    assert not a.step(POLICY, 0.80, T0 + 4 * DAY, purchases=2)  # re-armed, but cooling down
    assert not a.step(POLICY, 0.80, T0 + 7 * DAY - 1, purchases=2)
    assert a.step(POLICY, 0.80, T0 + 7 * DAY, purchases=2)  # 7 days of event time later
    assert a.last_alert_ms == T0 + 7 * DAY


def test_hovering_around_the_threshold_raises_once() -> None:
    a = AlertState()
    raised = [
        a.step(POLICY, p, T0 + i * 30 * DAY, purchases=1)
        for i, p in enumerate([0.71, 0.69, 0.72, 0.55, 0.74, 0.6, 0.9])
    ]
    assert raised == [True, False, False, False, False, False, False]


def test_no_alert_for_users_who_never_bought() -> None:
    a = AlertState()
    assert not a.step(POLICY, 0.99, T0, purchases=0)
    assert not a.active
    assert a.step(AlertPolicy(min_purchases=0), 0.99, T0, purchases=0)


def test_cooldown_of_zero_only_needs_the_clear() -> None:
    policy = AlertPolicy(cooldown_days=0.0)
    a = AlertState()
    assert a.step(policy, 0.8, T0, 1)
    assert not a.step(policy, 0.3, T0, 1)
    assert a.step(policy, 0.8, T0, 1)


# -- action matrix ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("churn", "value", "tier", "risk", "action"),
    [
        (0.95, 250.0, "high", "critical", "personal_outreach"),
        (0.90, 200.0, "high", "critical", "personal_outreach"),  # both bounds inclusive
        (0.75, 200.0, "high", "high", "vip_discount"),
        (0.90, 50.0, "mid", "critical", "discount_offer"),
        (0.89, 199.99, "mid", "high", "reengagement_email"),
        (0.99, 49.99, "low", "critical", "reengagement_email"),
        (0.70, 0.0, "low", "high", "newsletter_nudge"),
    ],
)
def test_action_matrix(churn: float, value: float, tier: str, risk: str, action: str) -> None:
    assert POLICY.value_tier(value) == tier
    assert POLICY.risk(churn) == risk
    assert POLICY.action(churn, value) == action


def test_custom_matrix_and_missing_cell() -> None:
    policy = AlertPolicy(value_tiers=(10.0, 20.0), actions={"high/high": "call"})
    assert policy.action(0.8, 25.0) == "call"
    assert policy.action(0.8, 15.0) == "review"  # mid/high not configured
    assert policy.action(0.95, 25.0) == "review"


# -- RFM segments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("r", "f", "m", "purchases", "segment"),
    [
        (5, 5, 5, 0, "Prospect"),  # never bought: scores do not matter
        (1, 1, 1, 0, "Prospect"),
        (5, 1, 1, 1, "New Customers"),
        (4, 5, 5, 1, "New Customers"),  # one purchase, recent: new before champion
        (3, 1, 1, 1, "Need Attention"),  # one purchase, not recent
        (5, 5, 5, 12, "Champions"),
        (4, 4, 4, 6, "Champions"),
        (1, 5, 5, 9, "Can't Lose"),
        (1, 4, 4, 6, "Can't Lose"),
        (1, 4, 3, 6, "At Risk"),  # frequent but not big enough to be "can't lose"
        (2, 5, 5, 9, "At Risk"),
        (2, 3, 1, 3, "At Risk"),
        (1, 3, 5, 3, "At Risk"),
        (3, 4, 1, 5, "Loyal"),
        (5, 4, 3, 5, "Loyal"),  # recent and frequent, spend too low for champion
        (4, 2, 1, 2, "Potential Loyalists"),
        (5, 3, 5, 3, "Potential Loyalists"),
        (4, 1, 5, 3, "Promising"),
        (3, 3, 3, 3, "Need Attention"),
        (3, 1, 5, 2, "Need Attention"),
        (2, 2, 5, 2, "Hibernating"),
        (2, 1, 1, 2, "Hibernating"),
        (1, 1, 1, 2, "Lost"),
        (1, 2, 5, 2, "Lost"),
    ],
)
def test_segment_grid(r: int, f: int, m: int, purchases: int, segment: str) -> None:
    assert segment_name(r, f, m, purchases) == segment


def test_rfm_scores_against_the_population() -> None:
    rfm = RfmScorer()
    assert rfm.scores(10.0, 3, 100.0) == (3, 3, 3)  # nobody observed yet: the middle
    for i in range(1, 101):  # buyers with recency i days, i purchases, 10·i spend
        rfm.observe(float(i), float(i), 10.0 * i)
    rfm.observe(5.0, 0.0, 0.0)  # non-buyers are not part of the population
    assert rfm.recency.total == 100
    assert rfm.scores(2.0, 95.0, 990.0) == (5, 5, 5)  # recent, frequent, big
    assert rfm.scores(99.0, 2.0, 15.0) == (1, 1, 1)
    assert rfm.scores(50.0, 50.0, 500.0) == (3, 3, 3)


# -- lifecycle ----------------------------------------------------------------------------------


def step(
    previous: Lifecycle | None,
    *,
    purchases: int = 0,
    recency: float = 0.0,
    churn: float = 0.1,
    since_reactivation: bool = False,
) -> Lifecycle:
    return next_lifecycle(
        previous,
        purchases=purchases,
        recency_days=recency,
        churn_probability=churn,
        churn_horizon_days=14.0,
        at_risk_threshold=0.6,
        purchased_since_reactivation=since_reactivation,
    )


def test_lifecycle_journey() -> None:
    lc = step(None)
    assert lc is Lifecycle.NEW
    lc = step(lc, purchases=1)
    assert lc is Lifecycle.CONVERTED
    lc = step(lc, purchases=2)
    assert lc is Lifecycle.RETAINED
    lc = step(lc, purchases=2, recency=6, churn=0.6)  # at the threshold
    assert lc is Lifecycle.AT_RISK
    lc = step(lc, purchases=2, recency=14, churn=0.9)  # a full horizon of silence
    assert lc is Lifecycle.CHURNED
    lc = step(lc, purchases=2, recency=0, churn=0.4)  # back, nothing bought yet
    assert lc is Lifecycle.REACTIVATED
    lc = step(lc, purchases=2, recency=1, churn=0.2)
    assert lc is Lifecycle.REACTIVATED
    lc = step(lc, purchases=3, recency=0, churn=0.2, since_reactivation=True)
    assert lc is Lifecycle.RETAINED


@pytest.mark.parametrize(
    ("previous", "kwargs", "expected"),
    [
        (Lifecycle.NEW, {"recency": 13.99}, Lifecycle.NEW),
        (Lifecycle.NEW, {"recency": 14.0}, Lifecycle.CHURNED),  # never bought, still gone
        (Lifecycle.AT_RISK, {"purchases": 2, "churn": 0.59}, Lifecycle.RETAINED),
        (Lifecycle.AT_RISK, {"purchases": 1, "churn": 0.3}, Lifecycle.CONVERTED),
        (Lifecycle.CONVERTED, {"purchases": 1, "churn": 0.8}, Lifecycle.AT_RISK),
        (Lifecycle.NEW, {"purchases": 0, "churn": 0.99}, Lifecycle.NEW),  # no purchase: new
        (Lifecycle.CHURNED, {"purchases": 4, "since_reactivation": True}, Lifecycle.REACTIVATED),
        (
            Lifecycle.REACTIVATED,
            {"purchases": 4, "churn": 0.7, "since_reactivation": True},
            Lifecycle.AT_RISK,
        ),
        (Lifecycle.REACTIVATED, {"purchases": 4, "recency": 20}, Lifecycle.CHURNED),
        (Lifecycle.CHURNED, {"purchases": 4, "recency": 30}, Lifecycle.CHURNED),
    ],
)
def test_lifecycle_transitions(
    previous: Lifecycle, kwargs: dict[str, float], expected: Lifecycle
) -> None:
    assert step(previous, **kwargs) is expected  # type: ignore[arg-type]


# -- streaming quantiles ------------------------------------------------------------------------


def _uniform() -> LogHistogram:
    h = LogHistogram(max_value=1000.0)
    for i in range(10_000):  # 0.0, 0.1, ..., 999.9: evenly over [0, 1000)
        h.update(i / 10)
    return h


def test_quantiles_of_a_uniform_sample_within_a_bin() -> None:
    h = _uniform()
    # One bin spans a factor exp(ln(1001) / 256) ≈ 1.027 of (1 + value).
    bin_factor = math.exp(math.log(1001.0) / 256) - 1
    for q in (0.05, 0.2, 0.25, 0.4, 0.5, 0.6, 0.75, 0.8, 0.95):
        exact = 1000 * q
        assert abs(h.quantile(q) - exact) <= (1 + exact) * bin_factor + 0.1, q


def test_quantile_edges() -> None:
    assert LogHistogram(max_value=100.0).quantile(0.5) == 0.0  # empty
    h = LogHistogram(max_value=100.0)
    for _ in range(10):
        h.update(500.0)  # beyond max_value: the overflow bin
    assert h.quantile(0.5) >= 100.0 * 0.97
    h = LogHistogram(max_value=100.0)
    h.update(-3.0)  # clamped to zero
    assert h.quantile(1.0) <= 0.05


def test_quintile_scores() -> None:
    h = _uniform()
    assert [h.score(v) for v in (100.0, 300.0, 500.0, 700.0, 900.0)] == [1, 2, 3, 4, 5]
    assert [h.score(v, higher_is_better=False) for v in (100.0, 500.0, 900.0)] == [5, 3, 1]
    assert h.score(-1.0) == 1
    assert h.score(10**9) == 5
    assert LogHistogram(max_value=10.0).score(4.0) == 3  # no population yet


def test_halving_past_the_cap_keeps_a_stationary_population() -> None:
    h = LogHistogram(max_value=1000.0, cap=5_000.0)
    for i in range(10_000):
        h.update((i * 7919) % 10_000 / 10)  # the same 0..999.9 values, well mixed
    assert h.total <= 5_000.0
    assert h.quantile(0.5) == pytest.approx(500.0, rel=0.05)


def test_halving_past_the_cap_follows_a_moving_population() -> None:
    h = LogHistogram(max_value=1000.0, cap=1_000.0)
    for _ in range(2_000):
        h.update(10.0)
    for _ in range(2_000):
        h.update(500.0)
    # Without forgetting the median would sit between the two; the old mass has halved away.
    assert h.quantile(0.5) == pytest.approx(500.0, rel=0.03)


def test_histogram_round_trip() -> None:
    h = _uniform()
    g = LogHistogram.from_dict(h.to_dict())
    assert g.total == h.total
    for q in (0.1, 0.5, 0.9):
        assert g.quantile(q) == h.quantile(q)
