"""The shop simulator: contract-shaped events, a known ground truth, and a calibrated oracle."""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from streamscore.core.validation import exact_auc
from streamscore.simulator import (
    BAD_RECORD_KINDS,
    DAY_MS,
    ShopSimulator,
    SimulationConfig,
    encode_event,
    stationary_churn_probability,
)

EVENT_TYPES = {
    "signup",
    "session_start",
    "page_view",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "refund",
    "support_ticket",
}
MONETARY = {"purchase", "refund"}
ALLOWED_KEYS = {
    "event_id",
    "user_id",
    "type",
    "ts",
    "amount",
    "currency",
    "session_id",
    "item_id",
    "category",
    "properties",
}
HORIZON_DAYS = 14.0
SILENT_POINTS_DAYS = (3.0, 7.0, 14.0, 30.0)

Event = dict[str, object]


# ---------------------------------------------------------------------------- helpers


def clean(records: list[Event | bytes]) -> list[Event]:
    out: list[Event] = []
    for r in records:
        assert isinstance(r, dict)
        out.append(r)
    return out


@dataclass(frozen=True)
class Snapshot:
    user_id: str
    silent_days: float
    as_of_ms: int
    churn: float  # oracle
    label: int  # 1 = no event in (t, t + H]
    value: float  # oracle
    spend: float  # realised purchases in (t, t + H]


def snapshots(sim: ShopSimulator, events: list[Event], horizon_days: float) -> list[Snapshot]:
    """At every session end, and 3/7/14/30 days later while the user stays silent.

    Session ends are where the "no event" label means "no new session"; the oracle is only
    given the last activity time, never anything about the future.
    """
    times: dict[str, list[int]] = defaultdict(list)
    session_end: dict[str, dict[str, int]] = defaultdict(dict)
    purchases: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for e in events:
        uid, ts = str(e["user_id"]), e["ts"]
        assert isinstance(ts, int)
        times[uid].append(ts)
        if "session_id" in e:
            session_end[uid][str(e["session_id"])] = ts
        if e["type"] == "purchase":
            amount = e["amount"]
            assert isinstance(amount, float)
            purchases[uid].append((ts, amount))
    horizon_ms = round(horizon_days * DAY_MS)
    out: list[Snapshot] = []
    for uid, ends in session_end.items():
        ts_list = times[uid]
        buys = purchases[uid]
        buy_ts = [t for t, _ in buys]
        for last in sorted(set(ends.values())):
            i = bisect.bisect_right(ts_list, last)
            next_ms = ts_list[i] if i < len(ts_list) else None
            for silent in (0.0, *SILENT_POINTS_DAYS):
                t = last + round(silent * DAY_MS)
                if t + horizon_ms > sim.end_ms or (next_ms is not None and next_ms <= t):
                    break
                lo = bisect.bisect_right(buy_ts, t)
                hi = bisect.bisect_right(buy_ts, t + horizon_ms)
                out.append(
                    Snapshot(
                        user_id=uid,
                        silent_days=silent,
                        as_of_ms=t,
                        churn=sim.oracle_churn_probability(uid, t, last, horizon_days),
                        label=int(next_ms is None or next_ms > t + horizon_ms),
                        value=sim.oracle_expected_value(uid, t, last, horizon_days),
                        spend=sum(a for _, a in buys[lo:hi]),
                    )
                )
    return out


def ts_of(e: Event) -> int:
    ts = e["ts"]
    assert isinstance(ts, int)
    return ts


def amount_of(e: Event) -> float:
    amount = e["amount"]
    assert isinstance(amount, float)
    return amount


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


# ---------------------------------------------------------------------------- fixtures

MEDIUM = SimulationConfig(users=800, days=120.0, seed=11)
DRIFT = dataclasses.replace(MEDIUM, drift_day=60.0)


@pytest.fixture(scope="module")
def medium() -> tuple[ShopSimulator, list[Event]]:
    sim = ShopSimulator(MEDIUM)
    return sim, clean(list(sim.events()))


@pytest.fixture(scope="module")
def drifted() -> tuple[ShopSimulator, list[Event]]:
    sim = ShopSimulator(DRIFT)
    return sim, clean(list(sim.events()))


@pytest.fixture(scope="module")
def medium_snaps(medium: tuple[ShopSimulator, list[Event]]) -> list[Snapshot]:
    return snapshots(*medium, HORIZON_DAYS)


@pytest.fixture(scope="module")
def drifted_snaps(drifted: tuple[ShopSimulator, list[Event]]) -> list[Snapshot]:
    return snapshots(*drifted, HORIZON_DAYS)


# ---------------------------------------------------------------------------- the stream


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    config = SimulationConfig(users=150, days=40.0, seed=5)
    first = list(ShopSimulator(config).events())
    sim = ShopSimulator(config)
    assert list(sim.events()) == first
    assert list(sim.events()) == first  # re-iterable
    assert list(ShopSimulator(dataclasses.replace(config, seed=6)).events()) != first
    assert ShopSimulator(config).truth == sim.truth


def test_events_follow_the_contract(medium: tuple[ShopSimulator, list[Event]]) -> None:
    sim, events = medium
    assert len(events) > 20_000
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids)
    for e in events:
        assert set(e) <= ALLOWED_KEYS
        assert e["type"] in EVENT_TYPES
        for key in ("event_id", "user_id"):
            value = e[key]
            assert isinstance(value, str) and 1 <= len(value) <= 128
        for key in ("session_id", "item_id", "category"):
            if key in e:
                value = e[key]
                assert isinstance(value, str) and len(value) <= 128
        ts = e["ts"]
        assert isinstance(ts, int) and not isinstance(ts, bool)
        assert MEDIUM.start_ms <= ts <= sim.end_ms
        if e["type"] in MONETARY:
            amount = e["amount"]
            assert isinstance(amount, float) and math.isfinite(amount) and amount >= 0
            assert round(amount, 2) == amount
            assert e["currency"] == "USD"
        else:
            assert "amount" not in e and "currency" not in e
        if "properties" in e:
            assert len(orjson.dumps(e["properties"])) <= 4096
    assert {e["type"] for e in events} == EVENT_TYPES


def test_events_are_in_event_time_order(medium: tuple[ShopSimulator, list[Event]]) -> None:
    _, events = medium
    stamps = [ts_of(e) for e in events]
    assert stamps == sorted(stamps)


def test_users_start_with_signup_and_stop_at_dropout(
    medium: tuple[ShopSimulator, list[Event]],
) -> None:
    sim, events = medium
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_user[str(e["user_id"])].append(e)
    assert set(by_user) == set(sim.truth)
    for uid, evs in by_user.items():
        truth = sim.truth[uid]
        assert evs[0]["type"] == "signup" and evs[0]["ts"] == truth.signup_ms
        assert evs[1]["type"] == "session_start"
        assert sum(e["type"] == "signup" for e in evs) == 1
        if truth.dropout_ms is not None:
            assert all(ts_of(e) <= truth.dropout_ms for e in evs)
    # Users drop out within the period at a realistic rate, and some stay.
    dropped = sum(t.dropout_ms is not None for t in sim.truth.values())
    assert 0.2 < dropped / len(sim.truth) < 0.9


def test_sessions_are_short_bursts_and_refunds_follow_purchases(
    medium: tuple[ShopSimulator, list[Event]],
) -> None:
    _, events = medium
    session_start: dict[str, int] = {}
    paid: dict[str, tuple[str, float]] = {}  # purchase event_id -> (user, amount)
    refunds = 0
    for e in events:
        ts = e["ts"]
        assert isinstance(ts, int)
        if e["type"] == "signup":
            assert "session_id" not in e
            continue
        sid = str(e["session_id"])
        if e["type"] == "session_start":
            assert sid not in session_start
            session_start[sid] = ts
        assert 0 <= ts - session_start[sid] <= 31 * 60_000
        if e["type"] == "purchase":
            amount = e["amount"]
            assert isinstance(amount, float)
            paid[str(e["event_id"])] = (str(e["user_id"]), amount)
        if e["type"] == "refund":
            refunds += 1
            props = e["properties"]
            assert isinstance(props, dict)
            user, amount = paid[props["order_id"]]  # refers to an earlier purchase
            assert user == e["user_id"]
            refunded = e["amount"]
            assert isinstance(refunded, float) and 0 <= refunded <= amount
    assert refunds > 0


def test_default_size_is_in_the_expected_range() -> None:
    # A shorter period keeps the test quick; the defaults give ~260k events (see the report).
    sim = ShopSimulator(SimulationConfig(users=400))
    count = sum(1 for _ in sim.events())
    assert 25_000 < count < 65_000


# ---------------------------------------------------------------------------- the oracle


def test_stationary_formula_matches_the_closed_form() -> None:
    lam, mu, r, h = 0.4, 0.02, 5.0, 14.0
    k = lam + mu
    p_alive = math.exp(-k * r) / (math.exp(-k * r) + mu / k * (1 - math.exp(-k * r)))
    p_none = mu / k * (1 - math.exp(-k * h)) + math.exp(-k * h)
    expected = 1 - p_alive * (1 - p_none)
    assert stationary_churn_probability(lam, mu, r, h) == pytest.approx(expected, rel=1e-12)


def test_oracle_is_a_probability_monotone_in_rate_and_silence() -> None:
    rates = [0.05, 0.1, 0.2, 0.35, 0.7, 1.5, 3.0]
    at_zero = [stationary_churn_probability(lam, 0.012, 0.0, 14.0) for lam in rates]
    assert all(0.0 <= p <= 1.0 for p in at_zero)
    assert all(a > b for a, b in itertools.pairwise(at_zero))
    for lam in rates:
        by_silence = [
            stationary_churn_probability(lam, 0.012, r, 14.0) for r in (0, 1, 3, 7, 14, 30, 90)
        ]
        assert all(0.0 <= p <= 1.0 for p in by_silence)
        # Strictly increasing until it saturates at 1.0 in floating point.
        assert all(a < b or a == b == 1.0 for a, b in itertools.pairwise(by_silence))
    # A long silence is damning for a frequent visitor, much less so for a rare one.
    assert stationary_churn_probability(3.0, 0.012, 10.0, 14.0) > 0.99
    assert stationary_churn_probability(0.05, 0.012, 10.0, 14.0) < 0.7


def test_oracle_methods_agree_with_the_stationary_formula_without_drift(
    medium: tuple[ShopSimulator, list[Event]],
) -> None:
    sim, _ = medium
    start = MEDIUM.start_ms
    for truth in list(sim.truth.values())[:50]:
        last = truth.signup_ms + 3 * DAY_MS
        for silent in (0.0, 2.5, 20.0):
            as_of = last + round(silent * DAY_MS)
            got = sim.oracle_churn_probability(truth.user_id, as_of, last, 14.0)
            want = stationary_churn_probability(
                truth.session_rate, truth.dropout_rate, silent, 14.0
            )
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
            value = sim.oracle_expected_value(truth.user_id, as_of, last, 14.0)
            assert value >= 0.0
        # Without silence: E[sessions in H] * p * m, with E[alive time] = (1 - e^(-mu H)) / mu.
        mu = truth.dropout_rate
        want_value = (
            truth.session_rate
            * (1 - math.exp(-mu * 14.0))
            / mu
            * truth.purchase_prob
            * truth.mean_order_value
        )
        assert sim.oracle_expected_value(truth.user_id, last, last, 14.0) == pytest.approx(
            want_value, rel=1e-9
        )
    assert start <= min(t.signup_ms for t in sim.truth.values())


def test_oracle_refuses_nonsense(medium: tuple[ShopSimulator, list[Event]]) -> None:
    sim, _ = medium
    uid = next(iter(sim.truth))
    with pytest.raises(ValueError, match="before"):
        sim.oracle_churn_probability(uid, 1_000, 2_000, 14.0)
    with pytest.raises(ValueError, match="horizon"):
        sim.oracle_expected_value(uid, 2_000, 1_000, 0.0)
    with pytest.raises(KeyError):
        sim.oracle_churn_probability("nobody", 2_000, 1_000, 14.0)


def test_oracle_is_calibrated_and_discriminates(medium_snaps: list[Snapshot]) -> None:
    snaps = medium_snaps
    assert len(snaps) > 10_000
    churn = [s.churn for s in snaps]
    labels = [s.label for s in snaps]
    assert mean(churn) == pytest.approx(mean(labels), abs=0.01)
    # Calibrated within each decile of the oracle, too.
    ordered = sorted(snaps, key=lambda s: s.churn)
    k = len(ordered) // 10
    for d in range(10):
        part = ordered[d * k : (d + 1) * k]
        assert mean([s.churn for s in part]) == pytest.approx(
            mean([s.label for s in part]), abs=0.03
        )
    # And at each silence point (the oracle must not peek at the latent dropout).
    for silent in (0.0, *SILENT_POINTS_DAYS):
        part = [s for s in snaps if s.silent_days == silent]
        assert mean([s.churn for s in part]) == pytest.approx(
            mean([s.label for s in part]), abs=0.04
        )
    auc = exact_auc(churn, [bool(y) for y in labels])
    assert auc is not None, "AUC needs both classes"
    assert auc > 0.85  # about 0.89 on this mix of snapshots (see the report)
    # Expected value: unbiased on average (heavy-tailed amounts, so a loose bound).
    assert mean([s.value for s in snaps]) == pytest.approx(mean([s.spend for s in snaps]), rel=0.1)


def test_drift_raises_realised_churn_and_the_oracle_follows_it(
    medium: tuple[ShopSimulator, list[Event]],
    drifted: tuple[ShopSimulator, list[Event]],
    medium_snaps: list[Snapshot],
    drifted_snaps: list[Snapshot],
) -> None:
    base_sim, base_events = medium
    drift_sim, drift_events = drifted
    drift_ms = DRIFT.drift_ms
    assert drift_ms is not None

    # Same users, same parameters; the drift changes only what happens after drift_day.
    for uid, truth in drift_sim.truth.items():
        before = base_sim.truth[uid]
        assert dataclasses.replace(truth, dropout_ms=None) == dataclasses.replace(
            before, dropout_ms=None
        )
        if before.dropout_ms is not None and before.dropout_ms < drift_ms:
            assert truth.dropout_ms == before.dropout_ms

    def history(events: list[Event]) -> list[tuple[object, ...]]:
        cutoff = drift_ms - 3_600_000  # sessions may straddle the drift instant
        return [
            (e["user_id"], e["type"], e["ts"], e.get("amount")) for e in events if ts_of(e) < cutoff
        ]

    assert history(drift_events) == history(base_events)

    base = [s for s in medium_snaps if s.as_of_ms >= drift_ms]
    after = [s for s in drifted_snaps if s.as_of_ms >= drift_ms]
    assert mean([s.label for s in after]) > mean([s.label for s in base]) + 0.05
    assert mean([s.churn for s in after]) == pytest.approx(
        mean([s.label for s in after]), abs=0.015
    )
    # Windows that straddle the drift day use the piecewise hazard.
    straddle = [
        s for s in drifted_snaps if s.as_of_ms < drift_ms < s.as_of_ms + HORIZON_DAYS * DAY_MS
    ]
    assert len(straddle) > 1000
    assert mean([s.churn for s in straddle]) == pytest.approx(
        mean([s.label for s in straddle]), abs=0.02
    )

    # Orders are worth less after the drift.
    def order_mean(events: list[Event]) -> float:
        return mean(
            [amount_of(e) for e in events if e["type"] == "purchase" and ts_of(e) >= drift_ms]
        )

    assert order_mean(drift_events) < order_mean(base_events) / 1.3


# ---------------------------------------------------------------------------- noise


def contract_violation(raw: bytes, latest_ms: int) -> str | None:
    """A small independent reading of DESIGN.md §2: why a record is invalid, or None."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "not json"
    if not isinstance(obj, dict):
        return "not an object"
    for key in ("event_id", "user_id"):
        value = obj.get(key)
        if not isinstance(value, str) or not 1 <= len(value) <= 128:
            return f"bad {key}"
    if obj.get("type") not in EVENT_TYPES:
        return "unknown type"
    ts = obj.get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool):
        return "bad ts"
    if ts > latest_ms + 365 * DAY_MS:
        return "far future"
    amount = obj.get("amount")
    if obj["type"] in MONETARY:
        if not isinstance(amount, int | float) or not math.isfinite(amount) or amount < 0:
            return "bad amount"
    elif amount is not None:
        return "amount not allowed"
    props = obj.get("properties")
    if props is not None and len(orjson.dumps(props)) > 4096:
        return "properties too large"
    return None


def test_noise_is_injected_around_an_unchanged_clean_stream() -> None:
    config = SimulationConfig(users=300, days=60.0, seed=2)
    pure = clean(list(ShopSimulator(config).events()))
    noisy = list(
        ShopSimulator(
            dataclasses.replace(config, bad_fraction=0.05, duplicate_fraction=0.03)
        ).events()
    )
    bad = [r for r in noisy if isinstance(r, bytes)]
    good = [r for r in noisy if not isinstance(r, bytes)]
    assert len(bad) / len(noisy) == pytest.approx(0.05, abs=0.01)
    assert (len(good) - len(pure)) / len(noisy) == pytest.approx(0.03, abs=0.01)

    # Every malformed record breaks the contract, and all kinds occur.
    end_ms = config.end_ms
    reasons = {contract_violation(raw, end_ms) for raw in bad}
    assert None not in reasons
    assert len(reasons) >= 8
    assert len(BAD_RECORD_KINDS) >= 10
    for event in pure[:1000]:
        assert contract_violation(encode_event(event), end_ms) is None

    # Duplicates are exact copies of an earlier record; dropping repeats restores the stream.
    seen: dict[object, Event] = {}
    deduped: list[Event] = []
    for r in good:
        if r["event_id"] in seen:
            assert seen[r["event_id"]] == r
            continue
        seen[r["event_id"]] = r
        deduped.append(r)
    assert deduped == pure


def test_encode_event() -> None:
    event: Event = {"event_id": "e1", "user_id": "u1", "type": "purchase", "ts": 5, "amount": 1.5}
    assert orjson.loads(encode_event(event)) == event
    assert encode_event(b"\x00raw") == b"\x00raw"


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="bad_fraction"):
        SimulationConfig(bad_fraction=1.5)
    with pytest.raises(ValueError, match="days"):
        SimulationConfig(days=0)
    with pytest.raises(ValueError, match="< 1"):
        SimulationConfig(bad_fraction=0.6, duplicate_fraction=0.5)
    assert ShopSimulator(SimulationConfig(users=0)).truth == {}
    assert list(ShopSimulator(SimulationConfig(users=0)).events()) == []


def test_simulate_start_moves_the_shop_in_event_time(tmp_path: Path) -> None:
    """``simulate --start`` makes a backfill: the same shop, earlier (issue 10)."""
    from streamscore.cli import main
    from streamscore.core.timeutil import DAY_MS, parse_rfc3339

    def times(path: Path) -> list[int]:
        out = []
        for line in path.read_bytes().splitlines():
            ts = orjson.loads(line)["ts"]
            out.append(ts if isinstance(ts, int) else parse_rfc3339(ts))
        return out

    default, early = tmp_path / "default.jsonl", tmp_path / "early.jsonl"
    common = ["simulate", "--users", "20", "--days", "10", "--seed", "3"]
    assert main([*common, "--out", str(default)]) == 0
    assert main([*common, "--out", str(early), "--start", "1997-01-01T00:00:00Z"]) == 0
    start = parse_rfc3339("1997-01-01T00:00:00Z")
    late, backfill = times(default), times(early)
    assert min(late) >= parse_rfc3339("2026-01-01T00:00:00Z")
    assert start <= min(backfill) and max(backfill) <= start + 10 * DAY_MS
    shift = parse_rfc3339("2026-01-01T00:00:00Z") - start
    assert [t - shift for t in late] == backfill  # the same shop, shifted
