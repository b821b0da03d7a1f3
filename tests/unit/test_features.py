"""Per-user online features: hand-computed aggregates, derived values, order independence."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamscore.core.events import Event, EventType
from streamscore.core.features import (
    FEATURES_LAYOUT,
    OCCASION_GAP_MS,
    STORED_FIELDS,
    UserFeatures,
    btyd_summary,
    derive,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY = 86_400_000
MINUTE = 60_000
LATENESS = 5 * MINUTE

_seq = iter(range(10**9))


def ev(type_: str, day: float, amount: float | None = None) -> Event:
    return Event(
        event_id=f"e{next(_seq)}",
        user_id="u1",
        type=EventType(type_),
        ts=T0 + round(day * DAY),
        amount=amount,
    )


def build(events: list[Event], lateness_ms: int = LATENESS) -> UserFeatures:
    f = UserFeatures()
    for e in events:
        f.apply(e, lateness_ms)
    return f


def timeline() -> list[Event]:
    """Purchases at days 0, 10 and 30 (gaps 10 and 20), three sessions, a refund and a ticket."""
    return [
        ev("signup", 0),
        ev("session_start", 0),
        ev("purchase", 0, 10.0),
        ev("session_start", 10),
        ev("add_to_cart", 10),
        ev("purchase", 10, 20.0),
        ev("session_start", 30),
        ev("page_view", 30),
        ev("purchase", 30, 30.0),
        ev("refund", 30, 5.0),
        ev("support_ticket", 30),
    ]


def test_counts_spend_and_times() -> None:
    f = build(timeline())
    assert f.events == 11
    assert (f.sessions, f.page_views, f.carts, f.cart_removals) == (3, 1, 1, 0)
    assert (f.purchases, f.refunds, f.tickets) == (3, 1, 1)
    assert f.spend == pytest.approx(60.0)
    assert f.refunded == pytest.approx(5.0)
    assert f.first_seen_ms == T0
    assert f.last_seen_ms == T0 + 30 * DAY
    assert f.signup_ms == T0
    assert (f.first_session_ms, f.last_session_ms) == (T0, T0 + 30 * DAY)
    assert (f.first_purchase_ms, f.last_purchase_ms) == (T0, T0 + 30 * DAY)
    assert not f.empty
    assert UserFeatures().empty


@pytest.mark.parametrize("lateness_ms", [LATENESS, 0, 40 * DAY])
def test_purchase_gap_mean_and_std(lateness_ms: int) -> None:
    # Gaps of 10 and 20 days: mean 15, variance (100 + 400) / 2 - 15² = 25, std 5. The same
    # whether the gaps are already final (short lateness) or all still buffered (long).
    f = build(timeline(), lateness_ms)
    mean, std = f.purchase_gap_stats()
    assert mean == pytest.approx(15.0)
    assert std == pytest.approx(5.0)


def test_purchase_gap_of_fewer_than_two_purchases_is_zero() -> None:
    assert UserFeatures().purchase_gap_stats() == (0.0, 0.0)
    assert build([ev("purchase", 3, 1.0)]).purchase_gap_stats() == (0.0, 0.0)


def test_equal_gaps_have_no_spread() -> None:
    f = build([ev("purchase", d, 1.0) for d in (0, 5, 10, 15)])
    mean, std = f.purchase_gap_stats()
    assert mean == pytest.approx(5.0)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_one_event_seven_days_ago_weighs_a_half_at_a_seven_day_half_life() -> None:
    f = build([ev("page_view", 0)])
    events, spend = f.decayed_at(T0 + 7 * DAY)
    assert events[0] == pytest.approx(0.5)  # half-life 7 days
    assert events[1] == pytest.approx(2 ** (-7 / 30))  # half-life 30 days
    assert spend == [0.0, 0.0]


def test_decayed_spend_counts_purchases_only() -> None:
    f = build([ev("purchase", 0, 80.0), ev("refund", 0, 80.0)])
    events, spend = f.decayed_at(T0 + 14 * DAY)
    assert events[0] == pytest.approx(2 * 0.25)
    assert spend[0] == pytest.approx(80.0 * 0.25)
    assert spend[1] == pytest.approx(80.0 * 2 ** (-14 / 30))


def test_late_event_is_added_with_its_weight_already_decayed() -> None:
    f = build([ev("page_view", 10), ev("page_view", 3)])  # the second arrives late
    assert f.decay_ref_ms == T0 + 10 * DAY
    events, _ = f.decayed_at(T0 + 10 * DAY)
    assert events[0] == pytest.approx(1.0 + 0.5)
    assert f.first_seen_ms == T0 + 3 * DAY
    assert f.last_seen_ms == T0 + 10 * DAY


def test_decay_is_never_undone_before_the_reference() -> None:
    f = build([ev("page_view", 10)])
    events, _ = f.decayed_at(T0 + 5 * DAY)
    assert events[0] == pytest.approx(1.0)


def test_decayed_values_of_the_timeline() -> None:
    f = build(timeline())
    t = T0 + 37 * DAY
    events, spend = f.decayed_at(t)
    # Ages at day 37: 3 events at 37 days, 3 at 27 days, 5 at 7 days.
    for i, hl in enumerate((7.0, 30.0)):
        w37, w27, w7 = (2 ** (-age / hl) for age in (37, 27, 7))
        assert events[i] == pytest.approx(3 * w37 + 3 * w27 + 5 * w7)
        assert spend[i] == pytest.approx(10 * w37 + 20 * w27 + 30 * w7)


def test_derive_at_day_37() -> None:
    f = build(timeline())
    d = derive(f, T0 + 37 * DAY)
    expected = {
        "recency_days": 7.0,
        "tenure_days": 37.0,
        "days_since_purchase": 7.0,
        "events": 11.0,
        "sessions": 3.0,
        "purchases": 3.0,
        "session_rate": 3 / 37,
        "session_gap_days": 15.0,  # sessions at days 0, 10, 30: span 30 over 2 gaps
        "session_gap_ratio": 7 / 15,
        "purchase_gap_days": 15.0,
        "purchase_gap_std_days": 5.0,
        "purchase_gap_ratio": 7 / 15,
        "spend": 60.0,
        "avg_order_value": 20.0,
        "refund_rate": 1 / 3,
        "cart_to_purchase": 3.0,
        "views_per_session": 1 / 3,
        "tickets": 1.0,
        "events_hl7d": 3 * 2 ** (-37 / 7) + 3 * 2 ** (-27 / 7) + 5 * 0.5,
        "spend_hl7d": 10 * 2 ** (-37 / 7) + 20 * 2 ** (-27 / 7) + 30 * 0.5,
    }
    for key, value in expected.items():
        assert d[key] == pytest.approx(value), key
    assert {"events_hl30d", "spend_hl30d"} <= d.keys()
    assert all(math.isfinite(v) for v in d.values())


def test_derive_without_purchases_falls_back_on_tenure() -> None:
    f = build([ev("signup", 0), ev("session_start", 0)])
    d = derive(f, T0 + 4 * DAY)
    assert d["recency_days"] == pytest.approx(4.0)
    assert d["tenure_days"] == pytest.approx(4.0)
    assert d["days_since_purchase"] == pytest.approx(4.0)  # no purchase: tenure
    assert d["purchase_gap_ratio"] == pytest.approx(1.0)  # tenure ÷ max(tenure, 1)
    assert d["session_gap_days"] == pytest.approx(4.0)  # one session: max(tenure, 1)
    assert d["session_gap_ratio"] == pytest.approx(1.0)
    assert d["avg_order_value"] == 0.0
    assert d["refund_rate"] == 0.0
    assert d["cart_to_purchase"] == 0.0


def test_derive_before_last_seen_clamps_to_zero() -> None:
    f = build([ev("session_start", 0), ev("session_start", 2)])
    d = derive(f, T0 + DAY)
    assert d["recency_days"] == 0.0
    assert d["tenure_days"] == pytest.approx(1.0)


def test_occasions_count_visits_and_orders_not_events() -> None:
    # Two visits (the page views 10 minutes apart are one), three orders of which two are a
    # minute apart (one occasion): the BTYD summary counts occasions, not clicks.
    minute = 60_000
    f = build(
        [
            ev("page_view", 0),
            Event(event_id="v2", user_id="u", type=EventType.PAGE_VIEW, ts=T0 + 10 * minute),
            ev("purchase", 1, 10.0),
            Event(
                event_id="p2",
                user_id="u",
                type=EventType.PURCHASE,
                ts=T0 + DAY + minute,
                amount=5.0,
            ),
            ev("purchase", 8, 7.0),
        ]
    )
    assert f.visits == 3  # day 0 (two page views), day 1 (two orders), day 8
    assert f.purchase_occasions == 2
    assert f.last_browse_ms == T0 + 10 * minute
    # Any activity: birth at the first page view, two repeat visits, the latest on day 8.
    assert btyd_summary(f, T0 + 10 * DAY, purchase_activity=False) == pytest.approx(
        (2.0, 8.0, 10.0, 2.0, 8.0)
    )
    # Purchases only: the first purchase is not the birth here (the page views came first).
    x, t_x, big_t, _, _ = btyd_summary(f, T0 + 10 * DAY, purchase_activity=True)
    assert (x, t_x, big_t) == pytest.approx((2.0, 8.0, 10.0))


def test_a_first_purchase_that_is_the_first_event_is_the_birth_not_a_repeat() -> None:
    f = build([ev("purchase", 0, 10.0), ev("purchase", 5, 10.0)])
    assert btyd_summary(f, T0 + 9 * DAY, purchase_activity=True) == pytest.approx(
        (1.0, 5.0, 9.0, 1.0, 5.0)
    )
    one = build([ev("purchase", 0, 10.0)])
    assert btyd_summary(one, T0 + 9 * DAY, purchase_activity=True) == pytest.approx(
        (0.0, 0.0, 9.0, 0.0, 0.0)
    )


def test_the_stored_form_round_trips_through_json() -> None:
    f = build(timeline())
    data = orjson.loads(orjson.dumps(f.to_stored()))
    g, carried = UserFeatures.from_stored(data, FEATURES_LAYOUT)
    assert (g, carried) == (f, [])
    assert g.purchase_gap_stats() == f.purchase_gap_stats()
    assert derive(g, T0 + 40 * DAY) == derive(f, T0 + 40 * DAY)


def test_every_field_is_stored_and_layouts_only_ever_append() -> None:
    current = STORED_FIELDS[FEATURES_LAYOUT]
    assert set(current) == set(UserFeatures.__slots__), "a field the state would not keep"
    assert len(set(current)) == len(current)
    layouts = [STORED_FIELDS[v] for v in sorted(STORED_FIELDS)]
    for older, newer in itertools.pairwise(layouts):
        assert newer[: len(older)] == older, "a layout moved or dropped a field"


def test_values_are_read_by_the_name_their_layout_gives_them() -> None:
    # An older layout without the purchase-gap fields (as if they were added later): the
    # stored values land on their names and the missing fields take their defaults.
    f = build(timeline())
    short = tuple(n for n in STORED_FIELDS[FEATURES_LAYOUT] if "final" not in n)
    values = [getattr(f, n) for n in short]
    STORED_FIELDS[1] = short
    try:
        g, carried = UserFeatures.from_stored(values, 1)
    finally:
        del STORED_FIELDS[1]
    assert carried == []
    assert (g.spend, g.purchases, g.decayed_events) == (f.spend, f.purchases, f.decayed_events)
    assert (g.final_gaps, g.final_gap_sumsq_days, g.last_final_purchase_ms) == (0, 0.0, 0)


def test_values_a_newer_writer_appended_come_back_apart_to_be_kept() -> None:
    f = build([ev("page_view", 1)])
    g, carried = UserFeatures.from_stored([*f.to_stored(), 3, [1.5]], FEATURES_LAYOUT + 1)
    assert g == f
    assert carried == [3, [1.5]]


# -- order independence within the allowed lateness --------------------------------------------


def assert_same_features(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key, x in a.items():
        y = b[key]
        if isinstance(x, list):
            assert len(x) == len(y), key
            for xi, yi in zip(x, y, strict=True):
                if isinstance(xi, float):
                    assert xi == pytest.approx(yi, rel=1e-9, abs=1e-12), key
                else:
                    assert xi == yi, key
        elif isinstance(x, float):
            assert x == pytest.approx(y, rel=1e-9, abs=1e-12), key
        else:
            assert x == y, key


OTHER_TYPES = [t for t in EventType if t not in (EventType.PURCHASE, EventType.REFUND)]
offsets = st.integers(min_value=0, max_value=60 * DAY)
purchases = st.lists(
    st.tuples(offsets, st.floats(min_value=0.0, max_value=500.0, allow_nan=False)), max_size=16
)
others = st.lists(
    st.tuples(
        offsets,
        st.sampled_from([*OTHER_TYPES, EventType.REFUND]),
        st.floats(min_value=0.0, max_value=100.0, allow_nan=False),
    ),
    max_size=24,
)


@settings(max_examples=200, deadline=None)
@given(
    purchases=purchases,
    others=others,
    lateness_ms=st.sampled_from([LATENESS, 6 * 3_600_000, 3 * DAY]),
    clustered=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_any_order_within_lateness_gives_the_same_features(
    purchases: list[tuple[int, float]],
    others: list[tuple[int, EventType, float]],
    lateness_ms: int,
    clustered: bool,
    seed: int,
) -> None:
    def at(offset: int) -> int:  # clustered: everything within one lateness window
        return T0 + (offset % lateness_ms if clustered else offset)

    events: list[Event] = []
    for i, (offset, amount) in enumerate(purchases):
        ts = at(offset)
        events.append(
            Event(event_id=f"p{i}", user_id="u", type=EventType.PURCHASE, ts=ts, amount=amount)
        )
    for i, (offset, type_, amount) in enumerate(others):
        ts = at(offset)
        money = amount if type_ is EventType.REFUND else None
        events.append(Event(event_id=f"o{i}", user_id="u", type=type_, ts=ts, amount=money))

    in_order = sorted(events, key=lambda e: e.ts)
    rng = random.Random(seed)
    jittered = sorted(events, key=lambda e: e.ts + rng.random() * lateness_ms)
    # The premise: every event is at most `lateness` older than anything applied before it.
    newest = -1
    for e in jittered:
        assert e.ts > newest - lateness_ms
        newest = max(newest, e.ts)

    a = build(in_order, lateness_ms)
    b = build(jittered, lateness_ms)
    assert_same_features(a.to_dict(), b.to_dict())
    if events:
        t = max(e.ts for e in events) + 2 * DAY
        da, db = derive(a, t), derive(b, t)
        for key in da:
            assert da[key] == pytest.approx(db[key], rel=1e-9, abs=1e-9), key
        # And the buffered variance is the variance of the true purchase gaps.
        times = sorted(e.ts for e in events if e.type is EventType.PURCHASE)
        gaps = [(y - x) / DAY for x, y in itertools.pairwise(times)]
        mean, std = b.purchase_gap_stats()
        # Occasions are the runs of events less than the gap apart, whatever the order.
        all_times = sorted(e.ts for e in events)
        visits = 1 + sum(y - x > OCCASION_GAP_MS for x, y in itertools.pairwise(all_times))
        orders = (
            (1 + sum(y - x > OCCASION_GAP_MS for x, y in itertools.pairwise(times))) if times else 0
        )
        assert (a.visits, b.visits) == (visits, visits)
        assert (a.purchase_occasions, b.purchase_occasions) == (orders, orders)
        if gaps:
            true_mean = sum(gaps) / len(gaps)
            true_var = sum(g * g for g in gaps) / len(gaps) - true_mean**2
            assert mean == pytest.approx(true_mean, rel=1e-9, abs=1e-9)
            assert std**2 == pytest.approx(max(true_var, 0.0), rel=1e-6, abs=1e-6)
