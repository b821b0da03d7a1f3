"""A wide, sparse shop: many customers, each heard from about once a month (issue 13).

Real shops have millions of customers and most of them are silent in any given month, which
makes silent-user work (rescoring silences, resolving labels) the scorer's normal case rather
than the demo's dense sessions. This generator streams such a shop in event-time order:

- each user has a mean rate of ``rate_per_month`` events (default 1), drawn once from a gamma
  distribution with shape ``rate_shape`` (2: some users several times as active as others,
  some nearly silent), so the population mean stays the configured rate;
- together the users form one Poisson process of rate ``users × rate`` per month, and each of
  its events belongs to a user picked in proportion to their rate (the superposition of the
  users' own Poisson processes), so events come out in time order with no sorting and no
  per-event memory beyond a table of the users' cumulative rates (8 bytes per user);
- each event is a single interaction (a page view, a session start, an add to cart, a
  purchase with an amount, a support ticket), valid per DESIGN.md §2.

Everything here is pure and deterministic for a seed: ``sparse_records`` yields the (key,
value) records a producer sends, key = user id, value = the event's compact JSON.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

from streamscore.simulator import CATEGORIES, ITEMS_PER_CATEGORY, encode_event

DAY_MS = 86_400_000
MONTH_MS = round(365.25 / 12 * DAY_MS)  # a mean calendar month
START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z: event time is fixed, not the clock's

# (type, share) of the events; purchases carry an amount, the others none.
EVENT_MIX: tuple[tuple[str, float], ...] = (
    ("page_view", 0.50),
    ("session_start", 0.17),
    ("add_to_cart", 0.12),
    ("purchase", 0.15),
    ("remove_from_cart", 0.03),
    ("support_ticket", 0.03),
)
_WITH_ITEM = frozenset({"page_view", "add_to_cart", "remove_from_cart"})


@dataclass(frozen=True, slots=True)
class SparseSpec:
    """The shop: ``users`` customers over ``months`` of event time from ``start_ms``."""

    users: int = 1_000_000
    months: float = 12.0
    seed: int = 13
    rate_per_month: float = 1.0
    rate_shape: float = 2.0
    start_ms: int = START_MS

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError("users must be at least 1")
        if self.months <= 0 or self.rate_per_month <= 0 or self.rate_shape <= 0:
            raise ValueError("months, rate_per_month and rate_shape must be positive")

    @property
    def end_ms(self) -> int:
        return self.start_ms + round(self.months * MONTH_MS)

    @property
    def expected_events(self) -> int:
        return round(self.users * self.months * self.rate_per_month)


def user_id(index: int) -> str:
    return f"u{index:07d}"


def _cumulative_rates(spec: SparseSpec, rng: random.Random) -> array[float]:
    """Each user's relative rate (gamma, mean 1), accumulated for a weighted pick by bisection."""
    shape = spec.rate_shape
    draws = (rng.gammavariate(shape, 1.0 / shape) for _ in range(spec.users))
    return array("d", itertools.accumulate(draws))


def sparse_events(spec: SparseSpec) -> Iterator[dict[str, object]]:
    """The shop's events as dicts, in event-time order (ties keep generation order)."""
    rng = random.Random(spec.seed)
    cumulative = _cumulative_rates(spec, rng)
    total_weight = cumulative[-1]
    per_ms = spec.users * spec.rate_per_month / MONTH_MS  # events per millisecond, all users
    kinds = [k for k, _ in EVENT_MIX]
    kind_cum = list(itertools.accumulate(share for _, share in EVENT_MIX))
    last = spec.users - 1
    last_kind = len(kinds) - 1
    n_items = len(CATEGORIES) * ITEMS_PER_CATEGORY
    t = float(spec.start_ms)
    end = spec.end_ms
    for n in itertools.count():
        t += rng.expovariate(per_ms)
        ts = int(t)
        if ts >= end:
            return
        index = min(bisect.bisect_right(cumulative, rng.random() * total_weight), last)
        kind = kinds[min(bisect.bisect_right(kind_cum, rng.random() * kind_cum[-1]), last_kind)]
        event: dict[str, object] = {
            "event_id": f"s{spec.seed}-{n:010d}",
            "user_id": user_id(index),
            "type": kind,
            "ts": ts,
        }
        if kind in _WITH_ITEM:
            item = int(n_items * rng.random())
            event["item_id"] = f"i{item:05d}"
            event["category"] = CATEGORIES[item // ITEMS_PER_CATEGORY]
        elif kind == "purchase":
            # Lognormal order values around 40 (median 33).
            event["amount"] = max(0.01, round(math.exp(rng.gauss(math.log(33.0), 0.6)), 2))
            event["currency"] = "USD"
        yield event


def sparse_records(spec: SparseSpec) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) records as the shop's producers send them: keyed by user id."""
    for event in sparse_events(spec):
        yield str(event["user_id"]).encode(), encode_event(event)
