"""Idle partitions: their watermark follows the active ones, so silent users are rescored.

Two partitions. User "a" lives on partition 1, which goes quiet after the first batch; user
"b" keeps partition 0 busy, one event per simulated day. The wall clock moves 10 s per batch.
"""

from __future__ import annotations

import orjson

from streamscore.adapters.memory import ListSink, ListSource, MemoryStateStore
from streamscore.config import Settings
from streamscore.core.records import TOPIC_DLQ, TOPIC_SCORES
from streamscore.core.trainer import Trainer
from streamscore.runtime import Pipeline
from streamscore.wiring import in_process_scorer

SETTINGS = Settings()
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, event time
DAY = 86_400_000
WALL0 = T0 + 40 * DAY  # the wall clock, ahead of every event
STEP_MS = 10_000


def _event(user: str, n: int, ts: int, type_: str = "session_start") -> dict[str, object]:
    return {"event_id": f"{user}-{n}", "user_id": user, "type": type_, "ts": ts}


def _add(source: ListSource, partition: int, event: dict[str, object]) -> None:
    source.produce(partition, orjson.dumps(event))


def _run(
    idle_after_ms: int | None, days: int = 30, starved: frozenset[int] = frozenset()
) -> tuple[Pipeline, ListSink, ListSource]:
    """``starved`` partitions have records waiting that polls do not return, as when a busy
    fetch serves the other partitions first."""
    wall = [WALL0]
    source, sink = ListSource(partitions={0, 1}, endless=True), ListSink()
    pipeline = Pipeline(
        source,
        MemoryStateStore(),
        sink,
        in_process_scorer(SETTINGS.scoring())[0],
        limits=SETTINGS.event_limits(),
        clock=lambda: wall[0],
        idle_after_ms=idle_after_ms,
    )
    _add(source, 1, _event("a", 0, T0))
    _add(source, 1, {**_event("a", 1, T0 + 60_000, "purchase"), "amount": 40.0})
    _add(source, 0, _event("b", 0, T0))
    pipeline.run_once()
    source.hold(starved)
    for day in range(1, days + 1):
        wall[0] += STEP_MS
        _add(source, 0, _event("b", day, T0 + day * DAY))
        if starved:
            _add(source, 1, _event("a", 100 + day, T0 + day * DAY))  # waiting, never fetched
        pipeline.run_once()
    return pipeline, sink, source


def _silence_scores(sink: ListSink, user: str) -> list[dict[str, object]]:
    scores = sink.records.get(TOPIC_SCORES, [])
    return [s for s in scores if s["user_id"] == user and s["trigger"] == "silence"]


def test_an_idle_partition_follows_the_active_one_and_its_silent_users_are_rescored() -> None:
    pipeline, sink, _ = _run(idle_after_ms=60_000)
    assert pipeline.watermarks[1] == pipeline.watermarks[0] > T0 + 29 * DAY
    rescored = _silence_scores(sink, "a")
    assert len(rescored) >= 3, "user a went silent for 30 days: 3, 7, 14 and 21 days"
    waiting, _, _ = _run(idle_after_ms=None)
    learnt, before = pipeline.scorer.lineage, waiting.scorer.lineage
    assert isinstance(learnt, Trainer) and isinstance(before, Trainer)
    resolved = learnt.quality.churn.count - before.quality.churn.count
    # a's snapshots at day 0 (its events), 7 and 14 (silences, one per 7 days): their churn
    # labels fall due at days 14, 21 and 28, all behind the followed watermark (~day 30).
    assert resolved == 3


def test_without_idleness_a_quiet_partition_keeps_its_silent_users_waiting() -> None:
    pipeline, sink, _ = _run(idle_after_ms=None)
    assert pipeline.watermarks[1] < T0
    assert _silence_scores(sink, "a") == []
    assert _silence_scores(sink, "b") == []  # b is active: never silent


def test_a_partition_starved_by_the_fetch_is_not_idle() -> None:
    pipeline, sink, _ = _run(idle_after_ms=60_000, starved=frozenset({1}))
    assert pipeline.watermarks[1] < T0
    assert _silence_scores(sink, "a") == []


def test_a_partition_is_not_idle_before_the_timeout() -> None:
    # 30 batches of 10 s: 300 s of wall clock, under a 400 s timeout.
    pipeline, sink, _ = _run(idle_after_ms=400_000)
    assert pipeline.watermarks[1] < T0
    assert _silence_scores(sink, "a") == []


def test_after_idling_an_event_behind_the_followed_watermark_is_late_and_a_new_one_is_not() -> None:
    pipeline, sink, source = _run(idle_after_ms=60_000)
    followed = pipeline.watermarks[1]
    _add(source, 1, _event("a", 2, T0 + 2 * DAY))  # behind: those labels are final
    _add(source, 1, _event("a", 3, T0 + 31 * DAY))  # on time
    pipeline.run_once()
    late = [d for d in sink.records.get(TOPIC_DLQ, []) if d["error_type"] == "late_event"]
    assert len(late) == 1
    assert pipeline.watermarks[1] > followed  # its own events drive it again
    scores = sink.records[TOPIC_SCORES]
    assert any(s["user_id"] == "a" and s["trigger"] == "event" for s in scores[-3:])
