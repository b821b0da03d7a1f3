"""The pipeline end to end on memory adapters: what a run leaves in the store.

- Labels: a hand-built stream of three users on two partitions (and a "clock" user on each
  partition that moves its watermark); every churn and value label the models learn, and
  every snapshot still pending at the end, is checked against what the rules make of the
  timeline (``_expected``), worked out from the events alone.
- Batch boundaries: the same partitioned input cut into different batches (and with the due
  work throttled) leaves the same facts in the store: features, snapshots and their labels,
  positions, due queues, watermarks (``tests/statecheck.py``).
"""

from __future__ import annotations

import random
import zlib
from typing import Any

import pytest

from streamscore.adapters.memory import ListSink
from streamscore.config import load_settings
from streamscore.core.population import key_hash
from streamscore.core.records import TOPIC_EVENTS
from streamscore.core.timeutil import DAY_MS
from streamscore.core.trainer import Trainer
from streamscore.core.values import LabelKind, TrainingExample
from streamscore.ports import SourceRecord
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event
from tests.statecheck import (
    StoreView,
    assert_same_state,
    memory_pipeline,
    run_to_the_end,
    sink_outputs,
    store_view,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR, MINUTE = 3_600_000, 60_000
PARTITIONS = 2


# -- labels, by hand --------------------------------------------------------------------------


def _event(user: str, n: int, kind: str, ts: int, amount: float | None = None) -> bytes:
    event: dict[str, Any] = {"event_id": f"{user}-{n}", "user_id": user, "type": kind, "ts": ts}
    if amount is not None:
        event["amount"] = amount
    return encode_event(event)


TIMELINE: list[tuple[int, str, str, int, float | None]] = [
    (0, "stay", "session_start", T0 + HOUR, None),
    (0, "stay", "purchase", T0 + 2 * DAY_MS + HOUR, 40.0),
    (0, "stay", "purchase", T0 + 14 * DAY_MS + HOUR, 10.0),
    (0, "stay", "page_view", T0 + 26 * DAY_MS + HOUR, None),
    (0, "stay", "purchase", T0 + 37 * DAY_MS + HOUR, 5.0),
    (0, "gone", "session_start", T0 + 2 * HOUR, None),
    (0, "gone", "page_view", T0 + 2 * HOUR + 10 * MINUTE, None),
    (1, "buyer", "purchase", T0 + 3 * HOUR, 100.0),
    (1, "buyer", "purchase", T0 + 3 * HOUR + 20 * MINUTE, 25.0),
    (1, "buyer", "purchase", T0 + 10 * DAY_MS + 3 * HOUR, 60.0),
    (1, "buyer", "refund", T0 + 22 * DAY_MS + 3 * HOUR, 60.0),
]
for _k in range(40):  # a page view a day per partition, up to day 39 12:00
    TIMELINE += [(p, f"clock{p}", "page_view", T0 + _k * DAY_MS + 12 * HOUR, None) for p in (0, 1)]
TIMELINE.sort(key=lambda e: e[3])
# The watermarks end at day 39 11:55 (the clocks' last event minus 5 min of lateness).
END = T0 + 39 * DAY_MS + 12 * HOUR - 5 * MINUTE - 1
PERIOD, CHURN_H, VALUE_H = 7 * DAY_MS, 14 * DAY_MS, 30 * DAY_MS  # the defaults
USERS = ("stay", "gone", "buyer")


def _labelled_stream() -> list[SourceRecord]:
    """``stay`` and ``gone`` on partition 0, ``buyer`` on 1, clocks on both."""
    offsets = [0] * PARTITIONS
    out = []
    for n, (p, user, kind, ts, amount) in enumerate(TIMELINE):
        out.append(SourceRecord(TOPIC_EVENTS, p, offsets[p], _event(user, n, kind, ts, amount)))
        offsets[p] += 1
    return out


def _expected(user: str) -> dict[int, dict[str, Any]]:
    """Each grid time of ``user`` up to the end, with what its snapshot must say, worked out
    from the timeline by the rules (DESIGN.md §4): one snapshot per period on the user's grid
    (a phase set by a hash of the id), taken for sure while the user has been silent for at
    most the churn horizon (sampled beyond, weighted by the inverse rate); churned when
    nothing happens in (t, t + 14 d]; spend and orders in (t, t + 30 d]."""
    times = [ts for _, u, _, ts, _ in TIMELINE if u == user]
    buys = [(ts, a or 0.0) for _, u, kind, ts, a in TIMELINE if u == user and kind == "purchase"]
    phase = key_hash(user) % PERIOD
    g = times[0] - (times[0] - phase) % PERIOD + PERIOD
    out: dict[int, dict[str, Any]] = {}
    while g <= END:
        silence = g - max(t for t in times if t < g)
        out[g] = {
            "sure": silence <= CHURN_H,
            "weight": max(1.0, silence / CHURN_H),
            "churned": not any(g < t <= g + CHURN_H for t in times),
            "spend": sum(a for t, a in buys if g < t <= g + VALUE_H),
            "orders": sum(1 for t, _ in buys if g < t <= g + VALUE_H),
            "returned_by_end": any(g < t <= min(g + CHURN_H, END) for t in times),
        }
        g += PERIOD
    return out


@pytest.mark.parametrize("batch", [1, 7, 10_000])
def test_the_pipeline_learns_exactly_these_labels(batch: int) -> None:
    settings = load_settings(metrics_port=0)
    pipeline, store, _ = memory_pipeline(settings, _labelled_stream(), batch=batch)
    scorer = pipeline.scorer
    scorer.outcomes = []
    trainer = scorer.lineage  # the trainer the in-memory topic is learnt by
    assert isinstance(trainer, Trainer)
    examples: list[TrainingExample] = []
    learn = trainer.learn

    def spy(example: TrainingExample) -> None:
        examples.append(example)
        learn(example)

    trainer.learn = spy  # type: ignore[method-assign]
    run_to_the_end(pipeline, store, PARTITIONS)

    churn = {(o.user_id, o.t_ms): o.churned for o in scorer.outcomes}
    view = store_view(store, USERS, range(PARTITIONS))
    for user in USERS:
        grid = _expected(user)
        pending = {s.t_ms: s for s in view.states[user].snapshots}
        taken = {t for (u, t) in churn if u == user} | pending.keys()
        assert taken <= grid.keys(), user  # only on the user's grid
        assert {t for t, e in grid.items() if e["sure"]} <= taken, user  # no sure one lost
        for t in taken:
            want = grid[t]
            if t + CHURN_H <= END:
                assert churn[(user, t)] is want["churned"], (user, t)
            if t + VALUE_H <= END:
                (value,) = [e for e in examples if e.snapshot_ms == t and e.kind is LabelKind.VALUE]
                assert value.label == pytest.approx(want["spend"]), (user, t)
                assert value.orders == want["orders"], (user, t)
                assert value.weight == pytest.approx(want["weight"], rel=1e-6), (user, t)
            snap = pending.get(t)
            if snap is not None:  # still pending at the end: its labels so far
                assert snap.weight == pytest.approx(want["weight"], rel=1e-6), (user, t)
                assert snap.churn_learnt is (t + CHURN_H <= END)
                assert not snap.value_learnt
                assert snap.returned is want["returned_by_end"], (user, t)
    # The churner is churned at every snapshot, the clocks at none.
    assert all(churned for (u, _), churned in churn.items() if u == "gone")
    assert not any(churned for (u, _), churned in churn.items() if u.startswith("clock"))
    # A user silent for longer than the churn horizon is sampled, not snapshotted every time.
    assert {t for (u, t) in churn if u == "gone"} < _expected("gone").keys()
    assert view.watermarks == {0: END, 1: END}


# -- batch boundaries -----------------------------------------------------------------------------


def _partitioned_shop(partitions: int = 4) -> list[list[SourceRecord]]:
    """A simulated shop, each user on one partition (by a hash of the id), per partition."""
    out: list[list[SourceRecord]] = [[] for _ in range(partitions)]
    for e in ShopSimulator(SimulationConfig(users=150, days=60, seed=5)).events():
        assert isinstance(e, dict)
        p = zlib.crc32(str(e["user_id"]).encode()) % partitions
        out[p].append(SourceRecord(TOPIC_EVENTS, p, len(out[p]), encode_event(e)))
    return out


def _interleaved(parts: list[list[SourceRecord]], seed: int) -> list[SourceRecord]:
    """The partitions' records merged in random runs, as a consumer's fetches come."""
    rng = random.Random(seed)
    pos = [0] * len(parts)
    out: list[SourceRecord] = []
    while any(pos[p] < len(parts[p]) for p in range(len(parts))):
        p = rng.choice([q for q in range(len(parts)) if pos[q] < len(parts[q])])
        n = rng.randint(1, 300)
        out += parts[p][pos[p] : pos[p] + n]
        pos[p] += n
    return out


def _run(records: list[SourceRecord], **kw: Any) -> tuple[StoreView, ListSink]:
    settings = load_settings(metrics_port=0)
    pipeline, store, sink = memory_pipeline(settings, records, **kw)
    run_to_the_end(pipeline, store, 4)
    users = set(store.states)
    return store_view(store, users, range(4)), sink


def test_saved_state_does_not_depend_on_batch_boundaries() -> None:
    parts = _partitioned_shop()
    want, _ = _run(_interleaved(parts, seed=1), batch=500)
    got, sink = _run(_interleaved(parts, seed=2), batch=137, due_limit=40, due_per_record=0.05)
    assert len(got.states) == 150
    assert sum(len(s.snapshots) for s in got.states.values()) > 150
    assert_same_state(got, want, **sink_outputs(sink))
