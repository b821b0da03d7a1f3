"""One pipeline builder: every command gets the limits of its settings; only waiting differs."""

from __future__ import annotations

from streamscore.adapters.memory import ListSink, ListSource, MemoryStateStore
from streamscore.config import Settings
from streamscore.runtime import Pipeline
from streamscore.wiring import build_pipeline, in_process_scorer

SETTINGS = Settings(
    batch_max_records=33,
    due_users_per_batch=7,
    due_users_per_record=0.2,
    dlq_max_ratio=0.5,
    dlq_window=50,
    poll_timeout_ms=150,
    idle_partition_seconds=9.0,
    max_event_bytes=4096,
)


def _build(*, live: bool) -> Pipeline:
    scorer, _ = in_process_scorer(SETTINGS.scoring())
    return build_pipeline(
        SETTINGS, ListSource([]), MemoryStateStore(), ListSink(), scorer, live=live
    )


def test_finite_and_live_runs_share_every_limit() -> None:
    finite, live = _build(live=False), _build(live=True)
    for p in (finite, live):
        assert (p.batch_size, p.due_limit, p.due_per_record) == (33, 7, 0.2)
        assert p.dlq_guard is not None
        assert (p.dlq_guard.max_ratio, p.dlq_guard.window) == (0.5, 50)
        assert p.limits == SETTINGS.event_limits()
        assert p.limits.max_bytes == 4096
    assert "topic" in live.dlq_guard.advice and "file" in finite.dlq_guard.advice  # type: ignore[union-attr]


def test_only_a_live_run_waits_for_input_and_follows_idle_partitions() -> None:
    finite, live = _build(live=False), _build(live=True)
    assert (finite.poll_timeout_s, finite.idle_after_ms) == (0.0, None)
    assert (live.poll_timeout_s, live.idle_after_ms) == (0.15, 9000)
    assert (
        build_pipeline(
            Settings(idle_partition_seconds=0),
            ListSource([]),
            MemoryStateStore(),
            ListSink(),
            in_process_scorer(SETTINGS.scoring())[0],
            live=True,
        ).idle_after_ms
        is None
    )
