"""Hostile input through the whole in-process pipeline (issue 5, items 3 and 6).

- Fuzz: malformed, oversized (up to 2 MB), wrongly typed, duplicated, far-future, far-past and
  late records interleaved with good events, including the strict-decoding cases of issue 10:
  ISO 8601 timestamps that are not RFC 3339, numbers sent as strings, repeated JSON keys.
  Every bad record lands in the dead-letter output exactly once with a reason of the right
  type and a bounded copy of its bytes (a prefix, with the whole value's size and SHA-256);
  duplicates change nothing and are not dead-lettered (the contract ignores them); the good
  events' states equal those of a run with only the good events; nothing raises. Good events
  carry every RFC 3339 form (any fraction length, t/z, offsets): their times must decode to
  the instant they name. Tombstones (null values) never reach this pipeline: the Kafka source
  counts and skips them (tests/integration/test_input_limits.py).
- Redelivery after a crash (the process saved a batch's states, then died before committing
  its offsets): the replayed records are duplicates, not late events.
- The dead-letter guard stops a pipeline whose input is mostly garbage, with a clear message.
- Bounded state: whatever the mix of event types and gaps, one user's stored state stays
  below a fixed size, with at most ceil(value horizon / snapshot period) + 1 pending
  snapshots and a fixed-size id ring.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamscore.adapters.memory import ListSink, ListSource, MemoryStateStore
from streamscore.config import Settings
from streamscore.core.events import EventType
from streamscore.core.features import MAX_PURCHASE_BUFFER
from streamscore.core.records import (
    DLQ_RAW_MAX_BYTES,
    TOPIC_ALERTS,
    TOPIC_DLQ,
    TOPIC_EVENTS,
    TOPIC_SCORES,
    TOPIC_SEGMENTS,
)
from streamscore.core.state import RECENT_IDS, UserState
from streamscore.errors import DeadLetterLimitExceeded
from streamscore.guards import DeadLetterGuard
from streamscore.ports import SourceRecord
from streamscore.runtime import Pipeline
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event
from streamscore.wiring import in_process_scorer
from tests.statecheck import memory_pipeline

SETTINGS = Settings()
DAY = 86_400_000
MINUTE = 60_000
BASE = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NOW = BASE + 400 * DAY  # the receiving clock: every good event is in its past
LATENESS = SETTINGS.scoring().allowed_lateness_ms
TOPIC = TOPIC_EVENTS
ERROR_TYPES = {
    "invalid_json",
    "invalid_utf8",
    "not_an_object",
    "unknown_type",
    "invalid_field",
    "too_large",
    "future_timestamp",
    "past_timestamp",
    "late_event",
}
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def run(
    values: Sequence[bytes],
    *,
    batch_size: int = 50,
    guard: DeadLetterGuard | None = None,
    store: MemoryStateStore | None = None,
    first_offset: int = 0,
) -> tuple[MemoryStateStore, ListSink]:
    """Run records (partition 0, consecutive offsets) through a fresh pipeline."""
    records = [SourceRecord(TOPIC, 0, first_offset + i, v) for i, v in enumerate(values)]
    pipeline, store, sink = memory_pipeline(
        SETTINGS, records, batch=batch_size, store=store, clock=lambda: NOW, dlq_guard=guard
    )
    pipeline.run_until_exhausted()
    return store, sink


def states(store: MemoryStateStore) -> dict[str, UserState]:
    return {u: UserState.from_bytes(u, raw) for u, raw in store.states.items()}


def assert_same_states(got: dict[str, UserState], want: dict[str, UserState]) -> None:
    """Same users, same features (float sums to 1e-9), same duplicate ring."""
    assert got.keys() == want.keys()
    for uid, w in want.items():
        g = got[uid]
        assert g.recent_ids == w.recent_ids, uid
        a, b = g.features.to_dict(), w.features.to_dict()
        for key, value in b.items():
            if isinstance(value, float | list):
                assert a[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (uid, key)
            else:
                assert a[key] == value, (uid, key)


# -- strategies -------------------------------------------------------------------------------

TYPES = [t.value for t in EventType]
MONETARY = {"purchase", "refund"}


@st.composite
def good_events(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A few users' valid events in arrival order, jittered by less than the lateness.

    The details come from a seeded generator (cheap to draw, so thousands of examples stay
    fast); hypothesis still shrinks the count and the seed.
    """
    n = draw(st.integers(1, 60))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    t = BASE
    out = []
    for i in range(n):
        t += rng.choice([0, 1, 1000, MINUTE, 3_600_000, DAY, 3 * DAY])
        kind = rng.choice(TYPES)
        event: dict[str, Any] = {
            "event_id": f"g{i}",
            "user_id": f"u{rng.randrange(4)}",
            "type": kind,
            # Behind the newest event by less than the lateness: never late.
            "ts": t - rng.randrange(LATENESS // 2),
        }
        if kind in MONETARY:
            event["amount"] = rng.choice([0.0, 0.01, 19.99, 1e12, rng.uniform(0, 500)])
        if rng.random() < 0.3:
            event["session_id"] = rng.choice(["", "s1", "ß-✓", "x" * 128])
        if rng.random() < 0.3:
            event["properties"] = rng.choice(
                [{}, {"a": None, "b": True, "c": 2**63 - 1, "d": -1.5, "e": "é"}, {"k": "v" * 3000}]
            )
        if rng.random() < 0.3:
            event["currency"] = rng.choice(["USD", "EUR", "JPY"])
        if rng.random() < 0.3:
            event["ts"] = _rfc3339(event["ts"], rng)
        if rng.random() < 0.1:
            event["unknown_extra_field"] = [1, 2, 3]  # ignored by the contract
        out.append(event)
    return out


def _rfc3339(ms: int, rng: random.Random) -> str:
    """``ms`` as one of the many spellings RFC 3339 allows for the same instant."""
    from datetime import UTC, datetime, timedelta, timezone

    minutes = rng.choice([0, 0, 60, -300, 330, 345, -570, 23 * 60 + 59, -(23 * 60 + 59)])
    when = datetime.fromtimestamp(ms // 1000, tz=UTC).astimezone(
        timezone(timedelta(minutes=minutes))
    )
    text = (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}"
        f"T{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
    )
    millis = f"{ms % 1000:03d}"
    digits = rng.choice([0, 3, 3, 6, 9]) if millis == "000" else rng.choice([3, 6, 9])
    if digits:
        text += "." + (millis + "".join(rng.choice("0123456789") for _ in range(6)))[:digits]
    if minutes == 0 and rng.random() < 0.7:
        text += rng.choice(["Z", "z"])
    else:
        sign = "-" if minutes < 0 else "+"
        text += f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    if rng.random() < 0.2:
        text = text.replace("T", "t")
    return text


def _valid(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"event_id": "b", "user_id": "u0", "type": "page_view", "ts": BASE}
    base.update(fields)
    return base


_DROP = object()


def _obj(fields: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in fields.items() if v is not _DROP})


WRONG_TYPES: dict[str, list[Any]] = {
    "event_id": [None, 5, "", "x" * 129, [], {"a": 1}, True, _DROP],
    "user_id": [None, 7, "", "u" * 129, ["u0"], False, _DROP],
    "type": [None, 3, ["page_view"], {"t": 1}, _DROP],
    "ts": [
        None,
        True,
        [],
        {},
        "yesterday",
        "2026-01-01",
        "2026-01-01T00:00:00",
        1.5,
        "",
        _DROP,
        # ISO 8601, but not RFC 3339 (nor JSON Schema's date-time):
        "2026-W01-4T00:00Z",
        "2026-001T00:00:00Z",
        "20260101T000000Z",
        "2026-01-01 00:00:00Z",
        "2026-01-01T00:00Z",
        "2026-01-01T00:00:00+02:00:30",
        "2026-01-01T00:00:00+0200",
        "2026-01-01T00:00:00,5Z",
        "2016-12-31T23:59:60Z",
        # epoch milliseconds as text
        str(BASE),
        f"{BASE}.0",
    ],
    "currency": ["usd", "EURO", 12, "", None],
    "session_id": ["s" * 129, 5, ["s"]],
    "item_id": ["i" * 129, {"a": 1}],
    "category": ["c" * 129, 3.5],
    "properties": [[1, 2], "flat", {"nested": {"a": 1}}, {"list": [1]}, 5],
}


@st.composite
def bad_record(draw: st.DrawFn) -> tuple[bytes, set[str]]:
    """One record that breaks the contract, and the error types it may be filed under."""
    kind = draw(
        st.sampled_from(
            [
                "garbage",
                "not_json",
                "not_object",
                "wrong_type",
                "unknown_type",
                "amount_rules",
                "too_large",
                "big_properties",
                "future",
                "past",
                "repeated_key",
            ]
        )
    )
    if kind == "repeated_key":
        field = draw(st.sampled_from(["event_id", "user_id", "type", "ts", "amount", "extra"]))
        body = _obj(_valid(type="purchase", amount=5.0))
        value = orjson.dumps(draw(st.sampled_from(["u0", "purchase", BASE, 5000.0, {"a": 1}])))
        member = b',"' + field.encode() + b'":' + value
        # "extra" is not a contract field: it must repeat itself to be a repeat.
        return body[:-1] + member * (2 if field == "extra" else 1) + b"}", {"invalid_json"}
    if kind == "garbage":
        raw = draw(st.binary(min_size=0, max_size=200).filter(lambda b: b.lstrip()[:1] != b"{"))
        return raw, {"invalid_json", "invalid_utf8", "not_an_object"}
    if kind == "not_json":
        text = draw(st.sampled_from(["{", '{"event_id": ', "nan", "{'a': 1}", "", "  ", "[1,]"]))
        return text.encode(), {"invalid_json"}
    if kind == "not_object":
        value = draw(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**63 - 1)
            | st.text(max_size=20)
            | st.lists(st.integers(-(2**63), 2**63 - 1))
        )
        return orjson.dumps(value), {"not_an_object"}
    if kind == "wrong_type":
        field = draw(st.sampled_from(sorted(WRONG_TYPES)))
        value = draw(st.sampled_from(WRONG_TYPES[field]))
        return _obj(_valid(**{field: value})), {"invalid_field"}
    if kind == "unknown_type":
        name = draw(st.text(min_size=1, max_size=30).filter(lambda s: s not in TYPES))
        return _obj(_valid(type=name)), {"unknown_type"}
    if kind == "amount_rules":
        fields = draw(
            st.sampled_from(
                [
                    {"type": "page_view", "amount": 5.0},
                    {"type": "purchase"},
                    {"type": "refund", "amount": None},
                    {"type": "purchase", "amount": -0.01},
                    {"type": "purchase", "amount": "lots"},
                    {"type": "purchase", "amount": "12.5"},
                    {"type": "purchase", "amount": "1_000"},
                    {"type": "refund", "amount": "7"},
                    {"type": "purchase", "amount": True},
                    {"type": "purchase", "amount": [1]},
                    {"type": "purchase", "amount": 1.000001e12},
                    {"type": "refund", "amount": 1e39},
                    {"type": "purchase", "amount": 1.7e308},
                ]
            )
        )
        return _obj(_valid(**fields)), {"invalid_field"}
    if kind == "too_large":
        limit = SETTINGS.max_event_bytes
        size = draw(st.integers(limit + 1, limit * 4) | st.sampled_from([1_000_000, 2 << 20]))
        return _obj(_valid(category="c" * size)), {"too_large"}
    if kind == "big_properties":
        return _obj(_valid(properties={"blob": "p" * 5000})), {"invalid_field"}
    if kind == "future":
        ahead = draw(st.integers(SETTINGS.event_limits().max_future_skew_ms + 1, 10**15))
        return _obj(_valid(ts=NOW + ahead)), {"future_timestamp"}
    past = draw(st.integers(-(10**15), 946_684_800_000 - 1))  # before 2000-01-01
    return _obj(_valid(ts=past)), {"past_timestamp"}


@st.composite
def hostile_stream(
    draw: st.DrawFn,
) -> tuple[list[bytes], list[bytes], dict[int, set[str]]]:
    """(mixed stream, good-only stream, {offset in the mixed stream: allowed error types})."""
    good = [orjson.dumps(e) for e in draw(good_events())]
    user_of = [orjson.loads(g)["user_id"] for g in good]
    mixed: list[bytes] = []
    expected: dict[int, set[str]] = {}
    applied: dict[str, list[bytes]] = {}
    for i, raw in enumerate(good):
        for _ in range(draw(st.integers(0, 3))):
            what = draw(st.sampled_from(["bad", "bad", "bad", "duplicate", "late"]))
            if what == "bad":
                bad, kinds = draw(bad_record())
                expected[len(mixed)] = kinds
                mixed.append(bad)
            elif what == "duplicate" and applied:
                # A producer retry: one of the user's recent events again, byte for byte.
                user = draw(st.sampled_from(sorted(applied)))
                mixed.append(draw(st.sampled_from(applied[user][-RECENT_IDS:])))
            elif what == "late" and i > 0:
                # Valid, but behind the partition's watermark: the labels up to it are final.
                ts = BASE - draw(st.integers(2 * LATENESS, 3000 * DAY))
                expected[len(mixed)] = {"late_event"}
                mixed.append(_obj(_valid(event_id=f"late{len(mixed)}", ts=ts)))
        mixed.append(raw)
        applied.setdefault(user_of[i], []).append(raw)
    return mixed, good, expected


# -- fuzz -------------------------------------------------------------------------------------


@settings(FUZZ, max_examples=1000)
@given(hostile_stream(), st.integers(1, 40))
def test_bad_records_are_dead_lettered_and_good_ones_unaffected(
    stream: tuple[list[bytes], list[bytes], dict[int, set[str]]], batch_size: int
) -> None:
    mixed, good, expected = stream
    store, sink = run(mixed, batch_size=batch_size)
    clean_store, clean_sink = run(good)

    dlq = sink.records.get(TOPIC_DLQ, [])
    got = {int(r["source"]["offset"]): r for r in dlq}  # type: ignore[call-overload,index]
    assert len(got) == len(dlq), "a record was dead-lettered twice"
    assert got.keys() == expected.keys(), "dead letters are exactly the bad records"
    for offset, record in got.items():
        assert record["error_type"] in expected[offset], (record, mixed[offset][:200])
        assert record["error_type"] in ERROR_TYPES
        assert isinstance(record["error"], str) and record["error"]
        assert len(record["error"]) <= 2000  # type: ignore[arg-type]
        value = mixed[offset]
        assert base64.b64decode(str(record["raw"])) == value[:DLQ_RAW_MAX_BYTES]
        assert record["raw_size"] == len(value)
        assert record["raw_sha256"] == hashlib.sha256(value).hexdigest()
        assert record["raw_truncated"] is (len(value) > DLQ_RAW_MAX_BYTES)
    assert TOPIC_DLQ not in clean_sink.records
    assert_same_states(states(store), states(clean_store))


@settings(FUZZ, max_examples=500)
@given(st.integers(-62_135_596_800_000 + 2 * DAY, 253_402_300_799_999 - 2 * DAY), st.randoms())
def test_every_rfc3339_spelling_decodes_to_its_instant(ms: int, rng: random.Random) -> None:
    from streamscore.core.timeutil import parse_rfc3339

    text = _rfc3339(ms, rng)
    assert parse_rfc3339(text) == ms, text


def test_a_replay_after_a_crash_between_save_and_commit_is_not_late() -> None:
    """The process saved batch k's states and died before committing it; the restarted one
    reads batch k again. Those records are redeliveries: ignored, not dead-lettered as late,
    and (with the default batch size and guard) not mistaken for a wrong topic either."""
    sim = ShopSimulator(SimulationConfig(users=80, days=30, seed=5))
    values = [encode_event(e) for e in sim.events()]
    assert len(values) > 3000
    batch = SETTINGS.batch_max_records
    guard = DeadLetterGuard(SETTINGS.dlq_max_ratio, SETTINGS.dlq_window)
    store, _ = run(values[: 2 * batch], batch_size=batch, guard=guard)  # saved batches 0 and 1
    # Restart: offsets committed up to batch 0 only, so batch 1 comes again.
    store, sink = run(
        values[batch:], batch_size=batch, guard=guard, store=store, first_offset=batch
    )
    assert TOPIC_DLQ not in sink.records
    clean, _ = run(values, batch_size=batch)
    assert_same_states(states(store), states(clean))


# Fields that identify what an output record is about (see tests/integration/
# test_reliability.py for the whole deduplication contract); the rest may differ between copies.
IDENTITY = {
    TOPIC_SCORES: ("user_id", "as_of", "trigger", "value_horizon_days"),
    TOPIC_SEGMENTS: ("user_id", "as_of", "current", "lifecycle_current"),
    TOPIC_ALERTS: ("user_id", "as_of"),
}


class _ProcessDiedError(Exception):
    """The process dies."""


class _DiesOnSave(MemoryStateStore):
    def __init__(self, die_on: int) -> None:
        super().__init__()
        self.saves = 0
        self.die_on = die_on

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.saves += 1
        if self.saves == self.die_on:
            raise _ProcessDiedError
        super().save(*args, **kwargs)


def test_outputs_replayed_after_a_crash_repeat_ids_with_the_same_identity() -> None:
    """Outputs are flushed before states are saved: a process that dies in between has sent
    a batch's records; its successor (fresh models, as after restoring an older checkpoint)
    sends them again. Same ids, same identity; model numbers may differ."""
    sim = ShopSimulator(SimulationConfig(users=40, days=60, seed=8))
    values = [encode_event(e) for e in sim.events()]
    store = _DiesOnSave(die_on=6)
    first = ListSink()
    source = ListSource([SourceRecord(TOPIC, 0, i, v) for i, v in enumerate(values)])
    pipeline = Pipeline(
        source,
        store,
        first,
        in_process_scorer(SETTINGS.scoring())[0],
        limits=SETTINGS.event_limits(),
        batch_size=300,
        poll_timeout_s=0.0,
        clock=lambda: NOW,
    )
    with pytest.raises(_ProcessDiedError):
        pipeline.run_until_exhausted()
    resume = source.committed[0]
    store.die_on = 0
    _, second = run(values[resume:], batch_size=300, store=store, first_offset=resume)

    repeated = 0
    for topic, identity in IDENTITY.items():
        seen: dict[str, dict[str, Any]] = {}
        for record in first.records.get(topic, []) + second.records.get(topic, []):
            rid = str(record["id"])
            if rid in seen:
                repeated += 1
                for key in identity:
                    assert record[key] == seen[rid][key], (topic, key, seen[rid], record)
            seen[rid] = record
    assert repeated > 0, "the crashed batch's outputs were sent again"
    clean, clean_sink = run(values, batch_size=300)
    assert_same_states(states(store), states(clean))
    for topic in IDENTITY:  # an uninterrupted run never repeats an id
        ids = [r["id"] for r in clean_sink.records.get(topic, [])]
        assert len(ids) == len(set(ids)), topic


# -- the dead-letter limit --------------------------------------------------------------------


def _garbage_with_good(n: int, bad_every: int) -> list[bytes]:
    out = []
    for i in range(n):
        if i % bad_every:
            out.append(b"\x00garbage %d" % i)
        else:
            out.append(orjson.dumps(_valid(event_id=f"ok{i}", ts=BASE + i * MINUTE)))
    return out


def test_mostly_garbage_stops_the_pipeline_with_a_clear_message() -> None:
    guard = DeadLetterGuard(max_ratio=0.95, window=200)
    with pytest.raises(DeadLetterLimitExceeded) as info:
        run(_garbage_with_good(1000, bad_every=50), batch_size=50, guard=guard)
    message = str(info.value)
    assert "98% of the last 200+ records were invalid (limit 95%)" in message
    assert "is the input topic right?" in message
    assert "STREAMSCORE_DLQ_MAX_RATIO" in message


def test_some_garbage_does_not_stop_the_pipeline() -> None:
    guard = DeadLetterGuard(max_ratio=0.95, window=200)
    _, sink = run(_garbage_with_good(2000, bad_every=2), batch_size=50, guard=guard)
    assert len(sink.records[TOPIC_DLQ]) == 1000


# -- bounded state ----------------------------------------------------------------------------

# Largest stored state one user may reach, whatever their events: features (numbers only),
# the id ring, the purchase-gap buffer and the pending snapshots. Measured at 0.5-1.1 KB over
# mixes of one to all eight types with mean gaps of 1 s to 3 days (five pending snapshots at
# most); the bound leaves room for longer numbers, not for growth.
STATE_BOUND_BYTES = 1600
MAX_SNAPSHOTS = math.ceil(SETTINGS.value_horizon_days / SETTINGS.snapshot_period) + 1


@settings(FUZZ, max_examples=12)
@given(
    weights=st.lists(st.floats(0, 1), min_size=len(TYPES), max_size=len(TYPES)).filter(
        lambda w: sum(w) > 0
    ),
    mean_gap_s=st.sampled_from([1, 60, 3600, 86_400]),
    seed=st.integers(0, 2**32 - 1),
)
def test_one_users_state_stays_bounded(weights: list[float], mean_gap_s: int, seed: int) -> None:
    rng = random.Random(seed)
    t = BASE
    values = []
    for i in range(10_000):
        t += int(rng.expovariate(1 / mean_gap_s) * 1000)
        kind = rng.choices(TYPES, weights)[0]
        event: dict[str, Any] = {"event_id": f"e{i}", "user_id": "heavy", "type": kind, "ts": t}
        if kind in MONETARY:
            event["amount"] = round(rng.lognormvariate(3, 2), 2)
        values.append(orjson.dumps(event))
    store = MemoryStateStore()
    sink = ListSink()
    records = [SourceRecord(TOPIC, 0, i, v) for i, v in enumerate(values)]
    pipeline = Pipeline(
        ListSource(records),
        store,
        sink,
        in_process_scorer(SETTINGS.scoring())[0],
        limits=SETTINGS.event_limits(),
        batch_size=250,
        poll_timeout_s=0.0,
        clock=lambda: t + DAY,
    )
    largest = 0
    while not pipeline.source.exhausted():
        pipeline.run_once()
        raw = store.states["heavy"]
        largest = max(largest, len(raw))
        state = UserState.from_bytes("heavy", raw)
        assert len(state.snapshots) <= MAX_SNAPSHOTS
        assert len(state.recent_ids) <= RECENT_IDS
        assert len(state.features.recent_purchases) <= MAX_PURCHASE_BUFFER
    assert state.features.events == 10_000
    assert largest <= STATE_BOUND_BYTES, largest
    assert TOPIC_DLQ not in sink.records


def test_an_absurd_amount_is_dead_lettered_not_fatal() -> None:
    absurd = _obj(_valid(event_id="rich", type="purchase", amount=1e39))
    after = _obj(_valid(event_id="next", ts=BASE + MINUTE))
    _, sink = run([absurd, after], batch_size=1)
    assert [r["error_type"] for r in sink.records[TOPIC_DLQ]] == ["invalid_field"]
