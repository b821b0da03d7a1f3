"""Per-user online features: O(1) state updated by events, derived at any event time.

Every update is order-independent for events that arrive within the allowed lateness, so a
replay, a rebalance or a jittery producer gives the same state:

- counts, sums, minima and maxima commute;
- decayed counts are stored as their value at ``decay_ref_ms`` (the latest event time seen) and
  an older event is added with its weight already decayed to that reference;
- the purchase-gap variance keeps the purchases inside the lateness window in a small sorted
  buffer and only folds a gap into the running sum of squares once no in-lateness event can
  land before it any more.
"""

from __future__ import annotations

import bisect
import math
import operator
from dataclasses import dataclass, field
from typing import Any

from streamscore.core.events import Event, EventType
from streamscore.core.timeutil import DAY_MS

HALF_LIVES_DAYS: tuple[float, ...] = (7.0, 30.0)
MAX_PURCHASE_BUFFER = 16
# Exact while fewer visits than this fall within the lateness window (with the default five
# minutes, one or two): beyond it the oldest are taken as final early.
MAX_RECENT_VISITS = 48
# Events closer than this to the one before belong to the same occasion (a visit, an order):
# the usual 30-minute session timeout. Buy-till-you-die models count occasions, not clicks.
OCCASION_GAP_MS = 30 * 60_000
_COUNTED = {
    EventType.SESSION_START: "sessions",
    EventType.PAGE_VIEW: "page_views",
    EventType.ADD_TO_CART: "carts",
    EventType.REMOVE_FROM_CART: "cart_removals",
    EventType.PURCHASE: "purchases",
    EventType.REFUND: "refunds",
    EventType.SUPPORT_TICKET: "tickets",
}


def _merge_run(runs: list[int], ts: int, gap: int) -> None:
    """Add ``ts`` to sorted, disjoint [start, end] runs whose events are ``gap`` apart or
    less, merging the runs it joins (the result does not depend on insertion order)."""
    i = 0
    while i < len(runs) and runs[i + 1] + gap < ts:
        i += 2
    if i == len(runs) or ts + gap < runs[i]:
        runs[i:i] = [ts, ts]  # a visit of its own
        return
    runs[i] = min(runs[i], ts)
    runs[i + 1] = max(runs[i + 1], ts)
    while i + 2 < len(runs) and runs[i + 2] <= runs[i + 1] + gap:
        runs[i + 1] = max(runs[i + 1], runs[i + 3])
        del runs[i + 2 : i + 4]


def _occasions(final: int, last_final_ms: int, recent: list[int]) -> int:
    """Occasions among final events plus those in the (sorted) buffer of recent ones."""
    count, prev = final, last_final_ms
    for ts in recent:
        if not count or ts > prev + OCCASION_GAP_MS:
            count += 1
        prev = max(prev, ts)
    return count


# Two half-lives, as the stored layout has (unpacking fails at import if that changes).
_SHORT_SPAN_MS, _LONG_SPAN_MS = (hl * DAY_MS for hl in HALF_LIVES_DAYS)


def _decay(value: float, elapsed_ms: float, half_life_days: float) -> float:
    return value * math.exp2(-elapsed_ms / (half_life_days * DAY_MS))


@dataclass(slots=True)
class UserFeatures:
    """The O(1) running aggregates of one user's events."""

    first_seen_ms: int = 0
    last_seen_ms: int = 0
    signup_ms: int = 0
    events: int = 0
    sessions: int = 0
    page_views: int = 0
    carts: int = 0
    cart_removals: int = 0
    purchases: int = 0
    refunds: int = 0
    tickets: int = 0
    spend: float = 0.0
    refunded: float = 0.0
    first_session_ms: int = 0
    last_session_ms: int = 0
    first_purchase_ms: int = 0
    last_purchase_ms: int = 0
    decay_ref_ms: int = 0
    decayed_events: list[float] = field(default_factory=lambda: [0.0] * len(HALF_LIVES_DAYS))
    decayed_spend: list[float] = field(default_factory=lambda: [0.0] * len(HALF_LIVES_DAYS))
    # Purchase gaps: gaps between purchases older than the lateness window are final.
    final_gaps: int = 0
    final_gap_sumsq_days: float = 0.0
    last_final_purchase_ms: int = 0
    recent_purchases: list[int] = field(default_factory=list)
    # Occasions (state format v4): visits of any kind and distinct orders, an event more than
    # OCCASION_GAP_MS after the one before it opening a new one. Like the purchase gaps, the
    # count is final for what is older than the lateness window, and worked out for the rest
    # from a small sorted buffer (visits as [start, end, start, end, ...] runs of events), so
    # it does not depend on arrival order.
    visits_final: int = 0
    last_final_event_ms: int = 0  # the end of the latest final visit
    recent_visits: list[int] = field(default_factory=list)
    purchase_occasions_final: int = 0
    last_browse_ms: int = 0  # the latest event that is not a purchase (browsing, carts...)

    @property
    def empty(self) -> bool:
        """True for a user we have never seen an event of."""
        return self.events == 0

    def apply(self, event: Event, lateness_ms: int) -> None:
        """Fold one event in; order-independent within ``lateness_ms``."""
        self._count(event)
        if event.type is EventType.PURCHASE:
            self._add_purchase(event.ts, lateness_ms)
        self._add_event_time(event.ts, lateness_ms)

    def apply_late(self, event: Event, lateness_ms: int) -> None:
        """Fold in an event from behind its partition's watermark (``late_events=apply``).

        Counts, sums, first and last times, and the decayed aggregates take it exactly as
        ``apply`` would (recency moves only if it is the user's newest event). Where it falls
        among the detail the state still keeps (the purchases and visits within the
        lateness of the user's latest ones), it is folded in exactly too. Older than that,
        only sums are left, so a purchase before the latest settled one is:

        - an order of its own unless within ``OCCASION_GAP_MS`` of the first or the latest
          settled purchase;
        - in the mean gap exactly (it is the purchase span over the gaps); in the spread of
          gaps only when it is the user's first purchase (its gap to the next one is known),
          otherwise the spread is that of the gaps known so far;

        and an event before the latest settled visit is a visit of its own unless within
        ``OCCASION_GAP_MS`` of the user's first event or of the end of that visit.
        """
        ts = event.ts
        first_seen, first_purchase = self.first_seen_ms, self.first_purchase_ms
        self._count(event)
        if event.type is EventType.PURCHASE:
            if self.last_final_purchase_ms and ts < self.last_final_purchase_ms:
                self._add_settled_purchase(ts, first_purchase)
            else:
                self._add_purchase(ts, lateness_ms)
        if self.visits_final and ts < self.last_final_event_ms - OCCASION_GAP_MS:
            if abs(ts - first_seen) > OCCASION_GAP_MS:
                self.visits_final += 1
        else:
            self._add_event_time(ts, lateness_ms)

    def _add_settled_purchase(self, ts: int, first_purchase_ms: int) -> None:
        """A purchase older than the latest settled one (see ``apply_late``)."""
        gap = OCCASION_GAP_MS
        self.first_purchase_ms = min(first_purchase_ms, ts)
        if ts < first_purchase_ms:
            days = (first_purchase_ms - ts) / DAY_MS
            self.final_gaps += 1
            self.final_gap_sumsq_days += days * days
        if abs(ts - first_purchase_ms) > gap and ts < self.last_final_purchase_ms - gap:
            self.purchase_occasions_final += 1

    def _count(self, event: Event) -> None:
        """Counts, sums, first and last times and decayed aggregates: any order gives the same."""
        ts = event.ts
        if self.events == 0:
            self.first_seen_ms = self.last_seen_ms = self.decay_ref_ms = ts
        if event.type is not EventType.PURCHASE:
            self.last_browse_ms = max(self.last_browse_ms, ts)
        self.events += 1
        self.first_seen_ms = min(self.first_seen_ms, ts)
        self.last_seen_ms = max(self.last_seen_ms, ts)
        counter = _COUNTED.get(event.type)
        if counter is not None:
            setattr(self, counter, getattr(self, counter) + 1)
        amount = event.amount or 0.0
        if event.type is EventType.SIGNUP:
            self.signup_ms = ts if self.signup_ms == 0 else min(self.signup_ms, ts)
        elif event.type is EventType.SESSION_START:
            self.first_session_ms = ts if self.sessions == 1 else min(self.first_session_ms, ts)
            self.last_session_ms = max(self.last_session_ms, ts)
        elif event.type is EventType.PURCHASE:
            self.spend += amount
        elif event.type is EventType.REFUND:
            self.refunded += amount
        self._add_decayed(ts, amount if event.type is EventType.PURCHASE else 0.0)

    def _add_event_time(self, ts: int, lateness_ms: int) -> None:
        """Merge ``ts`` into the runs of recent visits, then finalise the runs that ended
        before the lateness window (no event can land in them any more)."""
        gap = OCCASION_GAP_MS
        runs = self.recent_visits
        if self.visits_final and ts <= self.last_final_event_ms + gap:
            # Part of the latest final visit; it may now reach the first recent one.
            self.last_final_event_ms = max(self.last_final_event_ms, ts)
            while runs and runs[0] <= self.last_final_event_ms + gap:
                self.last_final_event_ms = max(self.last_final_event_ms, runs[1])
                del runs[:2]
        else:
            _merge_run(runs, ts, gap)
        horizon = self.last_seen_ms - lateness_ms
        while runs and (runs[1] < horizon or len(runs) > 2 * MAX_RECENT_VISITS):
            self.visits_final += 1
            self.last_final_event_ms = runs[1]
            del runs[:2]

    @property
    def visits(self) -> int:
        """Occasions of any activity: runs of events less than the gap apart."""
        return self.visits_final + len(self.recent_visits) // 2

    @property
    def purchase_occasions(self) -> int:
        """Distinct orders: purchases more than the gap after the one before."""
        return _occasions(
            self.purchase_occasions_final, self.last_final_purchase_ms, self.recent_purchases
        )

    def _add_decayed(self, ts: int, amount: float) -> None:
        events, spend = self.decayed_events, self.decayed_spend
        if ts > self.decay_ref_ms:
            elapsed = ts - self.decay_ref_ms
            for i, hl in enumerate(HALF_LIVES_DAYS):
                factor = math.exp2(-elapsed / (hl * DAY_MS))
                events[i] *= factor
                spend[i] *= factor
            self.decay_ref_ms = ts
        lag = self.decay_ref_ms - ts
        for i, hl in enumerate(HALF_LIVES_DAYS):
            weight = math.exp2(-lag / (hl * DAY_MS)) if lag else 1.0
            events[i] += weight
            if amount:
                spend[i] += amount * weight

    def _add_purchase(self, ts: int, lateness_ms: int) -> None:
        self.first_purchase_ms = ts if self.purchases == 1 else min(self.first_purchase_ms, ts)
        self.last_purchase_ms = max(self.last_purchase_ms, ts)
        bisect.insort(self.recent_purchases, ts)
        horizon = self.last_purchase_ms - lateness_ms
        buf = self.recent_purchases
        while buf and (buf[0] < horizon or len(buf) > MAX_PURCHASE_BUFFER):
            oldest = buf.pop(0)
            if self.last_final_purchase_ms:
                gap = (oldest - self.last_final_purchase_ms) / DAY_MS
                self.final_gaps += 1
                self.final_gap_sumsq_days += gap * gap
            if (
                not self.purchase_occasions_final
                or oldest > self.last_final_purchase_ms + OCCASION_GAP_MS
            ):
                self.purchase_occasions_final += 1
            self.last_final_purchase_ms = oldest

    def purchase_gap_stats(self) -> tuple[float, float]:
        """Mean and standard deviation of the days between consecutive purchases."""
        n_gaps = self.purchases - 1
        if n_gaps <= 0:
            return 0.0, 0.0
        mean = (self.last_purchase_ms - self.first_purchase_ms) / DAY_MS / n_gaps
        # The gaps in the sum of squares: all ``n_gaps`` unless a late purchase fell between
        # settled ones (``apply_late``), whose two gaps are not known.
        sumsq, known = self.final_gap_sumsq_days, self.final_gaps
        prev = self.last_final_purchase_ms
        for ts in self.recent_purchases:
            if prev:
                gap = (ts - prev) / DAY_MS
                sumsq += gap * gap
                known += 1
            prev = ts
        var = max(sumsq / known - mean * mean, 0.0) if known else 0.0
        return mean, math.sqrt(var)

    def decayed_at(self, t_ms: int) -> tuple[list[float], list[float]]:
        """Decayed event counts and spend as of ``t_ms`` (never before the reference)."""
        # Each half-life's factor once for counts and spend alike, computed as ``_decay``
        # does (so the same values) and unrolled: every score and snapshot asks for these,
        # and comprehensions cost more than the arithmetic here.
        elapsed = -max(t_ms - self.decay_ref_ms, 0)
        short, long = math.exp2(elapsed / _SHORT_SPAN_MS), math.exp2(elapsed / _LONG_SPAN_MS)
        e_short, e_long = self.decayed_events
        s_short, s_long = self.decayed_spend
        return [e_short * short, e_long * long], [s_short * short, s_long * long]

    def to_dict(self) -> dict[str, Any]:
        """Every field by its name (for comparisons and debugging; not the stored form)."""
        return {name: getattr(self, name) for name in self.__slots__}

    def to_stored(self) -> tuple[Any, ...]:
        """The stored form: the values of ``STORED_FIELDS[FEATURES_LAYOUT]``, in its order."""
        return _get_stored(self)

    @classmethod
    def from_stored(cls, values: list[Any], layout: int = 0) -> tuple[UserFeatures, list[Any]]:
        """Inverse of ``to_stored`` for values stored by the state format ``layout``.

        Each value is read by the name its layout gives its position (``STORED_FIELDS``),
        never by the class's field order. An older layout's missing fields take their
        defaults; the values past the known ones (a newer writer appended them) come back
        apart, to be stored again unchanged.
        """
        fields = STORED_FIELDS.get(layout, _CURRENT_FIELDS)
        n = len(fields)
        if fields is _CURRENT_FIELDS and _CLASS_ORDER:
            if len(values) == n:
                return cls(*values), []
            return cls(*values[:n]), values[n:]
        named = dict(zip(fields, values, strict=False))
        return cls(**{a: v for a, v in named.items() if a in cls.__slots__}), values[n:]


# The fields of UserFeatures as each state format stores them, by position. A layout only
# ever appends to the one before (an older reader reads the fields it knows and keeps the
# rest); a field is never moved or dropped without raising state.MIN_READER. Format v2
# (the positional format before named fields) stored the same fields in the same order as v3.
_V2_FIELDS = (
    "first_seen_ms",
    "last_seen_ms",
    "signup_ms",
    "events",
    "sessions",
    "page_views",
    "carts",
    "cart_removals",
    "purchases",
    "refunds",
    "tickets",
    "spend",
    "refunded",
    "first_session_ms",
    "last_session_ms",
    "first_purchase_ms",
    "last_purchase_ms",
    "decay_ref_ms",
    "decayed_events",
    "decayed_spend",
    "final_gaps",
    "final_gap_sumsq_days",
    "last_final_purchase_ms",
    "recent_purchases",
)
STORED_FIELDS: dict[int, tuple[str, ...]] = {
    2: _V2_FIELDS,
    3: _V2_FIELDS,
    4: (
        *_V2_FIELDS,
        "visits_final",
        "last_final_event_ms",
        "recent_visits",
        "purchase_occasions_final",
        "last_browse_ms",
    ),
}
FEATURES_LAYOUT = max(STORED_FIELDS)
_CURRENT_FIELDS = STORED_FIELDS[FEATURES_LAYOUT]
_get_stored = operator.attrgetter(*_CURRENT_FIELDS)
# Positional construction is 6× faster than by keyword; it is used while the class's field
# order is the current layout's (a field added in the middle of the class falls back to
# keywords, still read by name, until the class order or the layout is brought in line).
_CLASS_ORDER = UserFeatures.__slots__ == _CURRENT_FIELDS


_DECAYED_NAMES = tuple((f"events_hl{hl:g}d", f"spend_hl{hl:g}d") for hl in HALF_LIVES_DAYS)


# The purchase-gap statistics and the decayed counts and spend as of a time: what both
# ``derive`` and the models' inputs need, computed once when a score asks for both.
DerivedParts = tuple[tuple[float, float], tuple[list[float], list[float]]]


def derived_parts(f: UserFeatures, t_ms: int) -> DerivedParts:
    """``(purchase gap mean and sd, (decayed counts, decayed spend))`` as of ``t_ms``."""
    return f.purchase_gap_stats(), f.decayed_at(t_ms)


def derive(f: UserFeatures, t_ms: int, parts: DerivedParts | None = None) -> dict[str, float]:
    """Features as of event time ``t_ms``: what segments, lifecycle and drift look at."""
    day = DAY_MS
    recency = max(t_ms - f.last_seen_ms, 0) / day
    tenure = max(t_ms - f.first_seen_ms, 0) / day
    since_purchase = max(t_ms - f.last_purchase_ms, 0) / day if f.purchases else tenure
    session_span = (f.last_session_ms - f.first_session_ms) / day
    session_gap = session_span / (f.sessions - 1) if f.sessions > 1 else max(tenure, 1.0)
    (gap_mean, gap_std), (dec_events, dec_spend) = parts or derived_parts(f, t_ms)
    usual_gap = gap_mean if f.purchases > 1 else max(tenure, 1.0)
    out = {
        "recency_days": recency,
        "tenure_days": tenure,
        "days_since_purchase": since_purchase,
        "events": float(f.events),
        "sessions": float(f.sessions),
        "purchases": float(f.purchases),
        "session_rate": f.sessions / max(tenure, 1.0),
        "session_gap_days": session_gap,
        "session_gap_ratio": recency / max(session_gap, 0.01),
        "purchase_gap_days": gap_mean,
        "purchase_gap_std_days": gap_std,
        "purchase_gap_ratio": since_purchase / max(usual_gap, 0.01),
        "spend": f.spend,
        "avg_order_value": f.spend / f.purchases if f.purchases else 0.0,
        "refund_rate": f.refunds / f.purchases if f.purchases else 0.0,
        "cart_to_purchase": f.purchases / f.carts if f.carts else 0.0,
        "views_per_session": f.page_views / f.sessions if f.sessions else 0.0,
        "tickets": float(f.tickets),
    }
    for names, ev, sp in zip(_DECAYED_NAMES, dec_events, dec_spend, strict=True):
        out[names[0]] = ev
        out[names[1]] = sp
    return out


def btyd_summary(
    f: UserFeatures, t_ms: int, purchase_activity: bool
) -> tuple[float, float, float, float, float]:
    """``(x, t_x, T, px, pt_x)`` as of ``t_ms``, in days since the customer's first event.

    The first event is the customer's "birth" in buy-till-you-die terms. ``x`` counts repeat
    occasions of the churn-defining activity after it (visits when any activity counts,
    purchases when only purchases do: a first purchase that is the first event is the
    birth, not a repeat) and ``t_x`` is the time of the latest; ``px``/``pt_x`` are the same
    for purchases, the value model's process.
    """
    birth = f.first_seen_ms
    big_t = max(t_ms - birth, 0) / DAY_MS
    birth_buys = f.purchases > 0 and f.first_purchase_ms - birth <= OCCASION_GAP_MS
    px = max(f.purchase_occasions - (1 if birth_buys else 0), 0)
    pt_x = min(max(f.last_purchase_ms - birth, 0) / DAY_MS, big_t) if px else 0.0
    if purchase_activity:
        return float(px), pt_x, big_t, float(px), pt_x
    x = max(f.visits - 1, 0)
    t_x = min(max(f.last_seen_ms - birth, 0) / DAY_MS, big_t) if x else 0.0
    return float(x), t_x, big_t, float(px), pt_x
