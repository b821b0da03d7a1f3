"""Backfills, late events and far-ahead clocks (issue 10, item 3).

- A backfill (a second simulator run, behind the watermark) is late, not invalid: it is
  counted apart and never trips the dead-letter limit.
- With ``watermark_max_lead_seconds`` set, one device with a wrong clock (a burst of records
  far ahead) does not make the events after it late; a real jump of the whole stream still
  moves the watermark.
- Property: whatever the cut into batches, the same input (outliers, late events and
  producer retries in it) leaves the same watermarks, dead letters and states.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamscore.adapters.memory import MemoryStateStore
from streamscore.config import Settings, load_settings
from streamscore.core.records import TOPIC_DLQ, TOPIC_EVENTS
from streamscore.core.state import UserState
from streamscore.core.timeutil import parse_rfc3339
from streamscore.core.watermark import Candidates, Verdict, WatermarkRule, admit
from streamscore.guards import DeadLetterGuard
from streamscore.ports import SourceRecord
from streamscore.runtime import BatchStats
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event
from tests.statecheck import memory_pipeline, state_diffs

T0 = 1_767_225_600_000  # 2026-01-01, where every simulator run starts
HOUR, DAY = 3_600_000, 86_400_000
NOW = T0 + 400 * DAY
RULE = WatermarkRule(lateness_ms=300_000, max_lead_ms=HOUR, agreeing=2)
CAPPED = {"metrics_port": 0, "watermark_max_lead_seconds": 3600}


def _shop(users: int, days: float, seed: int) -> list[bytes]:
    """A simulator run; its event ids carry the seed, as two real runs' would differ."""
    out = []
    for e in ShopSimulator(SimulationConfig(users, days, seed)).events():
        assert isinstance(e, dict)
        out.append(encode_event({**e, "event_id": f"{seed}-{e['event_id']}"}))
    return out


def _records(values: list[bytes]) -> list[SourceRecord]:
    return [SourceRecord(TOPIC_EVENTS, 0, i, v) for i, v in enumerate(values)]


def _run(
    values: list[bytes],
    settings: Settings,
    *,
    batch: int = 500,
    guard: DeadLetterGuard | None = None,
) -> tuple[MemoryStateStore, list[dict[str, Any]], BatchStats, Any]:
    """The pipeline over ``values`` (partition 0): its store, dead letters, summed batch
    stats and scorer."""
    pipeline, store, sink = memory_pipeline(
        settings, _records(values), batch=batch, clock=lambda: NOW, dlq_guard=guard
    )
    total = BatchStats()

    def add(stats: BatchStats) -> None:
        total.late_events += stats.late_events
        total.held_events += stats.held_events
        for kind, n in stats.dead_letters.items():
            total.dead_letters[kind] = total.dead_letters.get(kind, 0) + n

    pipeline.scorer.outcomes = []
    pipeline.run_until_exhausted(on_batch=add)
    return store, list(sink.records.get(TOPIC_DLQ, [])), total, pipeline.scorer


def _ts(raw: bytes) -> int:
    ts = orjson.loads(raw)["ts"]
    return ts if isinstance(ts, int) else parse_rfc3339(ts)


def _states(store: MemoryStateStore) -> dict[str, UserState]:
    return {u: UserState.from_bytes(u, raw) for u, raw in store.states.items()}


# -- the rule, by hand ------------------------------------------------------------------------


def test_one_clock_far_ahead_does_not_move_the_watermark_however_many_records_it_sends() -> None:
    ahead = Candidates()
    wm = RULE.watermark_of(T0)
    verdicts = [admit(RULE, wm, ahead, o, T0 + DAY, user="bad")[0] for o in range(1, 6)]
    assert verdicts == [Verdict.HELD] * 5
    verdict, after = admit(RULE, wm, ahead, 6, T0 + 60_000, user="good")
    assert (verdict, after) == (Verdict.ON_TIME, RULE.watermark_of(T0 + 60_000))
    assert not ahead  # forgotten for good
    assert admit(RULE, after, ahead, 7, T0 + DAY, user="good")[0] is Verdict.HELD


def test_two_users_far_ahead_in_a_row_move_it_to_the_earlier_of_them() -> None:
    ahead = Candidates()
    wm = RULE.watermark_of(T0)
    assert admit(RULE, wm, ahead, 1, T0 + 365 * DAY, user="bad") == (Verdict.HELD, wm)
    assert admit(RULE, wm, ahead, 2, T0 + 3 * HOUR, user="a") == (
        Verdict.AGREED,
        RULE.watermark_of(T0 + 3 * HOUR),
    )


def test_a_record_read_again_is_no_second_vote_even_after_a_restart() -> None:
    ahead = Candidates()
    wm = RULE.watermark_of(T0)
    admit(RULE, wm, ahead, 5, T0 + DAY, user="a")
    restored = Candidates.from_bytes(ahead.to_bytes())
    assert restored == ahead
    # The same record, read again after a crash, must not count as a second user's vote.
    assert admit(RULE, wm, restored, 5, T0 + DAY, user="b") == (Verdict.HELD, wm)
    assert admit(RULE, wm, restored, 6, T0 + DAY, user="b")[0] is Verdict.AGREED


# -- through the pipeline ---------------------------------------------------------------------


def test_a_backfill_behind_the_watermark_is_late_not_a_wrong_topic() -> None:
    live, backfill = _shop(60, 20, seed=1), _shop(60, 20, seed=2)  # both start 2026-01-01
    settings = load_settings(metrics_port=0)
    guard = DeadLetterGuard(settings.dlq_max_ratio, settings.dlq_window)
    _, dlq, stats, _ = _run(live + backfill, settings, guard=guard)  # does not raise
    assert {r["error_type"] for r in dlq} == {"late_event"}
    assert len(dlq) > 0.9 * len(backfill)
    assert stats.late_events == len(dlq)
    assert stats.dead_letters == {}, "late events are not invalid input"


def _with_bad_clock(values: list[bytes], at: int, burst: int) -> list[bytes]:
    """``values`` with ``burst`` records of one device a day ahead of the stream at ``at``."""
    ts = _ts(values[at - 1]) + DAY
    bad = [
        orjson.dumps({"event_id": f"skew{i}", "user_id": "skewed", "type": "page_view", "ts": ts})
        for i in range(burst)
    ]
    return values[:at] + bad + values[at:]


@pytest.mark.parametrize("burst", [1, 5])
def test_a_device_a_day_ahead_makes_no_good_event_late(
    burst: int, caplog: pytest.LogCaptureFixture
) -> None:
    shop = _shop(80, 5, seed=3)
    at = len(shop) // 2
    values = _with_bad_clock(shop, at=at, burst=burst)
    _, dlq, stats, _ = _run(values, load_settings(**CAPPED))
    assert dlq == []
    said = [m for r in caplog.records if "did not move the watermark" in (m := r.getMessage())]
    assert any("'skewed'" in line for line in said), said
    _, _, clean, _ = _run(shop, load_settings(**CAPPED))
    assert stats.held_events == clean.held_events + burst  # quiet nights hold a few too
    # The classic watermark (the default: every event moves it) turns what follows late.
    _, dlq, _, _ = _run(values, load_settings(metrics_port=0))
    assert len(dlq) > 0.2 * (len(values) - at)


def test_a_jump_of_the_whole_stream_still_moves_the_watermark() -> None:
    first, later = _shop(40, 2, seed=4), _shop(40, 2, seed=5)
    shift = 10 * DAY  # the stream resumes ten days later, after an outage
    moved = []
    for raw in later:
        e = orjson.loads(raw)
        moved.append(orjson.dumps({**e, "ts": _ts(raw) + shift, "event_id": f"L{e['event_id']}"}))
    classic, _, _, _ = _run(first + moved, load_settings(metrics_port=0))
    capped, dlq, stats, _ = _run(first + moved, load_settings(**CAPPED))
    assert capped.watermarks({0}) == classic.watermarks({0})
    assert dlq == [] and stats.held_events >= 1


# -- property: the loop ------------------------------------------------------------------------


@st.composite
def _unruly_stream(draw: st.DrawFn) -> list[bytes]:
    """A few users' events with outliers far ahead, bursts of them, and late events."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(5, 150))
    t, out = T0, []
    for i in range(n):
        t += rng.choice([0, 1000, 60_000, HOUR // 2, 2 * HOUR, DAY])
        ts = t - rng.randrange(200_000)
        roll = rng.random()
        if roll < 0.1:
            ts = t + rng.choice([2 * HOUR, DAY, 30 * DAY])  # a wrong clock, or a jump
        elif roll < 0.2:
            ts = t - rng.choice([HOUR, 3 * DAY])  # late
        kind = rng.choice(["page_view", "session_start", "purchase", "add_to_cart"])
        event: dict[str, Any] = {"event_id": f"e{i}", "user_id": f"u{rng.randrange(5)}"}
        event |= {"type": kind, "ts": ts}
        if kind == "purchase":
            event["amount"] = float(rng.randrange(1, 300))
        out.append(orjson.dumps(event))
        if rng.random() < 0.05:
            out.append(out[rng.randrange(len(out))])  # a producer's retry
    return out


@settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(_unruly_stream(), st.integers(1, 40), st.sampled_from([0, 3600]))
def test_the_state_does_not_depend_on_batch_boundaries(
    values: list[bytes], batch: int, max_lead_s: int
) -> None:
    """The same watermarks, dead letters and user states (every fact of the input) as one
    batch, with the cap on or off; every record applied, a duplicate or late."""
    settings = load_settings(metrics_port=0, watermark_max_lead_seconds=max_lead_s)
    want, want_dlq, want_stats, _ = _run(values, settings, batch=10_000)
    got, got_dlq, got_stats, scorer = _run(values, settings, batch=batch)
    assert got.watermarks({0}) == want.watermarks({0})
    assert got_stats.held_events == want_stats.held_events
    assert sorted(_source(r) for r in got_dlq) == sorted(_source(r) for r in want_dlq)
    g, w = _states(got), _states(want)
    assert g.keys() == w.keys()
    for uid in w:
        assert state_diffs(g[uid], w[uid]) == [], uid
    applied = sum(s.features.events for s in g.values())
    assert {r["error_type"] for r in got_dlq} <= {"late_event"}
    assert applied + len(got_dlq) + scorer.counters.duplicates == len(values)


def _source(letter: dict[str, Any]) -> int:
    return int(letter["source"]["offset"])
