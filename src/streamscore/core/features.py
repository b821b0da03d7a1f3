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
_COUNTED = {
    EventType.SESSION_START: "sessions",
    EventType.PAGE_VIEW: "page_views",
    EventType.ADD_TO_CART: "carts",
    EventType.REMOVE_FROM_CART: "cart_removals",
    EventType.PURCHASE: "purchases",
    EventType.REFUND: "refunds",
    EventType.SUPPORT_TICKET: "tickets",
}


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

    @property
    def empty(self) -> bool:
        """True for a user we have never seen an event of."""
        return self.events == 0

    def apply(self, event: Event, lateness_ms: int) -> None:
        """Fold one event in; order-independent within ``lateness_ms``."""
        ts = event.ts
        if self.events == 0:
            self.first_seen_ms = self.last_seen_ms = self.decay_ref_ms = ts
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
            self._add_purchase(ts, lateness_ms)
        elif event.type is EventType.REFUND:
            self.refunded += amount
        self._add_decayed(ts, amount if event.type is EventType.PURCHASE else 0.0)

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
            self.last_final_purchase_ms = oldest

    def purchase_gap_stats(self) -> tuple[float, float]:
        """Mean and standard deviation of the days between consecutive purchases."""
        n_gaps = self.purchases - 1
        if n_gaps <= 0:
            return 0.0, 0.0
        mean = (self.last_purchase_ms - self.first_purchase_ms) / DAY_MS / n_gaps
        sumsq = self.final_gap_sumsq_days
        prev = self.last_final_purchase_ms
        for ts in self.recent_purchases:
            if prev:
                gap = (ts - prev) / DAY_MS
                sumsq += gap * gap
            prev = ts
        var = max(sumsq / n_gaps - mean * mean, 0.0)
        return mean, math.sqrt(var)

    def decayed_at(self, t_ms: int) -> tuple[list[float], list[float]]:
        """Decayed event counts and spend as of ``t_ms`` (never before the reference)."""
        elapsed = max(t_ms - self.decay_ref_ms, 0)
        ev = [
            _decay(v, elapsed, hl)
            for v, hl in zip(self.decayed_events, HALF_LIVES_DAYS, strict=True)
        ]
        sp = [
            _decay(v, elapsed, hl)
            for v, hl in zip(self.decayed_spend, HALF_LIVES_DAYS, strict=True)
        ]
        return ev, sp

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
STORED_FIELDS: dict[int, tuple[str, ...]] = {2: _V2_FIELDS, 3: _V2_FIELDS}
FEATURES_LAYOUT = max(STORED_FIELDS)
_CURRENT_FIELDS = STORED_FIELDS[FEATURES_LAYOUT]
_get_stored = operator.attrgetter(*_CURRENT_FIELDS)
# Positional construction is 6× faster than by keyword; it is used while the class's field
# order is the current layout's (a field added in the middle of the class falls back to
# keywords, still read by name, until the class order or the layout is brought in line).
_CLASS_ORDER = UserFeatures.__slots__ == _CURRENT_FIELDS


# Weak priors of the buy-till-you-die heuristic below: about one session every three days,
# and a dropout hazard of 1% a day. The models learn how much to trust the result.
PRIOR_SESSIONS = 1.0
PRIOR_DAYS = 3.0
PRIOR_DROPOUT_PER_DAY = 0.01


def quiet_probability(
    sessions: int, tenure_days: float, recency_days: float, horizon_days: float
) -> tuple[float, float]:
    """P(still active) and P(no visit within the horizon) under a Pareto/NBD-style model.

    Visits are Poisson at a rate estimated with a weak prior, and a user leaves for good at a
    constant hazard; silence since the last visit is evidence of having left. This is the
    classic "probability alive" of customer-base analysis, used here as a feature.
    """
    lam = (sessions + PRIOR_SESSIONS) / (tenure_days + PRIOR_DAYS)
    mu = PRIOR_DROPOUT_PER_DAY
    k = lam + mu
    stay = math.exp(-k * recency_days)
    p_alive = stay / (stay + mu / k * (1.0 - stay))
    quiet_if_alive = mu / k * (1.0 - math.exp(-k * horizon_days)) + math.exp(-k * horizon_days)
    return p_alive, 1.0 - p_alive * (1.0 - quiet_if_alive)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


_DECAYED_NAMES = tuple((f"events_hl{hl:g}d", f"spend_hl{hl:g}d") for hl in HALF_LIVES_DAYS)


def derive(f: UserFeatures, t_ms: int, horizon_days: float = 14.0) -> dict[str, float]:
    """Features as of event time ``t_ms``: what the models and segments look at."""
    day = DAY_MS
    recency = max(t_ms - f.last_seen_ms, 0) / day
    tenure = max(t_ms - f.first_seen_ms, 0) / day
    since_purchase = max(t_ms - f.last_purchase_ms, 0) / day if f.purchases else tenure
    session_span = (f.last_session_ms - f.first_session_ms) / day
    session_gap = session_span / (f.sessions - 1) if f.sessions > 1 else max(tenure, 1.0)
    gap_mean, gap_std = f.purchase_gap_stats()
    usual_gap = gap_mean if f.purchases > 1 else max(tenure, 1.0)
    dec_events, dec_spend = f.decayed_at(t_ms)
    p_alive, p_quiet = quiet_probability(f.sessions, tenure, recency, horizon_days)
    out = {
        "p_alive_logit": _logit(p_alive),
        "p_quiet_logit": _logit(p_quiet),
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
