"""Delayed labels, the watermark and silent-user rescoring (DESIGN.md §4), on hand-built
timelines driven straight through ``Scorer.apply_events`` and ``Scorer.advance``.

Config: churn horizon 14 d, value horizon 30 d, a snapshot every 7 d on each user's grid,
silent users rescored after 3, 7 and 21 days of silence, plus the churn horizon (14 d) which
is always a rescoring point. Users without purchases can never raise an alert
(min_purchases = 1), which keeps the expected outputs exact.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from streamscore.core.events import Event, EventType
from streamscore.core.inputs import MODEL_INPUTS
from streamscore.core.models import Models
from streamscore.core.population import key_hash
from streamscore.core.records import TOPIC_ALERTS, TOPIC_SCORES, TOPIC_SEGMENTS, record_id
from streamscore.core.scorer import Scorer
from streamscore.core.snapshots import Snapshot
from streamscore.core.state import UserState
from streamscore.core.trainer import Trainer
from streamscore.core.validation import log_loss
from streamscore.core.values import (
    CustomerObservation,
    LabelKind,
    Output,
    PopulationSample,
    ScoringConfig,
    TrainingExample,
)
from streamscore.wiring import model_params_of

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY = 86_400_000
MINUTE = 60_000
NOW = T0 + 400 * DAY  # wall clock: only used for scored_at

CFG = ScoringConfig(
    churn_horizon_days=14,
    value_horizon_days=30,
    snapshot_period_days=7,
    rescore_after_days=(3.0, 7.0, 21.0),
)


class Feed:
    """One user's events with increasing offsets on partition 0."""

    def __init__(self, scorer: Scorer, user_id: str = "u1") -> None:
        self.scorer = scorer
        self.state = UserState(user_id=user_id)
        self.offset = 0
        self.n = 0

    def event(self, type_: str, ts: int, amount: float | None = None) -> tuple[int, int, Event]:
        self.n += 1
        e = Event(
            event_id=f"{self.state.user_id}-e{self.n}",
            user_id=self.state.user_id,
            type=EventType(type_),
            ts=ts,
            amount=amount,
        )
        self.offset += 1
        return (0, self.offset, e)

    def apply(self, *events: tuple[str, int] | tuple[str, int, float]) -> list[Output]:
        batch = [self.event(*e) for e in events]
        return self.scorer.apply_events(self.state, batch, NOW)

    def advance(self, watermark: int) -> list[Output]:
        return self.scorer.advance(self.state, watermark, NOW)

    def snapshot_times(self) -> list[int]:
        return [s.t_ms for s in self.state.snapshots]


def new_scorer(config: ScoringConfig = CFG) -> Scorer:
    """A scorer learning at each call through a trainer that is also its lineage: these tests
    drive the scorer alone, without a pipeline to deliver its training records."""
    trainer = Trainer(Models(model_params_of(config)))
    scorer = Scorer(config, trainer, trainer, trainer.drift.log)
    scorer.outcomes = []
    return scorer


def learnt(scorer: Scorer) -> Trainer:
    """The trainer the scorer learns through (in one process: its lineage too)."""
    assert isinstance(scorer.learner, Trainer)
    return scorer.learner


def topics(outputs: list[Output]) -> list[str]:
    return [o.topic for o in outputs]


def spy_learning(scorer: Scorer) -> list[tuple[str, int, Any]]:
    """Record, at every learn call, how many labels the quality metrics had seen by then."""
    calls: list[tuple[str, int, Any]] = []
    trainer = learnt(scorer)
    models = trainer.models
    learn_churn, learn_value = models.learn_churn, models.learn_value

    def churn(x: dict[str, float], churned: bool, weight: float = 1.0) -> None:
        calls.append(("churn", trainer.quality.churn.count, (list(x.values()), churned)))
        learn_churn(x, churned, weight)

    def value(x: dict[str, float], spend: float, weight: float = 1.0) -> None:
        calls.append(("value", trainer.quality.value.count, (list(x.values()), spend)))
        learn_value(x, spend, weight)

    models.learn_churn = churn  # type: ignore[method-assign]
    models.learn_value = value  # type: ignore[method-assign]
    return calls


# -- config -------------------------------------------------------------------------------------


def test_churn_horizon_is_always_a_rescoring_point() -> None:
    assert CFG.rescore_points_ms == (3 * DAY, 7 * DAY, 14 * DAY, 21 * DAY)
    assert ScoringConfig(rescore_after_days=()).rescore_points_ms == (14 * DAY,)
    assert CFG.churn_horizon_ms == 14 * DAY
    assert CFG.value_horizon_ms == 30 * DAY


# -- snapshots ----------------------------------------------------------------------------------

P = 7 * DAY  # CFG's snapshot period


def grid_after(user_id: str, t_ms: int) -> int:
    """The first time after ``t_ms`` on the user's snapshot grid: every period, at a phase
    given by a hash of the id (the rule the scorer documents)."""
    phase = key_hash(user_id) % P
    return t_ms - (t_ms - phase) % P + P


G0 = grid_after("u1", T0)  # u1's first grid time after its first event (at T0)


def test_the_grid_spreads_users_over_the_period() -> None:
    phases = [key_hash(f"user-{i}") % P / P for i in range(2000)]
    # Uniform over the period: each tenth holds about a tenth of the users.
    for k in range(10):
        share = sum(k / 10 <= p < (k + 1) / 10 for p in phases) / len(phases)
        assert 0.07 < share < 0.13
    assert T0 < G0 <= T0 + P


def test_snapshots_are_taken_on_the_users_grid_once_per_period() -> None:
    scorer = new_scorer()
    feed = Feed(scorer)
    feed.apply(("session_start", T0))
    assert feed.snapshot_times() == []  # none at events: the first grid time is ahead
    assert feed.state.next_snapshot_ms == G0
    # An event after the grid time: the snapshot is taken first, as of G0.
    feed.apply(("page_view", G0 + 3_600_000))
    (s0,) = feed.state.snapshots
    assert s0.t_ms == G0
    assert s0.churn_x[MODEL_INPUTS.index("T")] == pytest.approx((G0 - T0) / DAY)
    assert s0.churn_x[MODEL_INPUTS.index("x")] == 0.0  # the page view came after G0
    assert s0.returned  # the page view came after it, within the horizon
    feed.apply(("page_view", G0 + 3 * DAY))
    assert feed.snapshot_times() == [G0]
    feed.advance(G0 + P)  # the watermark reaches the next grid time
    assert feed.snapshot_times() == [G0, G0 + P]
    assert feed.state.next_snapshot_ms == G0 + 2 * P
    assert scorer.counters.snapshots == 2
    assert [s.weight for s in feed.state.snapshots] == [1.0, 1.0]


def test_long_silence_is_sampled_and_weighted_by_the_inverse_rate() -> None:
    # Users silent for two years: every grid time within the churn horizon of silence is
    # taken; beyond, a fraction dormant/periods-silent of them, each weighted by its inverse,
    # so the weights of the resolved labels add up to about one per grid time.
    scorer = new_scorer()
    end = T0 + 730 * DAY
    grid_times = 0
    for i in range(30):
        feed = Feed(scorer, user_id=f"silent-{i}")
        feed.apply(("session_start", T0))
        feed.advance(end)
        first = grid_after(feed.state.user_id, T0)
        grid_times += len(range(first, end - 14 * DAY + 1, P))
    assert scorer.counters.snapshots < grid_times / 5  # the cost: the log of the silence
    assert learnt(scorer).quality.churn.weight_sum == pytest.approx(grid_times, rel=0.15)


def test_snapshot_stores_the_prediction_made_then() -> None:
    scorer = new_scorer()
    feed = Feed(scorer)
    feed.apply(("session_start", T0))
    feed.advance(G0)
    (snap,) = feed.state.snapshots
    models = learnt(scorer).models
    p = models.predict_all(snap.churn_x)
    assert (snap.churn_p, snap.value_p) == pytest.approx((p.corrected_churn, p.corrected_value))
    # Nothing learnt yet: the prediction is the BTYD model's own, stored beside it, and the
    # corrections have no record, so the scores carried the BTYD model's.
    assert snap.baseline_churn == pytest.approx(p.base.p_churn)
    assert snap.churn_served_btyd and snap.value_served_btyd
    assert (snap.served_churn, snap.served_value) == (snap.baseline_churn, snap.baseline_value)
    assert snap.churn_p == pytest.approx(snap.baseline_churn)
    assert snap.value_p == pytest.approx(snap.baseline_value)
    assert snap.naive_value == 0.0  # nothing spent yet
    assert not snap.returned and snap.spend == 0.0 and snap.orders == 0.0


# -- activity and the churn label ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("after_ms", "returned"),
    [(0, False), (1, True), (2 * DAY, True), (14 * DAY, True), (14 * DAY + 1, False)],
)
def test_activity_after_the_snapshot_within_the_horizon_marks_it_returned(
    after_ms: int, returned: bool
) -> None:
    feed = Feed(new_scorer())
    feed.apply(("session_start", T0))
    feed.advance(G0)
    feed.apply(("page_view", G0 + after_ms))
    assert feed.state.snapshots[0].t_ms == G0
    assert feed.state.snapshots[0].returned is returned


def test_return_is_learnt_as_not_churned_only_at_the_horizon() -> None:
    scorer = new_scorer()
    calls = spy_learning(scorer)
    feed = Feed(scorer)
    feed.apply(("session_start", T0))
    feed.advance(G0)
    feed.apply(("page_view", G0 + 2 * DAY))
    s0 = feed.state.snapshots[0]
    assert s0.returned
    stored_p = s0.churn_p
    stored_x = list(s0.churn_x)
    feed.advance(G0 + 14 * DAY - 1)
    assert learnt(scorer).quality.churn.count == 0
    assert calls == []
    assert not s0.churn_learnt

    feed.advance(G0 + 14 * DAY)
    assert s0.churn_learnt and not s0.value_learnt
    q = learnt(scorer).quality.churn
    assert (q.count, q.positives) == (1, 0)
    assert q.loss_sum == pytest.approx(log_loss(stored_p, False))
    (outcome,) = scorer.outcomes
    assert (outcome.t_ms, outcome.churned, outcome.predicted) == (G0, False, stored_p)
    assert outcome.recency_days == pytest.approx((G0 - T0) / DAY)
    # Scored against the stored prediction first, learnt after.
    assert calls[0] == ("churn", 1, (stored_x, False))


def test_silence_is_learnt_as_churned_when_the_watermark_passes_the_horizon() -> None:
    scorer = new_scorer()
    calls = spy_learning(scorer)
    feed = Feed(scorer)
    feed.apply(("session_start", T0))
    feed.advance(G0 + 14 * DAY - 1)
    stored_p = feed.state.snapshots[0].churn_p
    assert learnt(scorer).quality.churn.count == 0
    feed.advance(G0 + 14 * DAY)
    q = learnt(scorer).quality.churn
    assert (q.count, q.positives) == (1, 1)
    assert q.loss_sum == pytest.approx(-math.log(stored_p))
    assert [(o.churned, o.predicted, o.t_ms) for o in scorer.outcomes] == [(True, stored_p, G0)]
    assert calls[0][:2] == ("churn", 1) and calls[0][2][1] is True


def test_every_label_is_scored_with_its_own_stored_prediction() -> None:
    scorer = new_scorer()
    feed = Feed(scorer)
    feed.apply(("session_start", T0))
    feed.advance(G0 + P)
    s0, s1 = feed.state.snapshots
    recency = MODEL_INPUTS.index("T")
    assert s1.churn_x[recency] - s0.churn_x[recency] == pytest.approx(7.0)
    assert s1.churn_p != s0.churn_p
    feed.advance(G0 + P + 14 * DAY)
    assert [(o.t_ms, o.predicted, o.churned) for o in scorer.outcomes] == [
        (G0, s0.churn_p, True),
        (G0 + P, s1.churn_p, True),
    ]
    assert learnt(scorer).quality.churn.loss_sum == pytest.approx(
        -math.log(s0.churn_p) - math.log(s1.churn_p)
    )


def test_pending_labels_survive_the_state_store() -> None:
    scorer = new_scorer()
    feed = Feed(scorer)
    feed.apply(("session_start", T0))
    feed.advance(G0)
    feed.apply(("page_view", G0 + 3 * DAY))
    stored_p = feed.state.snapshots[0].churn_p
    feed.state = UserState.from_bytes("u1", feed.state.to_bytes())  # a restart
    assert feed.state.next_snapshot_ms == G0 + P
    feed.advance(G0 + 14 * DAY)
    assert learnt(scorer).quality.churn.count == 1
    assert learnt(scorer).quality.churn.positives == 0
    assert scorer.outcomes[0].predicted == pytest.approx(stored_p, abs=1e-6)


# -- the value label ----------------------------------------------------------------------------


def test_value_label_is_spend_and_orders_in_the_horizon_learnt_at_its_end() -> None:
    scorer = new_scorer()
    calls = spy_learning(scorer)
    feed = Feed(scorer)
    feed.apply(("session_start", T0))
    feed.advance(G0)
    feed.apply(("purchase", G0 + DAY, 25.0))
    feed.apply(("purchase", G0 + 20 * DAY, 40.0))
    s0 = feed.state.snapshots[0]
    assert s0.t_ms == G0
    assert (s0.spend, s0.orders) == (pytest.approx(65.0), 2.0)
    feed.advance(G0 + 30 * DAY - 1)
    assert s0.churn_learnt and not s0.value_learnt
    assert learnt(scorer).quality.value.count == 0

    feed.advance(G0 + 30 * DAY)
    v = learnt(scorer).quality.value
    assert v.count == 1
    assert v.total_actual == pytest.approx(65.0)
    assert v.abs_err == pytest.approx(abs(s0.value_p - 65.0), rel=1e-6)
    assert v.naive_abs_err == pytest.approx(65.0)  # nothing spent before G0
    assert ("value", 1, (list(s0.churn_x), 2.0)) in calls
    assert s0 not in feed.state.snapshots  # both labels learnt: gone


def test_value_window_is_after_t_up_to_and_including_the_horizon() -> None:
    feed = Feed(new_scorer())
    feed.apply(("session_start", T0))
    feed.advance(G0)
    feed.apply(("purchase", G0, 5.0))  # at t itself: not "after t"
    feed.apply(("purchase", G0 + 30 * DAY, 7.0))  # exactly at the horizon: counts
    feed.apply(("purchase", G0 + 30 * DAY + 1, 11.0))  # just past it: not for S0
    s0 = feed.state.snapshots[0]
    assert s0.t_ms == G0
    assert (s0.spend, s0.orders) == (pytest.approx(7.0), 1.0)


def test_refunds_are_not_spend() -> None:
    feed = Feed(new_scorer())
    feed.apply(("session_start", T0))
    feed.advance(G0)
    feed.apply(("refund", G0 + DAY, 9.0))
    assert feed.state.snapshots[0].spend == 0.0
    assert feed.state.snapshots[0].returned


# -- silent users -------------------------------------------------------------------------------


def test_silent_user_is_rescored_once_at_three_days() -> None:
    feed = Feed(new_scorer())
    feed.apply(("session_start", T0))
    assert feed.advance(T0 + 3 * DAY - 1) == []
    out = feed.advance(T0 + 3 * DAY + 1)
    assert topics(out) == [TOPIC_SCORES]
    record = out[0].value
    assert record["trigger"] == "silence"
    assert record["as_of"] == "2026-01-04T00:00:00.000Z"
    assert record["user_id"] == "u1"
    assert record["lifecycle_stage"] == "new"
    # Nothing more is due until day 7: advancing again is a no-op.
    assert feed.advance(T0 + 3 * DAY + 1) == []
    assert feed.advance(T0 + 7 * DAY - 1) == []


def test_jump_past_the_horizon_rescored_at_each_point_and_churned_at_fourteen_days() -> None:
    scorer = new_scorer()
    feed = Feed(scorer)
    first = feed.apply(("session_start", T0))
    assert topics(first) == [TOPIC_SCORES, TOPIC_SEGMENTS]
    out = feed.advance(T0 + 15 * DAY)
    assert topics(out) == [TOPIC_SCORES, TOPIC_SCORES, TOPIC_SCORES, TOPIC_SEGMENTS]
    scores = [o.value for o in out if o.topic == TOPIC_SCORES]
    assert [s["as_of"] for s in scores] == [
        "2026-01-04T00:00:00.000Z",
        "2026-01-08T00:00:00.000Z",
        "2026-01-15T00:00:00.000Z",
    ]
    assert [s["trigger"] for s in scores] == ["silence"] * 3
    assert [s["lifecycle_stage"] for s in scores] == ["new", "new", "churned"]
    assert len({s["id"] for s in scores}) == 3
    change = out[-1].value
    assert change["as_of"] == "2026-01-15T00:00:00.000Z"
    assert (change["lifecycle_previous"], change["lifecycle_current"]) == ("new", "churned")
    assert change["previous"] == change["current"] == "Prospect"
    assert feed.state.lifecycle == "churned"
    # The churn label of a snapshot whose horizon has passed was learnt on the way (churned).
    resolved = 1 if G0 + 14 * DAY <= T0 + 15 * DAY else 0
    q = learnt(scorer).quality.churn
    assert (q.count, q.positives) == (resolved, resolved)
    # Next: the 21-day point, or the next grid time if it comes first.
    assert scorer.due_ms(feed.state) == min(T0 + 21 * DAY, feed.state.next_snapshot_ms)


def test_segment_changes_only_when_segment_or_lifecycle_changes() -> None:
    feed = Feed(new_scorer())
    out = feed.apply(("session_start", T0))
    (change,) = [o.value for o in out if o.topic == TOPIC_SEGMENTS]
    assert change["previous"] is None and change["lifecycle_previous"] is None
    assert (change["current"], change["lifecycle_current"]) == ("Prospect", "new")
    assert topics(feed.apply(("page_view", T0 + DAY))) == [TOPIC_SCORES]
    assert TOPIC_SEGMENTS not in topics(feed.advance(T0 + 8 * DAY))  # rescored, still new
    assert TOPIC_SEGMENTS in topics(feed.advance(T0 + 15 * DAY))  # churned
    assert feed.state.lifecycle == "churned"

    out = feed.apply(("session_start", T0 + 20 * DAY))  # back
    (change,) = [o.value for o in out if o.topic == TOPIC_SEGMENTS]
    assert (change["lifecycle_previous"], change["lifecycle_current"]) == (
        "churned",
        "reactivated",
    )
    assert feed.state.reactivated_ms == T0 + 20 * DAY
    assert topics(feed.apply(("page_view", T0 + 20 * DAY + MINUTE))) == [TOPIC_SCORES]


def test_new_events_restart_the_silence_clock() -> None:
    scorer = new_scorer()
    feed = Feed(scorer)
    feed.apply(("session_start", T0))
    feed.advance(T0 + 7 * DAY)
    assert feed.state.rescore_step == 2
    feed.apply(("page_view", T0 + 8 * DAY))
    assert feed.state.rescore_step == 0
    assert feed.state.next_snapshot_ms == grid_after("u1", T0 + 8 * DAY)
    assert scorer.due_ms(feed.state) == min(T0 + 11 * DAY, feed.state.next_snapshot_ms)


# -- due_ms -------------------------------------------------------------------------------------


def test_due_ms_is_the_earliest_pending_time() -> None:
    scorer = new_scorer()
    feed = Feed(scorer)
    assert scorer.due_ms(feed.state) is None  # never seen
    feed.apply(("session_start", T0))
    # Rescoring at day 3 or the first grid time, whichever comes first.
    assert scorer.due_ms(feed.state) == min(T0 + 3 * DAY, G0)
    expected = sorted({T0 + 3 * DAY, T0 + 7 * DAY, T0 + 14 * DAY, T0 + 21 * DAY, G0, G0 + P})
    seen: list[int] = []
    while (due := scorer.due_ms(feed.state)) is not None and due <= max(expected):
        seen.append(due)
        feed.advance(due)
    # Every rescoring point, every grid time, and the first snapshot's churn horizon.
    assert set(expected) <= set(seen) | {G0 + 14 * DAY}
    assert seen == sorted(seen)


def test_due_ms_of_pending_snapshots_only() -> None:
    scorer = new_scorer()
    state = UserState(user_id="u9")
    state.snapshots = [
        Snapshot(T0, [0.0], [0.0], 0.5, 0.0, 0.0, churn_learnt=True),
        Snapshot(T0 + 10 * DAY, [0.0], [0.0], 0.5, 0.0, 0.0, churn_learnt=True),
    ]
    assert scorer.due_ms(state) == T0 + 30 * DAY
    state.snapshots.append(Snapshot(T0 + 12 * DAY, [0.0], [0.0], 0.5, 0.0, 0.0))
    assert scorer.due_ms(state) == T0 + 26 * DAY


# -- duplicates ---------------------------------------------------------------------------------


def _event(event_id: str, ts: int, type_: str = "page_view") -> Event:
    return Event(event_id=event_id, user_id="u1", type=EventType(type_), ts=ts)


def test_replayed_offset_or_duplicate_id_changes_nothing() -> None:
    scorer = new_scorer()
    state = UserState(user_id="u1")
    scorer.apply_events(state, [(0, 5, _event("a", T0, "session_start"))], NOW)
    before = state.to_bytes()
    events_before = scorer.counters.events

    # The same record again, an older offset with a new id, the same id on another partition.
    assert scorer.apply_events(state, [(0, 5, _event("a", T0, "session_start"))], NOW) == []
    assert scorer.apply_events(state, [(0, 3, _event("zz", T0 + DAY))], NOW) == []
    assert scorer.apply_events(state, [(1, 99, _event("a", T0, "session_start"))], NOW) == []
    assert scorer.counters.duplicates == 3
    assert scorer.counters.events == events_before
    assert state.to_bytes() == before

    # A new offset with a new id is applied.
    out = scorer.apply_events(state, [(0, 6, _event("b", T0 + DAY))], NOW)
    assert topics(out)[0] == TOPIC_SCORES
    assert state.features.events == 2
    assert scorer.counters.duplicates == 3


def test_duplicate_inside_one_batch_is_applied_once() -> None:
    scorer = new_scorer()
    state = UserState(user_id="u1")
    e = _event("a", T0, "session_start")
    scorer.apply_events(state, [(0, 1, e), (0, 2, e)], NOW)
    assert state.features.events == 1
    assert scorer.counters.duplicates == 1


def test_out_of_order_events_within_one_batch_are_all_applied() -> None:
    scorer = new_scorer()
    state = UserState(user_id="u1")
    # Offset 10 happened a minute after offset 11 (well within the allowed lateness).
    batch = [(0, 10, _event("later", T0 + MINUTE)), (0, 11, _event("earlier", T0))]
    scorer.apply_events(state, batch, NOW)
    assert scorer.counters.duplicates == 0
    assert state.features.events == 2


def test_user_moving_to_another_partition_keeps_receiving_events() -> None:
    # Adding partitions to the topic moves keys: offsets of the new partition start low.
    scorer = new_scorer()
    state = UserState(user_id="u1")
    scorer.apply_events(state, [(0, 1000, _event("a", T0, "session_start"))], NOW)
    scorer.apply_events(state, [(1, 5, _event("b", T0 + MINUTE))], NOW)
    scorer.apply_events(state, [(1, 6, _event("c", T0 + 2 * MINUTE))], NOW)
    assert (state.partition, state.offset) == (1, 6)
    assert state.features.events == 3
    assert scorer.counters.duplicates == 0


def test_reactivation_time_does_not_depend_on_batching() -> None:
    def run(batches: list[list[tuple[str, int] | tuple[str, int, float]]]) -> UserState:
        feed = Feed(new_scorer())
        feed.apply(("session_start", T0))
        feed.advance(T0 + 15 * DAY)
        assert feed.state.lifecycle == "churned"
        for batch in batches:
            feed.apply(*batch)
        return feed.state

    back = T0 + 20 * DAY
    steps: list[tuple[str, int] | tuple[str, int, float]] = [
        ("session_start", back),
        ("purchase", back + 10 * MINUTE, 30.0),
        ("page_view", back + 20 * MINUTE),
    ]
    later = ("page_view", back + DAY)
    one_by_one = run([[s] for s in steps] + [[later]])
    together = run([steps, [later]])
    assert one_by_one.reactivated_ms == back
    assert one_by_one.lifecycle != "reactivated"  # bought something since coming back
    assert together.reactivated_ms == back
    assert together.lifecycle == one_by_one.lifecycle


def test_no_alert_without_purchases() -> None:
    feed = Feed(new_scorer())
    feed.apply(("session_start", T0))
    out = feed.advance(T0 + 60 * DAY)
    assert TOPIC_ALERTS not in topics(out)


# -- the seam between scoring and learning --------------------------------------------------------


class Recording:
    """A learner that remembers what it is handed and passes it on to a trainer."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.examples: list[TrainingExample] = []
        self.samples: list[PopulationSample] = []
        self.customers: list[CustomerObservation] = []

    def learn(self, example: TrainingExample) -> None:
        self.examples.append(example)
        self.trainer.learn(example)

    def observe(self, sample: PopulationSample) -> None:
        self.samples.append(sample)
        self.trainer.observe(sample)

    def wants(self, key_hash: int) -> bool:
        return self.trainer.wants(key_hash)

    def observe_customer(self, observation: CustomerObservation) -> None:
        self.customers.append(observation)
        self.trainer.observe_customer(observation)

    def take(self) -> list[Output]:
        return []

    def delivered(self) -> None:
        return None


def test_the_scorer_learns_only_through_its_learner() -> None:
    # Predict with one trainer's lineage, learn through another: nothing may reach the first.
    lineage, learner = Trainer(), Recording(Trainer())
    feed = Feed(Scorer(CFG, lineage, learner))
    feed.apply(("session_start", T0))
    feed.advance(G0)
    feed.apply(("purchase", G0 + DAY, 25.0))
    s0 = feed.state.snapshots[0]
    feed.advance(G0 + 30 * DAY)
    assert lineage.models.churn_learnt == lineage.models.value_learnt == 0
    assert lineage.quality.churn.count == lineage.rfm.recency.total == 0
    assert not lineage.models.population.sample
    # Snapshots on the grid from G0 (all of them within 14 days of the purchase, sampled
    # after): the churn labels of those 14 days or more before the watermark are due, and
    # the value label of the first.
    churn = [e for e in learner.examples if e.kind is LabelKind.CHURN]
    taken = [e.snapshot_ms for e in churn]
    assert taken[:2] == [G0, G0 + P]
    assert all((t - G0) % P == 0 for t in taken)
    assert learner.trainer.models.churn_learnt == len(churn)
    assert learner.trainer.models.value_learnt == 1
    assert len(learner.samples) == feed.scorer.counters.snapshots
    first_sample = PopulationSample(
        pytest.approx((G0 - T0) / DAY), 0.0, 0.0, id=record_id("rfm", "u1", G0)
    )
    assert learner.samples[0] == first_sample
    # The population model saw the customer after each of their two batches of events.
    assert [c.t_ms for c in learner.customers] == [T0, G0 + DAY]
    assert learner.customers[-1].key_hash == key_hash("u1")

    value = [e for e in learner.examples if e.kind is LabelKind.VALUE]
    first = churn[0]
    assert first.snapshot_ms == G0 and first.label_ms == G0 + 14 * DAY
    assert first.label == 0.0  # the purchase on day 1 was a return
    assert first.predicted == s0.churn_p and first.baseline is None
    assert first.btyd == pytest.approx(s0.baseline_churn)
    assert first.inputs == pytest.approx(dict(zip(MODEL_INPUTS, s0.churn_x, strict=True)))
    assert first.weight == 1.0
    # Ids a redone batch repeats, and nothing else does.
    assert first.id == record_id("label", "u1", G0, "churn")
    assert len({e.id for e in learner.examples}) == len(learner.examples)
    (spent,) = value
    assert (spent.snapshot_ms, spent.label_ms) == (G0, G0 + 30 * DAY)
    assert (spent.label, spent.orders) == (25.0, 1.0)
    assert (spent.predicted, spent.baseline) == (s0.value_p, s0.naive_value)
    # In event-time order of the horizons, the order the models learn in.
    assert [e.label_ms for e in learner.examples] == sorted(e.label_ms for e in learner.examples)
