"""The pipeline end to end on memory adapters: what a run leaves in the store.

- Labels: a hand-built stream of three users on two partitions (and a "clock" user on each
  partition that moves its watermark); every churn and value label the models learn, and
  every snapshot still pending at the end, is written out by hand below, with its reason.
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
from streamscore.core.records import TOPIC_EVENTS
from streamscore.core.timeutil import DAY_MS
from streamscore.core.trainer import Trainer
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


def _labelled_stream() -> list[SourceRecord]:
    """Events in time order; ``stay`` and ``gone`` on partition 0, ``buyer`` on 1."""
    d = DAY_MS
    timeline: list[tuple[int, str, str, int, float | None]] = [
        (0, "stay", "session_start", T0 + HOUR, None),
        (0, "stay", "purchase", T0 + 2 * d + HOUR, 40.0),
        (0, "stay", "purchase", T0 + 25 * d + HOUR, 10.0),
        (0, "gone", "session_start", T0 + 2 * HOUR, None),
        (0, "gone", "page_view", T0 + 2 * HOUR + 10 * MINUTE, None),  # inside the grace period
        (1, "buyer", "purchase", T0 + 3 * HOUR, 100.0),
        (1, "buyer", "purchase", T0 + 3 * HOUR + 20 * MINUTE, 25.0),
        (1, "buyer", "purchase", T0 + 10 * d + 3 * HOUR, 60.0),
    ]
    for k in range(40):  # a page view a day per partition, up to day 39 12:00
        timeline += [(p, f"clock{p}", "page_view", T0 + k * d + 12 * HOUR, None) for p in (0, 1)]
    timeline.sort(key=lambda e: e[3])
    offsets = [0] * PARTITIONS
    out = []
    for n, (p, user, kind, ts, amount) in enumerate(timeline):
        out.append(SourceRecord(TOPIC_EVENTS, p, offsets[p], _event(user, n, kind, ts, amount)))
        offsets[p] += 1
    return out


def _at(days: float, hours: float = 0, minutes: float = 0) -> int:
    return T0 + round(days * DAY_MS + hours * HOUR + minutes * MINUTE)


# Defaults: churn horizon 14 d, value horizon 30 d, a snapshot at most every 7 d, activity
# counts 30 min after a snapshot, silent users rescored after 3, 7, 14, 21, 30, 45 ... days.
# The watermarks end at day 39 11:55 (the clocks' last event minus 5 min of lateness).
#
# stay: snapshots at its first event (0d1h) and at silence points 7/14/21 days after its
#   day-2 purchase (9d1h, 16d1h, 23d1h), then 7 and 14 days after its day-25 purchase
#   (32d1h, 39d1h). Day 2 and day 25 count as returns for the snapshots before them within
#   14 days; 9d1h saw nothing until day 25 (16 days): churned.
# gone: its page view 10 minutes in is inside the grace period: churned at every snapshot
#   (0d2h and 7/14/21/30 days after 0d2h10m).
# buyer: its purchase 20 minutes in is spend but not a return. Silent after 0d3h20m, it is
#   snapshotted at the 7-day point (7d3h20m); day 10 is a return for both snapshots so far.
#   Then silence again: 7/14/21 days after day 10.
CHURN_LABELS = [
    ("stay", _at(0, 1), False),
    ("stay", _at(9, 1), True),
    ("stay", _at(16, 1), False),
    ("stay", _at(23, 1), False),
    ("gone", _at(0, 2), True),
    ("gone", _at(7, 2, 10), True),
    ("gone", _at(14, 2, 10), True),
    ("gone", _at(21, 2, 10), True),
    ("buyer", _at(0, 3), False),
    ("buyer", _at(7, 3, 20), False),
    ("buyer", _at(17, 3), True),
    ("buyer", _at(24, 3), True),
]
# Spend after t up to t + 30 d, learnt once the watermark passes t + 30 d.
VALUE_LABELS = [
    (_at(0, 1), 50.0),  # stay: 40 + 10
    (_at(9, 1), 10.0),  # stay: the day-25 purchase
    (_at(0, 2), 0.0),  # gone
    (_at(7, 2, 10), 0.0),  # gone
    (_at(0, 3), 85.0),  # buyer: 25 + 60 (not the purchase the snapshot was taken at)
    (_at(7, 3, 20), 60.0),  # buyer: day 10
]
# What is still pending at the end: (t, returned, spend so far, churn learnt).
PENDING = {
    "stay": [
        (_at(16, 1), True, 10.0, True),
        (_at(23, 1), True, 10.0, True),
        (_at(32, 1), False, 0.0, False),
        (_at(39, 1), False, 0.0, False),
    ],
    "gone": [
        (_at(14, 2, 10), False, 0.0, True),
        (_at(21, 2, 10), False, 0.0, True),
        (_at(30, 2, 10), False, 0.0, False),
    ],
    "buyer": [
        (_at(17, 3), False, 0.0, True),
        (_at(24, 3), False, 0.0, True),
        (_at(31, 3), False, 0.0, False),
    ],
}


@pytest.mark.parametrize("batch", [1, 7, 10_000])
def test_the_pipeline_learns_exactly_these_labels(batch: int) -> None:
    settings = load_settings(metrics_port=0)
    pipeline, store, _ = memory_pipeline(settings, _labelled_stream(), batch=batch)
    scorer = pipeline.scorer
    scorer.outcomes = []
    value_labels: list[tuple[int, float]] = []
    horizon = scorer.config.value_horizon_ms
    trainer = scorer.learner
    assert isinstance(trainer, Trainer)
    learn_value = trainer.drift.value_label

    def spy(predicted: float, actual: float, t_ms: int) -> None:
        value_labels.append((t_ms - horizon, actual))
        learn_value(predicted, actual, t_ms)

    trainer.drift.value_label = spy  # type: ignore[method-assign]
    run_to_the_end(pipeline, store, PARTITIONS)

    churn = [(o.user_id, o.t_ms, o.churned) for o in scorer.outcomes]
    labelled = [c for c in churn if not c[0].startswith("clock")]
    assert sorted(labelled, key=lambda c: (c[0], c[1])) == sorted(
        CHURN_LABELS, key=lambda c: (c[0], c[1])
    )
    # The clocks come back every day: never churned, never spent anything.
    assert all(not c[2] for c in churn if c[0].startswith("clock"))
    clock_times = {c[1] for c in churn if c[0].startswith("clock")}
    values = {t: spend for t, spend in value_labels if t not in clock_times}
    assert values == pytest.approx(dict(VALUE_LABELS))
    assert len(value_labels) == len(values) + sum(
        1 for t, s in value_labels if t in clock_times and s == 0.0
    )

    view = store_view(store, PENDING, range(PARTITIONS))
    for user, want in PENDING.items():
        got = [
            (s.t_ms, s.returned, round(s.spend, 2), s.churn_learnt)
            for s in view.states[user].snapshots
        ]
        assert got == want, user
        assert not any(s.value_learnt for s in view.states[user].snapshots)
    assert view.watermarks == {0: _at(39, 12) - 5 * MINUTE - 1, 1: _at(39, 12) - 5 * MINUTE - 1}


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
