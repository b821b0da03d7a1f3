"""The sparse shop of ``python -m bench sparse``: what the benchmark's figures rest on.

Its events must be ones the service accepts (else the run measures dead letters), in
event-time order (else late events), keyed by user, about one per user per month, and the
same for the same seed (else two runs measure different data).
"""

from __future__ import annotations

import itertools
from collections import Counter

from bench.sparse_shop import EVENT_MIX, MONTH_MS, SparseSpec, sparse_events, sparse_records

from streamscore.core.events import EventLimits, decode_event

SPEC = SparseSpec(users=2000, months=6, seed=3)


def test_the_same_seed_gives_the_same_records_and_another_seed_others() -> None:
    first = list(itertools.islice(sparse_records(SPEC), 3000))
    assert first == list(itertools.islice(sparse_records(SPEC), 3000))
    other = SparseSpec(users=SPEC.users, months=SPEC.months, seed=SPEC.seed + 1)
    assert first != list(itertools.islice(sparse_records(other), 3000))


def test_every_record_decodes_is_keyed_by_its_user_and_time_never_goes_back() -> None:
    now = SPEC.end_ms + 1
    limits = EventLimits()
    previous = SPEC.start_ms
    ids = set()
    records = 0
    for key, value in sparse_records(SPEC):
        records += 1
        event = decode_event(value, now_ms=now, limits=limits)  # raises on anything invalid
        assert key == event.user_id.encode()
        assert SPEC.start_ms <= previous <= event.ts < SPEC.end_ms
        previous = event.ts
        ids.add(event.event_id)
    assert len(ids) == records  # event ids are unique


def test_about_one_event_per_user_per_month_spread_over_users_and_months() -> None:
    events = list(sparse_events(SPEC))
    per_user_month = len(events) / SPEC.users / SPEC.months
    assert 0.95 < per_user_month < 1.05
    per_user = Counter(str(e["user_id"]) for e in events)
    # Gamma(2)-distributed rates: almost every user shows up in six months, none dominates.
    assert len(per_user) > 0.9 * SPEC.users
    assert max(per_user.values()) < 0.01 * len(events)
    months = Counter((e["ts"] - SPEC.start_ms) // MONTH_MS for e in events)  # type: ignore[operator]
    assert sorted(months) == list(range(6))
    assert min(months.values()) > 0.9 * SPEC.users


def test_the_event_mix_is_the_configured_one() -> None:
    events = list(sparse_events(SPEC))
    types = Counter(str(e["type"]) for e in events)
    for kind, share in EVENT_MIX:
        assert abs(types[kind] / len(events) - share) < 0.02, kind
    amounts = [e["amount"] for e in events if e["type"] == "purchase"]
    assert all(isinstance(a, float) and a > 0 for a in amounts)
    assert all("amount" not in e for e in events if e["type"] != "purchase")
