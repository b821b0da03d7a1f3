"""Silent-user work per batch tied to the batch's size, and what delaying it changes."""

from __future__ import annotations

from streamscore.adapters.memory import ListSink, ListSource, MemoryStateStore
from streamscore.config import Settings
from streamscore.core.records import TOPIC_EVENTS
from streamscore.core.trainer import Trainer
from streamscore.ports import SourceRecord
from streamscore.runtime import DUE_FLOOR_PER_PARTITION, Pipeline
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


def test_a_delayed_burst_of_due_users_resolves_the_same_labels() -> None:
    """Capped hard (a floor of 25 due users a batch), the backlog drains over later batches
    and, once drained, every label the uncapped run resolved is resolved, no more, no less.
    ``run_until_exhausted`` drains it after the input ends."""
    events = list(ShopSimulator(SimulationConfig(users=150, days=50, seed=5)).events())
    # One last event a month later: the watermark jumps, and every user falls due at once.
    last = max(e["ts"] for e in events if isinstance(e, dict))
    jump = {"event_id": "jump", "user_id": "u-late", "type": "page_view", "ts": last + 30 * DAY}
    records = [
        SourceRecord(TOPIC_EVENTS, 0, i, encode_event(e)) for i, e in enumerate([*events, jump])
    ]
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
    assert capped <= DUE_FLOOR_PER_PARTITION
    assert reports[0] == reports[1]
    assert reports[0][0] > 0
