"""Historical and badly keyed input on the real broker and Redis (issue 10, items 2 and 3).

- A 35k-event backfill behind the watermark, sent to a running scorer whose input also
  holds a device a day ahead and records not keyed by their user_id: the service stays up,
  the backfill is counted as late (not invalid, so the dead-letter limit is not tripped), the
  far-ahead device makes no good event late and the log says so, the badly keyed records are
  key_mismatch dead letters, and the whole state is an uninterrupted run's.
- The same kind of backfill with ``late_events=apply``: applied, not dead-lettered, counted
  late and applied; the whole state is an uninterrupted run's with the same policy (the
  exactness reference), and every order-free feature is that of the history sent in time
  order (the meaning reference).
- Null and wrong keys with ``on_key_mismatch=rekey`` under ten SIGKILLs: every event is
  applied exactly once (re-keyed copies a crash sent twice included), and the whole state is
  an uninterrupted run's.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from devstack import GroupProgress, consume, free_port, produce
from streamscore.config import load_settings
from streamscore.core.timeutil import parse_rfc3339
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event
from tests.unit.test_late_apply import COMMUTING, _Run

from .conftest import SHARED
from .helpers import (
    ASSIGNED,
    assert_same_as_uninterrupted,
    env_for,
    joined,
    kill,
    scrape,
    start_scorer,
    stop,
    wait_for,
    wait_until_committed,
    wait_until_settled,
)

pytestmark = pytest.mark.integration
DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01, where the simulator starts


def _shop(users: int, days: float, seed: int) -> list[tuple[str, bytes]]:
    """A simulator run as (user, value); its event ids carry the seed, as two runs' would."""
    out = []
    for e in ShopSimulator(SimulationConfig(users=users, days=days, seed=seed)).events():
        assert isinstance(e, dict)
        out.append((str(e["user_id"]), encode_event({**e, "event_id": f"{seed}-{e['event_id']}"})))
    return out


def _ts(value: bytes) -> int:
    ts = orjson.loads(value)["ts"]
    return ts if isinstance(ts, int) else parse_rfc3339(ts)


def _total(port: int, metric: str) -> float:
    return sum(scrape(port, metric).values())


def test_a_backfill_a_clock_a_day_ahead_and_wrong_keys_on_a_running_scorer(
    names: dict[str, str], tmp_path: Path
) -> None:
    live = [(u.encode(), v) for u, v in _shop(100, 30, seed=31)]
    half = len(live) // 2
    ahead = _ts(live[half][1]) + DAY
    skewed = [
        (
            b"skewed",
            orjson.dumps(
                {"event_id": f"s{i}", "user_id": "skewed", "type": "page_view", "ts": ahead + i}
            ),
        )
        for i in range(5)
    ]
    wrong = [(b"not-" + k, v) for k, v in live[half + 10 : half + 13]] + [
        (None, live[half + 20][1])
    ]
    live = live[:half] + skewed + live[half:]
    backfill = [(u.encode(), v) for u, v in _shop(800, 25, seed=32)]  # starts 2026-01-01 too
    assert len(backfill) >= 20_000

    port = free_port()
    log = tmp_path / "scorer.log"
    env = env_for(names, metrics_port=port, watermark_max_lead_seconds=3600)
    group, topic = names["kafka_group_id"], names["input_topic"]
    proc = start_scorer(env, log)
    try:
        wait_for("the scorer to join", lambda: joined(log), 60, {log: proc})
        produce(SHARED, topic, live + wrong)
        wait_until_committed(group, topic, {log: proc})
        produce(SHARED, topic, backfill)
        wait_until_committed(group, topic, {log: proc})  # fails at once if the scorer exits
        expected_late = len(backfill)
        wait_for(
            "the last batch's counters",
            lambda: _total(port, "streamscore_late_events_total") >= expected_late,
            30,
            {log: proc},
        )
        late = _total(port, "streamscore_late_events_total")
        invalid = scrape(port, "streamscore_dead_letters_total")
        held = _total(port, "streamscore_watermark_held_events_total")
        wait_until_settled(load_settings(**names), {log: proc})
    finally:
        code = stop(proc)
    text = log.read_text()
    assert code == 0, text[-4000:]

    # The backfill is late, all of it, counted apart from the invalid records.
    letters = consume(SHARED, names["dlq_topic"])
    kinds: dict[str, list[dict[str, object]]] = {}
    for r in letters:
        kinds.setdefault(str(r["error_type"]), []).append(r)
    assert kinds.keys() == {"late_event", "key_mismatch"}, kinds.keys()
    assert len(kinds["late_event"]) == late == len(backfill)
    assert {str(orjson.loads(_raw(r))["event_id"]).split("-")[0] for r in kinds["late_event"]} == {
        "32"
    }, "a live event was late: the far-ahead device moved the watermark"
    assert invalid == {'{error_type="key_mismatch"}': 4.0}, invalid
    assert "not keyed by" not in text and "were invalid" not in text
    # Far-ahead records were held (the device's five, and the first of the day after each
    # quiet night), and the log says what they did (at most a line a minute per partition).
    assert held >= 5
    assert "more than watermark_max_lead_seconds (3600s)" in text
    # The badly keyed records say which key they had.
    errors = sorted(str(r["error"]) for r in kinds["key_mismatch"])
    assert sum("record key is null" in e for e in errors) == 1
    assert sum("record key is b'not-" in e for e in errors) == 3

    got = assert_same_as_uninterrupted(names, semantics={"watermark_max_lead_seconds": 3600})
    assert sum(s.features.events for s in got.states.values()) == len(live)


def test_a_backfill_applied_to_a_running_scorer(names: dict[str, str], tmp_path: Path) -> None:
    live = [(u.encode(), v) for u, v in _shop(120, 20, seed=41)]
    history = []  # the same users' 20 days before the live stream
    for u, v in _shop(120, 20, seed=42):
        history.append((u.encode(), orjson.dumps({**orjson.loads(v), "ts": _ts(v) - 20 * DAY})))
    port = free_port()
    log = tmp_path / "scorer.log"
    proc = start_scorer(env_for(names, metrics_port=port, late_events="apply"), log)
    group, topic = names["kafka_group_id"], names["input_topic"]
    try:
        wait_for("the scorer to join", lambda: joined(log), 60, {log: proc})
        produce(SHARED, topic, live)
        wait_until_committed(group, topic, {log: proc})
        produce(SHARED, topic, history)
        wait_until_committed(group, topic, {log: proc})
        wait_for(
            "the last batch's counters",
            lambda: _total(port, "streamscore_late_events_applied_total") >= len(history),
            30,
            {log: proc},
        )
        late = _total(port, "streamscore_late_events_total")
        applied = _total(port, "streamscore_late_events_applied_total")
        wait_until_settled(load_settings(**names), {log: proc})
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()[-4000:]
    assert late == applied == len(history)
    assert consume(SHARED, names["dlq_topic"]) == []
    got = assert_same_as_uninterrupted(names, semantics={"late_events": "apply"})
    assert sum(s.features.events for s in got.states.values()) == len(live) + len(history)
    in_order = sorted((v for _, v in history + live), key=_ts)
    reference = _Run(in_order, load_settings(metrics_port=0), 500).states()
    assert got.states.keys() == reference.keys()
    for uid, want in reference.items():
        f = got.states[uid].features
        assert {k: getattr(f, k) for k in COMMUTING} == {
            k: getattr(want.features, k) for k in COMMUTING
        }, uid
        assert f.spend == pytest.approx(want.features.spend, rel=1e-9), uid


def _raw(letter: dict[str, object]) -> bytes:
    import base64

    return base64.b64decode(str(letter["raw"]))


# Copies reach their user's partition after every record already there, so the input is sent
# as a live stream would be (a simulated day at a time, each once the scorer has caught up),
# and a lateness above a day keeps the copies on time. Static membership makes the restarts
# after each kill quick.
REKEY = {"on_key_mismatch": "rekey", "allowed_lateness_seconds": 3 * 86_400}
KILLS = 10


@pytest.mark.slow
def test_null_and_wrong_keys_under_sigkill_are_rekeyed_and_applied_exactly_once(
    names: dict[str, str], tmp_path: Path
) -> None:
    events = _shop(150, KILLS + 2, seed=33)
    days: dict[int, list[tuple[bytes | None, bytes]]] = {}
    for i, (uid, value) in enumerate(events):
        key: bytes | None = uid.encode()
        if i % 3 == 0:
            key = None
        elif i % 5 == 0:
            key = b"x" + key
        days.setdefault((_ts(value) - T0) // DAY, []).append((key, value))
    env = env_for(
        names, batch_max_records=50, kafka_group_instance_id="rekey-under-sigkill", **REKEY
    )
    log = tmp_path / "scorer.log"
    topic = names["input_topic"]
    progress = GroupProgress(SHARED, names["kafka_group_id"], topic)
    proc = start_scorer(env, log)
    try:
        for n, day in enumerate(sorted(days)):
            before = progress.committed_records()
            produce(SHARED, topic, days[day])
            if n < KILLS:  # die in the middle of that day's batches
                wait_for(
                    "a batch of the day committed",
                    lambda: progress.committed_records() > before,  # noqa: B023
                    60,
                    {log: proc},
                    interval_s=0.01,
                )
                kill(proc)
                proc = start_scorer(env, log)
            wait_for("the day committed", lambda: progress.fraction() >= 1.0, 120, {log: proc})
        wait_until_settled(load_settings(**names), {log: proc})
    finally:
        progress.close()
        code = stop(proc)
    text = log.read_text()
    assert code == 0, text[-4000:]
    assert len(ASSIGNED.findall(text)) >= KILLS + 1
    assert consume(SHARED, names["dlq_topic"]) == []
    got = assert_same_as_uninterrupted(names, semantics=REKEY)
    assert sum(s.features.events for s in got.states.values()) == len(events)
