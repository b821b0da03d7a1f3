"""``late_events=apply``: late events reach the features, never the past (issue 10, item 3).

- By hand: an applied late event updates counts, spend and (only when newer) recency, leaves
  learnt labels as they were learnt, takes in pending ones, takes no snapshot and rescores
  no silence at or before the watermark, and is applied once under redelivery.
- Property: whatever the cut into batches, the same input (far-ahead clocks, late events,
  producer retries) leaves the same watermarks, user states, learnt labels and silence
  scores, with short horizons so that late events meet learnt and pending labels.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamscore.adapters.memory import ListSink, MemoryStateStore
from streamscore.config import Settings, load_settings
from streamscore.core.events import Event, EventType
from streamscore.core.features import UserFeatures
from streamscore.core.records import TOPIC_DLQ, TOPIC_EVENTS, TOPIC_SCORES
from streamscore.core.state import UserState
from streamscore.core.timeutil import iso
from streamscore.core.values import TrainingExample
from streamscore.guards import DeadLetterGuard
from streamscore.ports import SourceRecord
from streamscore.runtime import BatchStats
from tests.statecheck import memory_pipeline, state_diffs
from tests.unit.test_late_events import (
    DAY,
    HOUR,
    NOW,
    T0,
    _records,
    _shop,
    _states,
    _ts,
    _unruly_stream,
)

SHORT = {"metrics_port": 0, "churn_horizon_days": 2.0, "value_horizon_days": 2.0}


class _Run:
    """One pipeline run over partition 0: what it left and what it sent."""

    def __init__(self, values: list[bytes], settings: Settings, batch: int, **options: Any) -> None:
        pipeline, self.store, sink = memory_pipeline(
            settings, _records(values), batch=batch, clock=lambda: NOW, **options
        )
        self.sink: ListSink = sink
        self.learnt: dict[str, tuple[float, int]] = {}  # label id -> (label, snapshot time)
        learner = pipeline.scorer.learner
        learn = learner.learn

        def recording(example: TrainingExample) -> None:
            assert example.id not in self.learnt, f"{example.id} learnt twice"
            self.learnt[example.id] = (example.label, example.snapshot_ms)
            learn(example)

        learner.learn = recording  # type: ignore[method-assign]
        self.stats = BatchStats()
        self.counters = pipeline.scorer.counters
        pipeline.run_until_exhausted(on_batch=self._add)

    def _add(self, stats: BatchStats) -> None:
        self.stats.late_events += stats.late_events
        self.stats.late_applied += stats.late_applied

    def states(self) -> dict[str, UserState]:
        return {u: UserState.from_bytes(u, raw) for u, raw in self.store.states.items()}

    def scores(self, trigger: str) -> list[dict[str, Any]]:
        return [r for r in self.sink.records.get(TOPIC_SCORES, []) if r["trigger"] == trigger]


def _event(i: int, ts: int, kind: str = "page_view", user: str = "u", **more: Any) -> bytes:
    return orjson.dumps({"event_id": f"e{i}", "user_id": user, "type": kind, "ts": ts, **more})


# -- features ---------------------------------------------------------------------------------


def _features(times: list[tuple[int, bool]], late: bool = False) -> UserFeatures:
    f = UserFeatures()
    for i, (ts, buy) in enumerate(times):
        kind = EventType.PURCHASE if buy else EventType.PAGE_VIEW
        e = Event(event_id=f"e{i}", user_id="u", type=kind, ts=ts, amount=10.0 if buy else None)
        (f.apply_late if late and i == len(times) - 1 else f.apply)(e, 300_000)
    return f


def test_a_late_first_purchase_is_exact_and_one_among_settled_ones_keeps_the_known_spread() -> None:
    days = [(T0 + d * DAY, True) for d in (10, 12, 20, 21)]
    exact = _features([(T0, True), *days])
    first = _features([*days, (T0, True)], late=True)
    assert first.purchase_gap_stats() == exact.purchase_gap_stats()
    assert first.purchase_occasions == exact.purchase_occasions == 5
    assert first.visits == exact.visits == 5
    middle = _features([*days, (T0 + 16 * DAY, True)], late=True)
    mean, std = middle.purchase_gap_stats()
    assert mean == 11 / 4  # the span over the gaps, exactly
    known = _features(days).purchase_gap_stats()[1]
    assert std > 0 and std != known  # the known gaps' spread, around the new mean
    assert middle.purchase_occasions == middle.visits == 5
    assert middle.last_purchase_ms == T0 + 21 * DAY  # recency and the latest purchase stay
    # A second click of a settled order within 30 minutes is no new order.
    again = _features([*days, (T0 + 10 * DAY + 60_000, True)], late=True)
    assert again.purchase_occasions == again.visits == 4


# -- the scorer, by hand ----------------------------------------------------------------------


def test_a_late_event_updates_features_not_learnt_labels_nor_the_past() -> None:
    """User a buys on day 0 and goes quiet; user b keeps the watermark going to day 6. Then
    a's purchase of day 1 arrives (five days late, twice: a producer's retry), and a page
    view of day 5. Snapshots are daily, both horizons two days."""
    values = [_event(0, T0, "purchase", user="a", amount=50.0)]
    values += [_event(i, T0 + i * HOUR, user="b") for i in range(1, 6 * 24)]
    day1 = _event(900, T0 + DAY, "purchase", user="a", amount=20.0)
    values += [day1, day1, _event(901, T0 + 5 * DAY, user="a")]
    dead = _Run(values, load_settings(**SHORT), batch=50)
    run = _Run(values, load_settings(**SHORT, late_events="apply"), batch=50)
    # Dead-lettered, the first copy is never applied, so its retry is a dead letter too.
    assert [r["error_type"] for r in dead.sink.records[TOPIC_DLQ]] == ["late_event"] * 3
    assert TOPIC_DLQ not in run.sink.records
    assert (run.stats.late_events, run.stats.late_applied) == (2, 2)
    assert run.counters.duplicates == dead.counters.duplicates + 1
    a, before = run.states()["a"], dead.states()["a"]
    f = a.features
    assert (f.purchases, f.spend, f.events, f.visits) == (2, 70.0, 3, 3)
    assert f.last_seen_ms == T0 + 5 * DAY and f.last_purchase_ms == T0 + DAY
    # The label of day 0's snapshot was learnt "churned" on day 2: it stays so, though the
    # day-1 purchase falls in its horizon. Every label is learnt once, with the same value.
    assert run.learnt == dead.learnt
    assert 1.0 in {label for label, t in run.learnt.values() if t < T0 + DAY}
    # A pending label takes the day-5 page view in, as any event inside its horizon.
    assert [s.t_ms for s in a.snapshots] == [s.t_ms for s in before.snapshots]
    assert [s.returned for s in a.snapshots] == [s.t_ms < T0 + 5 * DAY for s in a.snapshots]
    assert not any(s.returned for s in before.snapshots)
    # No silence at or before the watermark is rescored again: a's next point is two days
    # after day 5 (the churn horizon), beyond the watermark.
    assert run.scores("silence") == dead.scores("silence")
    watermark = run.store.watermarks({0})[0]
    assert a.rescore_step == 0 and f.last_seen_ms + 2 * DAY > watermark
    assert a.next_snapshot_ms == before.next_snapshot_ms > watermark
    # The user is rescored, as of the watermark the late events were behind.
    last = [r for r in run.scores("event") if r["user_id"] == "a"][-1]
    assert last["as_of"] == iso(watermark)


# -- property: batch boundaries ----------------------------------------------------------------


def _late_heavy_stream(rng: random.Random, n: int) -> list[bytes]:
    """Few users, days apart, so late events reach learnt and pending labels."""
    out, t = [], T0
    for i in range(n):
        t += rng.choice([60_000, HOUR, 6 * HOUR, DAY])
        ts = t - rng.choice([0, 0, 0, HOUR, DAY, 3 * DAY]) if rng.random() < 0.4 else t
        kind = rng.choice(["page_view", "purchase"])
        extra = {"amount": float(rng.randrange(1, 99))} if kind == "purchase" else {}
        out.append(_event(i, ts, kind, user=f"u{rng.randrange(4)}", **extra))
        if rng.random() < 0.05:
            out.append(out[rng.randrange(len(out))])  # a producer's retry
    return out


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        _unruly_stream(),
        st.builds(_late_heavy_stream, st.randoms(use_true_random=False), st.integers(5, 120)),
    ),
    st.integers(2, 30),
    st.sampled_from([0, 3600]),
)
def test_applied_late_events_do_not_depend_on_batch_boundaries(
    values: list[bytes], batch: int, max_lead_s: int
) -> None:
    """With late events applied: one batch, ``batch`` records a batch and one record a batch
    leave the same watermarks, states, learnt labels and silence scores, and every record
    is applied once (late or not) or recognised as a duplicate."""
    s = load_settings(**SHORT, late_events="apply", watermark_max_lead_seconds=max_lead_s)
    want = _Run(values, s, batch=10_000)
    for size in (batch, 1):
        got = _Run(values, s, batch=size)
        assert got.store.watermarks({0}) == want.store.watermarks({0})
        g, w = got.states(), want.states()
        assert g.keys() == w.keys()
        for uid in w:
            assert state_diffs(g[uid], w[uid]) == [], (size, uid)
        assert got.learnt == want.learnt
        assert {r["id"]: r["as_of"] for r in got.scores("silence")} == {
            r["id"]: r["as_of"] for r in want.scores("silence")
        }
        assert TOPIC_DLQ not in got.sink.records
        assert got.stats.late_applied == want.stats.late_applied == got.stats.late_events
        applied = sum(st.features.events for st in g.values())
        assert applied + got.counters.duplicates == len(values)


# -- backfills ---------------------------------------------------------------------------------

# What a late event changes exactly as an on-time one would: every count, sum, first and last
# time, and the decayed aggregates. The occasions and the spread of purchase gaps are exact
# only within the detail a state keeps (``UserFeatures.apply_late``).
COMMUTING = (
    *("events", "sessions", "page_views", "carts", "cart_removals", "purchases", "refunds"),
    *("tickets", "first_seen_ms", "last_seen_ms", "signup_ms", "first_session_ms"),
    *("last_session_ms", "first_purchase_ms", "last_purchase_ms", "decay_ref_ms"),
    "last_browse_ms",
)


def _history_then_live() -> tuple[list[bytes], list[bytes]]:
    """A shop's first 20 days sent live, then the same users' 20 days before (a backfill)."""
    live, history = _shop(50, 20, seed=1), []
    for raw in _shop(50, 20, seed=2):
        e = orjson.loads(raw)
        history.append(orjson.dumps({**e, "ts": _ts(raw) - 20 * DAY}))
    return live, history


def test_a_backfill_applied_to_a_running_scorer_has_the_features_of_history_sent_in_order() -> None:
    live, history = _history_then_live()
    s = load_settings(metrics_port=0, late_events="apply")
    guard = DeadLetterGuard(s.dlq_max_ratio, s.dlq_window)  # raises on a "wrong topic"
    applied = _Run(live + history, s, 500, dlq_guard=guard)
    assert applied.stats.late_applied == applied.stats.late_events == len(history)
    assert TOPIC_DLQ not in applied.sink.records
    ordered = sorted(history + live, key=_ts)
    reference = _Run(ordered, load_settings(metrics_port=0), 500).states()
    got = applied.states()
    assert got.keys() == reference.keys()
    for uid, want in reference.items():
        f, w = got[uid].features, want.features
        assert {k: getattr(f, k) for k in COMMUTING} == {k: getattr(w, k) for k in COMMUTING}
        assert f.spend == pytest.approx(w.spend, rel=1e-9) and f.refunded == pytest.approx(
            w.refunded, rel=1e-9
        )
        decayed = zip(
            f.decayed_events + f.decayed_spend, w.decayed_events + w.decayed_spend, strict=True
        )
        for a, b in decayed:
            assert a == pytest.approx(b, rel=1e-9, abs=1e-9), uid
        assert f.purchase_gap_stats()[0] == pytest.approx(w.purchase_gap_stats()[0], rel=1e-9)


def test_a_backfill_redelivered_after_a_crash_is_applied_once() -> None:
    """The process saved a batch of the backfill and died before committing it: the batch
    is read again. Its late events are duplicates (not applied again, not counted late
    again), and the whole state is that of an uninterrupted run."""
    live, history = _history_then_live()
    values = live + history
    s = load_settings(metrics_port=0, late_events="apply")
    batch = 400
    crash = len(live) + 2 * batch  # batches up to here saved, the last one not committed
    store = MemoryStateStore()
    first, _, _ = memory_pipeline(
        s, _records(values[:crash]), batch=batch, store=store, clock=lambda: NOW
    )
    first.run_until_exhausted()
    again = [SourceRecord(TOPIC_EVENTS, 0, i, values[i]) for i in range(crash - batch, len(values))]
    second, _, _ = memory_pipeline(s, again, batch=batch, store=store, clock=lambda: NOW)
    late = []
    second.run_until_exhausted(on_batch=lambda stats: late.append(stats.late_applied))
    assert second.scorer.counters.duplicates >= batch
    assert sum(late) == len(values) - crash  # the redelivered batch is not applied again
    want = _Run(values, s, batch)
    assert store.watermarks({0}) == want.store.watermarks({0})
    got, reference = _states(store), want.states()
    assert got.keys() == reference.keys()
    for uid in reference:
        assert state_diffs(got[uid], reference[uid]) == [], uid
