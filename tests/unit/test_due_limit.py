"""Silent-user work per batch tied to the batch's size, and what delaying it changes."""

from __future__ import annotations

import itertools

from streamscore.adapters.memory import ListSink, ListSource, MemoryStateStore
from streamscore.config import Settings
from streamscore.core.records import TOPIC_EVENTS
from streamscore.core.trainer import Trainer
from streamscore.ports import SourceRecord
from streamscore.runtime import DUE_FLOOR_PER_PARTITION, BatchStats, Pipeline
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event
from streamscore.wiring import in_process_scorer

SETTINGS = Settings()
NOW = 2_000_000_000_000
DAY = 86_400_000


def _pipeline(
    records: list[SourceRecord], due_limit: int, due_per_record: float | None
) -> Pipeline:
    return Pipeline(
        ListSource(records),
        MemoryStateStore(),
        ListSink(),
        in_process_scorer(SETTINGS.scoring())[0],
        limits=SETTINGS.event_limits(),
        batch_size=100,
        poll_timeout_s=0.0,
        clock=lambda: NOW,
        due_limit=due_limit,
        due_per_record=due_per_record,
    )


def test_the_limit_grows_with_the_batch_between_a_floor_and_the_hard_cap() -> None:
    p = _pipeline([], due_limit=500, due_per_record=0.5)
    assert p._due_limit(140, 4) == DUE_FLOOR_PER_PARTITION  # 17 by the ratio: the floor
    assert p._due_limit(0, 4) == DUE_FLOOR_PER_PARTITION  # an idle input still drains
    assert p._due_limit(2000, 4) == 250
    assert p._due_limit(10_000, 4) == 500
    assert _pipeline([], due_limit=500, due_per_record=None)._due_limit(140, 4) == 500


def _burst_records() -> list[SourceRecord]:
    events = list(ShopSimulator(SimulationConfig(users=150, days=50, seed=5)).events())
    # A month later the watermark jumps, and every user falls due at once; a few more events
    # follow, which must wait for them.
    last = max(e["ts"] for e in events if isinstance(e, dict))
    after = [
        {"event_id": f"j{i}", "user_id": "u-late", "type": "page_view", "ts": last + 30 * DAY + i}
        for i in range(20)
    ]
    return [
        SourceRecord(TOPIC_EVENTS, 0, i, encode_event(e)) for i, e in enumerate([*events, *after])
    ]


def test_a_delayed_burst_of_due_users_resolves_the_same_labels() -> None:
    """Capped hard (a floor of 25 due users a batch), the users due within the allowed
    lateness drain over later batches, those further behind are caught up, and every label
    the uncapped run resolved is resolved, no more, no less. ``run_until_exhausted`` drains
    what is left after the input ends."""
    records = _burst_records()
    reports = []
    max_due = []
    for per_record in (None, 0.01):
        p = _pipeline(records, due_limit=10_000, due_per_record=per_record)
        due: list[int] = []
        p.run_until_exhausted(lambda stats: due.append(stats.due_users))  # noqa: B023
        max_due.append(max(due))
        trainer = p.scorer.lineage  # in one process, the trainer is the lineage scored with
        assert isinstance(trainer, Trainer)
        reports.append((trainer.quality.churn.count, trainer.quality.value.count))
        assert p.store.due(p.watermarks, 10_000) == {}, "users left due at the end"
    uncapped, capped = max_due
    assert uncapped > DUE_FLOOR_PER_PARTITION, "the data must have bursts for the cap to bite"
    # The share, and at most a batch's worth of users further behind than the lateness.
    assert capped <= DUE_FLOOR_PER_PARTITION + p.batch_size
    assert reports[0] == reports[1]
    assert reports[0][0] > 0


def test_users_left_behind_their_watermark_hold_the_input_back() -> None:
    """A user owed a snapshot or a label must not wait while the input runs on: a snapshot
    taken late is predicted by models that have learnt from its own horizon since. So after
    every batch, nobody is due further behind the watermark than the allowed lateness, or
    the batch says so and the next one reads a single record."""
    p = _pipeline(_burst_records(), due_limit=10_000, due_per_record=0.01)
    lateness = SETTINGS.scoring().allowed_lateness_ms
    seen: list[tuple[bool, bool, int]] = []

    def check(stats: BatchStats) -> None:
        behind = {q: wm - lateness for q, wm in p.watermarks.items() if wm > lateness}
        left = bool(p.store.due(behind, 1)) if behind else False
        seen.append((left, stats.due_behind, stats.records))

    p.run_until_exhausted(check)
    for (left, flag, _), (_, _, next_records) in itertools.pairwise(seen):
        assert flag or not left, "users left behind the watermark without holding the input"
        if flag:
            assert next_records <= 1
    assert any(flag for _, flag, _ in seen), "the burst must exceed a batch's catch-up"
