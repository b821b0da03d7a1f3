"""A simulated online shop whose users have known churn and spend behaviour.

Each user draws latent parameters at signup:

* a session rate ``lambda`` (sessions per day, gamma distributed),
* a dropout hazard ``mu`` (per day, gamma distributed): at an exponential time the user
  leaves for good and sends nothing ever again,
* a purchase probability per session ``p`` (beta distributed),
* a mean order value ``m`` (lognormal); each order is ``m`` times mean-one lognormal noise.

While alive, session starts form a Poisson process with rate ``lambda``. A session is a
burst of events within ``session_max_minutes``: ``session_start``, 1..``max_page_views`` page
views (short sessions more likely), maybe ``add_to_cart`` / ``remove_from_cart``, maybe one
``purchase``, maybe a ``support_ticket``; a purchase may be refunded (partly or fully) in the
user's next session.
A user's first event is ``signup``, followed seconds later by a first session. When a user
drops out mid-session, the session is cut at the dropout instant.

Optional drift: from ``drift_day`` on, every user's dropout hazard is multiplied by
``drift_factor`` and order values are divided by ``drift_value_factor`` (a competitor
opened). The ground truth and the oracle respect it.

The oracle (``ShopSimulator.oracle_churn_probability`` / ``oracle_expected_value``) is the
Bayes-optimal prediction from the true parameters and the observable history (the time of
the last activity), never from the latent dropout time. With drift, the hazard is piecewise
constant in time and the oracle integrates it exactly, piece by piece.

Everything here is pure: ``ShopSimulator.events`` yields dicts in event-time order (bytes only
for deliberately malformed records); callers encode and write them (``encode_event``).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import orjson

__all__ = [
    "BAD_RECORD_KINDS",
    "DAY_MS",
    "ShopSimulator",
    "SimulationConfig",
    "UserTruth",
    "encode_event",
    "stationary_churn_probability",
]

DAY_MS: Final = 86_400_000
_MINUTE_MS: Final = 60_000
_SECOND_MS: Final = 1_000
_YEAR_MS: Final = 365 * DAY_MS

CATEGORIES: Final = (
    "electronics",
    "books",
    "fashion",
    "home",
    "garden",
    "toys",
    "sports",
    "beauty",
    "grocery",
    "music",
    "pets",
    "office",
)
ITEMS_PER_CATEGORY: Final = 50

BAD_RECORD_KINDS: Final = (
    "not_json",
    "not_an_object",
    "unknown_type",
    "missing_user_id",
    "empty_event_id",
    "oversized_user_id",
    "amount_on_page_view",
    "negative_amount",
    "missing_amount",
    "non_finite_amount",
    "far_future_ts",
    "unparseable_ts",
    "oversized_properties",
)
"""The kinds of malformed records ``bad_fraction`` injects; each breaks DESIGN.md §2."""

Event = dict[str, object]


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """What to simulate. Times are in days from ``start_ms``; money in USD."""

    users: int = 2000
    days: float = 120.0
    seed: int = 7
    start_ms: int = 1767225600000  # 2026-01-01T00:00:00Z
    drift_day: float | None = None
    drift_factor: float = 3.0
    """Multiplier on every user's dropout hazard from ``drift_day`` on."""
    drift_value_factor: float = 1.5
    """Order values are divided by this from ``drift_day`` on."""
    bad_fraction: float = 0.0
    """Expected fraction of all yielded records that are malformed bytes (injected, see below)."""
    duplicate_fraction: float = 0.0
    """Expected fraction of all yielded records that re-emit a recent event unchanged."""
    duplicate_max_lag: int = 32
    """A duplicate repeats one of the last this-many good records (so it may arrive late)."""

    # Signups: a batch at day 0, the rest uniform over the first part of the period.
    initial_user_fraction: float = 0.25
    signup_window_fraction: float = 0.6

    # Latent per-user parameters.
    session_rate_mean: float = 0.35
    session_rate_shape: float = 1.5
    dropout_rate_mean: float = 0.012
    dropout_rate_shape: float = 2.0
    purchase_prob_mean: float = 0.25
    purchase_prob_concentration: float = 6.0
    order_value_median: float = 40.0
    order_value_sigma: float = 0.6
    order_noise_sigma: float = 0.4

    # Session content.
    max_page_views: int = 8
    session_max_minutes: float = 30.0
    add_to_cart_prob: float = 0.15
    """Per page view."""
    remove_from_cart_prob: float = 0.2
    """Per item added to the cart."""
    refund_prob: float = 0.05
    """Per purchase; the refund comes in the user's next session (if there is one)."""
    support_ticket_prob: float = 0.03
    """Per session."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.users < 0:
            problems.append("users must be >= 0")
        if not self.days > 0:
            problems.append("days must be > 0")
        if self.drift_day is not None and not self.drift_day >= 0:
            problems.append("drift_day must be >= 0")
        if not self.drift_factor > 0 or not self.drift_value_factor > 0:
            problems.append("drift_factor and drift_value_factor must be > 0")
        for name in ("bad_fraction", "duplicate_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1)")
        if self.bad_fraction + self.duplicate_fraction >= 1.0:
            problems.append("bad_fraction + duplicate_fraction must be < 1")
        if self.duplicate_max_lag < 1:
            problems.append("duplicate_max_lag must be >= 1")
        for name in ("initial_user_fraction", "signup_window_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1]")
        for name in (
            "session_rate_mean",
            "session_rate_shape",
            "dropout_rate_mean",
            "dropout_rate_shape",
            "purchase_prob_concentration",
            "order_value_median",
            "session_max_minutes",
        ):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0")
        if not 0.0 < self.purchase_prob_mean < 1.0:
            problems.append("purchase_prob_mean must be in (0, 1)")
        for name in (
            "add_to_cart_prob",
            "remove_from_cart_prob",
            "refund_prob",
            "support_ticket_prob",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1]")
        if self.order_value_sigma < 0 or self.order_noise_sigma < 0:
            problems.append("order value sigmas must be >= 0")
        if self.max_page_views < 1:
            problems.append("max_page_views must be >= 1")
        if problems:
            raise ValueError("invalid SimulationConfig: " + "; ".join(problems))

    @property
    def end_ms(self) -> int:
        """The end of the simulated period; no event is later."""
        return self.start_ms + round(self.days * DAY_MS)

    @property
    def drift_ms(self) -> int | None:
        """When the drift starts, or None without drift."""
        if self.drift_day is None:
            return None
        return self.start_ms + round(self.drift_day * DAY_MS)


@dataclass(frozen=True, slots=True)
class UserTruth:
    """A user's latent parameters and fate."""

    user_id: str
    signup_ms: int
    session_rate: float
    """Sessions per day while alive."""
    dropout_rate: float
    """Dropout hazard per day, before any drift."""
    purchase_prob: float
    """Probability of one purchase per session."""
    mean_order_value: float
    """Mean order value before any drift."""
    dropout_ms: int | None
    """When the user went silent for good; None if still alive at the end of the period."""


@dataclass(slots=True)
class _UserState:
    """What the event generator needs for one user while it emits the user's sessions."""

    user_id: str
    rng: random.Random
    session_rate: float
    purchase_prob: float
    mean_order_value: float
    favourite_category: int
    limit_ms: int  # min(dropout, end of period): nothing is emitted after it
    sessions: int = 0
    pending_refunds: list[tuple[str, float]] | None = None  # (purchase event_id, amount)


def encode_event(e: dict[str, object] | bytes) -> bytes:
    """One record value as published: compact JSON for events, malformed bytes unchanged."""
    if isinstance(e, bytes):
        return e
    return orjson.dumps(e)


class ShopSimulator:
    """Simulates a shop with ``config.users`` users; see the module docstring for the model.

    All users and their fates are drawn in ``__init__`` (``truth`` is complete at once).
    ``events()`` can be iterated several times and yields the same records each time.
    """

    def __init__(self, config: SimulationConfig) -> None:
        self._config = config
        self._end_ms = config.end_ms
        self._drift_ms = config.drift_ms
        master = random.Random(config.seed)
        c = config
        rate_scale = c.session_rate_mean / c.session_rate_shape
        dropout_scale = c.dropout_rate_mean / c.dropout_rate_shape
        beta_a = c.purchase_prob_mean * c.purchase_prob_concentration
        beta_b = (1.0 - c.purchase_prob_mean) * c.purchase_prob_concentration
        log_median = math.log(c.order_value_median)
        window_ms = c.signup_window_fraction * c.days * DAY_MS

        signups: list[int] = []
        n_initial = round(c.users * c.initial_user_fraction)
        for i in range(c.users):
            offset = 0.0 if i < n_initial else master.random() * window_ms
            signups.append(c.start_ms + int(offset))
        signups.sort()  # user indices follow signup order

        truth: dict[str, UserTruth] = {}
        self._seeds: list[int] = []
        self._favourites: list[int] = []
        for i, signup_ms in enumerate(signups):
            user_id = f"u{i:06d}"
            # Floors keep exponential draws finite; gamma draws that small are vanishingly rare.
            session_rate = max(1e-9, master.gammavariate(c.session_rate_shape, rate_scale))
            dropout_rate = max(1e-9, master.gammavariate(c.dropout_rate_shape, dropout_scale))
            purchase_prob = master.betavariate(beta_a, beta_b)
            mean_order_value = math.exp(log_median + c.order_value_sigma * master.gauss())
            dropout_ms = self._draw_dropout(signup_ms, dropout_rate, master.expovariate(1.0))
            truth[user_id] = UserTruth(
                user_id=user_id,
                signup_ms=signup_ms,
                session_rate=session_rate,
                dropout_rate=dropout_rate,
                purchase_prob=purchase_prob,
                mean_order_value=mean_order_value,
                dropout_ms=dropout_ms if dropout_ms <= self._end_ms else None,
            )
            self._seeds.append(master.getrandbits(64))
            self._favourites.append(master.randrange(len(CATEGORIES)))
        self._truth = truth
        self._noise_seed = master.getrandbits(64)

    # ------------------------------------------------------------------ ground truth

    @property
    def config(self) -> SimulationConfig:
        return self._config

    @property
    def end_ms(self) -> int:
        return self._end_ms

    @property
    def truth(self) -> Mapping[str, UserTruth]:
        """Every user's latent parameters and dropout time, by user_id."""
        return MappingProxyType(self._truth)

    def _draw_dropout(self, signup_ms: int, mu: float, exp1: float) -> int:
        """Invert the cumulative hazard (piecewise constant with drift) at an Exp(1) draw."""
        drift_ms = self._drift_ms
        factor = self._config.drift_factor
        if drift_ms is None or signup_ms >= drift_ms:
            rate = mu if drift_ms is None else mu * factor
            return signup_ms + _days_to_ms(exp1 / rate)
        before_days = (drift_ms - signup_ms) / DAY_MS
        if exp1 <= mu * before_days:
            return signup_ms + _days_to_ms(exp1 / mu)
        return drift_ms + _days_to_ms((exp1 - mu * before_days) / (mu * factor))

    def _segments(self, from_ms: int, to_ms: int, mu: float) -> list[tuple[float, float, float]]:
        """Split [from, to) at the drift: (length in days, dropout hazard, order value factor)."""
        drift_ms = self._drift_ms
        if drift_ms is None or to_ms <= drift_ms:
            return [((to_ms - from_ms) / DAY_MS, mu, 1.0)]
        after = (mu * self._config.drift_factor, 1.0 / self._config.drift_value_factor)
        if from_ms >= drift_ms:
            return [((to_ms - from_ms) / DAY_MS, *after)]
        return [((drift_ms - from_ms) / DAY_MS, mu, 1.0), ((to_ms - drift_ms) / DAY_MS, *after)]

    def _alive_given_silence(self, truth: UserTruth, as_of_ms: int, last_activity_ms: int) -> float:
        if as_of_ms < last_activity_ms:
            raise ValueError(f"as_of_ms {as_of_ms} is before last_activity_ms {last_activity_ms}")
        if as_of_ms == last_activity_ms:
            return 1.0
        segments = self._segments(last_activity_ms, as_of_ms, truth.dropout_rate)
        alive, dead = _silent_paths(truth.session_rate, segments)
        if alive <= 0.0:
            return 0.0
        return alive / (alive + dead)

    def _horizon_ms(self, as_of_ms: int, horizon_days: float) -> int:
        if not horizon_days > 0:
            raise ValueError(f"horizon_days must be > 0, got {horizon_days}")
        return as_of_ms + _days_to_ms(horizon_days)

    def oracle_churn_probability(
        self, user_id: str, as_of_ms: int, last_activity_ms: int, horizon_days: float
    ) -> float:
        """P(no event in (as_of, as_of + H]) given the true parameters and silence since last.

        ``last_activity_ms`` is the time of the user's last event at or before ``as_of_ms``;
        the user is known alive then. Exact under drift (piecewise-constant hazard). It
        predicts "no new session"; that equals the "no event" label when ``as_of_ms`` is not
        inside a session still in progress (sessions last at most ``session_max_minutes``).
        """
        truth = self._truth[user_id]
        p_alive = self._alive_given_silence(truth, as_of_ms, last_activity_ms)
        end = self._horizon_ms(as_of_ms, horizon_days)
        alive, dead = _silent_paths(
            truth.session_rate, self._segments(as_of_ms, end, truth.dropout_rate)
        )
        p_session = 1.0 - (alive + dead)  # P(some session in the horizon | alive at as_of)
        return min(1.0, max(0.0, 1.0 - p_alive * p_session))

    def oracle_expected_value(
        self, user_id: str, as_of_ms: int, last_activity_ms: int, horizon_days: float
    ) -> float:
        """Expected gross purchase amount in (as_of, as_of + H] (refunds not subtracted).

        P(alive | silence) x E[sessions while alive in the horizon] x p x m, with the drift's
        hazard and order-value change integrated exactly.
        """
        truth = self._truth[user_id]
        p_alive = self._alive_given_silence(truth, as_of_ms, last_activity_ms)
        end = self._horizon_ms(as_of_ms, horizon_days)
        survival = 1.0
        value_sessions = 0.0  # integral of P(alive) x order-value factor over the horizon
        for length, mu, value_factor in self._segments(as_of_ms, end, truth.dropout_rate):
            x = mu * length
            alive_time = length if x < 1e-12 else -math.expm1(-x) / mu
            value_sessions += survival * value_factor * alive_time
            survival *= math.exp(-x)
        return (
            p_alive
            * truth.session_rate
            * value_sessions
            * truth.purchase_prob
            * truth.mean_order_value
        )

    # ------------------------------------------------------------------ events

    def events(self) -> Iterator[dict[str, object] | bytes]:
        """All records in event-time order; bytes only for malformed records (``bad_fraction``).

        Users are merged with a heap holding one pending session start per user plus the
        events of sessions in progress, so memory stays O(users).
        Duplicates (``duplicate_fraction``) repeat a recent record and may arrive a little
        late; malformed records are injected *in addition to* the clean stream, which stays
        exactly the stream of the same seed without noise.
        """
        c = self._config
        if c.bad_fraction == 0.0 and c.duplicate_fraction == 0.0:
            yield from self._clean_events()
            return
        clean_share = 1.0 - c.bad_fraction - c.duplicate_fraction
        p_bad = c.bad_fraction / clean_share
        p_dup = c.duplicate_fraction / clean_share
        rng = random.Random(self._noise_seed)
        recent: deque[Event] = deque(maxlen=c.duplicate_max_lag)
        bad_count = 0
        for event in self._clean_events():
            # Poisson-thinned counts keep the expected fractions exact even above 50%.
            for _ in range(_poisson(rng, p_bad)):
                bad_count += 1
                yield _bad_record(rng, event, f"x{bad_count:09d}")
            for _ in range(_poisson(rng, p_dup)):
                if recent:
                    yield dict(recent[rng.randrange(len(recent))])  # equal, not shared
            recent.append(event)
            yield event

    def _clean_events(self) -> Iterator[Event]:
        c = self._config
        end_ms = self._end_ms
        heap: list[tuple[int, int, int, Event | None]] = []
        states: list[_UserState] = []
        seq = 0
        for i, truth in enumerate(self._truth.values()):
            limit = end_ms if truth.dropout_ms is None else min(truth.dropout_ms, end_ms)
            states.append(
                _UserState(
                    user_id=truth.user_id,
                    rng=random.Random(self._seeds[i]),
                    session_rate=truth.session_rate,
                    purchase_prob=truth.purchase_prob,
                    mean_order_value=truth.mean_order_value,
                    favourite_category=self._favourites[i],
                    limit_ms=limit,
                )
            )
            if truth.signup_ms <= limit:
                heap.append((truth.signup_ms, seq, i, None))
                seq += 1
        heapq.heapify(heap)

        counter = 0
        drift_ms = self._drift_ms
        value_after_drift = 1.0 / c.drift_value_factor
        heappush = heapq.heappush
        heappop = heapq.heappop
        max_session_ms = c.session_max_minutes * _MINUTE_MS
        noise_sigma = c.order_noise_sigma
        noise_mu = -0.5 * noise_sigma * noise_sigma  # mean-one lognormal noise
        n_items = len(CATEGORIES) * ITEMS_PER_CATEGORY

        while heap:
            ts, _, idx, ready = heappop(heap)
            if ready is not None:
                yield ready
                continue
            # A session (and, for a new user, the signup) starts at ts.
            st = states[idx]
            rng = st.rng
            uid = st.user_id
            limit = st.limit_ms
            # Each entry: (ts, type, extra fields).
            planned: list[tuple[int, str, Event | None]] = []
            if st.sessions == 0:
                planned.append((ts, "signup", None))
                ts += rng.randint(1, 30) * _SECOND_MS
            st.sessions += 1
            session_id = f"{uid}-s{st.sessions:05d}"

            actions: list[tuple[str, Event | None]] = []
            if st.pending_refunds:
                for order_id, paid in st.pending_refunds:
                    share = 1.0 if rng.random() < 0.7 else rng.uniform(0.2, 1.0)
                    refund = min(paid, round(paid * share, 2))
                    actions.append(
                        (
                            "refund",
                            {
                                "amount": refund,
                                "currency": "USD",
                                "properties": {"order_id": order_id},
                            },
                        )
                    )
                st.pending_refunds = None
            cart: list[tuple[str, str]] = []
            last_item = ("", "")
            # 1..max_page_views, short sessions more common (mean about 3.7 of 8).
            for _ in range(1 + int(c.max_page_views * rng.random() ** 1.5)):
                if rng.random() < 0.6:
                    cat = st.favourite_category
                    item = cat * ITEMS_PER_CATEGORY + int(ITEMS_PER_CATEGORY * rng.random() ** 2)
                else:
                    item = int(n_items * rng.random())
                    cat = item // ITEMS_PER_CATEGORY
                last_item = (f"i{item:05d}", CATEGORIES[cat])
                actions.append(("page_view", {"item_id": last_item[0], "category": last_item[1]}))
                if rng.random() < c.add_to_cart_prob:
                    cart.append(last_item)
                    actions.append(
                        ("add_to_cart", {"item_id": last_item[0], "category": last_item[1]})
                    )
                    if rng.random() < c.remove_from_cart_prob:
                        cart.pop()
                        actions.append(
                            (
                                "remove_from_cart",
                                {"item_id": last_item[0], "category": last_item[1]},
                            )
                        )
            purchase_amount = 0.0
            if rng.random() < st.purchase_prob:
                if not cart:
                    actions.append(
                        ("add_to_cart", {"item_id": last_item[0], "category": last_item[1]})
                    )
                order_value = st.mean_order_value * math.exp(noise_mu + noise_sigma * rng.gauss())
                if drift_ms is not None and ts >= drift_ms:
                    order_value *= value_after_drift
                purchase_amount = max(0.01, round(order_value, 2))
                actions.append(("purchase", {"amount": purchase_amount, "currency": "USD"}))
            if rng.random() < c.support_ticket_prob:
                actions.insert(rng.randint(0, len(actions)), ("support_ticket", None))

            # session_start at ts, then the actions at increasing offsets within the session.
            planned.append((ts, "session_start", None))
            span = max_session_ms * (0.1 + 0.9 * rng.random())
            offsets = sorted(rng.random() for _ in actions)
            for k, (kind, extra) in enumerate(actions):
                planned.append((ts + 1 + k + int(offsets[k] * span), kind, extra))

            purchase_id = ""
            for ev_ts, kind, extra in planned:
                if ev_ts > limit:
                    break  # the user dropped out (or the period ended) mid-session
                counter += 1
                event_id = f"e{counter:09d}"
                event: Event = {"event_id": event_id, "user_id": uid, "type": kind, "ts": ev_ts}
                if kind != "signup":
                    event["session_id"] = session_id
                if extra is not None:
                    event.update(extra)
                if kind == "purchase":
                    purchase_id = event_id
                heappush(heap, (ev_ts, seq, idx, event))
                seq += 1
            if purchase_id and rng.random() < c.refund_prob:
                st.pending_refunds = [(purchase_id, purchase_amount)]

            next_ms = ts + _days_to_ms(rng.expovariate(st.session_rate))
            if next_ms <= limit:
                heappush(heap, (next_ms, seq, idx, None))
                seq += 1


def stationary_churn_probability(
    session_rate: float, dropout_rate: float, silence_days: float, horizon_days: float
) -> float:
    """The oracle without drift: P(no session in the next H days | silent for r days).

    With k = lambda + mu: P(alive | silent r) = e^(-kr) / (e^(-kr) + mu/k (1 - e^(-kr))),
    P(no session in H | alive) = mu/k (1 - e^(-kH)) + e^(-kH), and
    churn = 1 - P(alive | r) (1 - P(no session in H | alive)).
    """
    if silence_days < 0 or not horizon_days > 0:
        raise ValueError("silence_days must be >= 0 and horizon_days > 0")
    p_alive = 1.0
    if silence_days > 0:
        alive, dead = _silent_paths(session_rate, [(silence_days, dropout_rate, 1.0)])
        p_alive = alive / (alive + dead) if alive > 0.0 else 0.0
    alive, dead = _silent_paths(session_rate, [(horizon_days, dropout_rate, 1.0)])
    return min(1.0, max(0.0, 1.0 - p_alive * (1.0 - (alive + dead))))


def _days_to_ms(days: float) -> int:
    # Very long waits (tiny rates) are clamped instead of overflowing float -> int.
    return int(min(days, 1e6) * DAY_MS)


def _silent_paths(lam: float, segments: list[tuple[float, float, float]]) -> tuple[float, float]:
    """For a user alive at the start: P(alive and no session throughout), P(died before any).

    Sessions arrive at rate ``lam``; the dropout hazard is constant within each segment.
    """
    alive = 1.0
    dead = 0.0
    for length, mu, _ in segments:
        k = lam + mu
        if k <= 0.0:
            continue
        decay = math.exp(-k * length)
        dead += alive * (mu / k) * (1.0 - decay)
        alive *= decay
    return alive, dead


def _poisson(rng: random.Random, mean: float) -> int:
    """A small Poisson draw (Knuth); ``mean`` is a per-record rate, well below 10."""
    if mean <= 0.0:
        return 0
    threshold = math.exp(-mean)
    n = 0
    prod = rng.random()
    while prod > threshold:
        n += 1
        prod *= rng.random()
    return n


def _bad_record(rng: random.Random, event: Event, bad_id: str) -> bytes:
    """A malformed record modelled on a real event (with a fresh event_id)."""
    kind = BAD_RECORD_KINDS[rng.randrange(len(BAD_RECORD_KINDS))]
    base: Event = {
        "event_id": bad_id,
        "user_id": event["user_id"],
        "type": event["type"],
        "ts": event["ts"],
    }
    purchase: Event = {**base, "type": "purchase", "amount": 19.99, "currency": "USD"}
    if kind == "not_json":
        return orjson.dumps(base)[:-7] + b"\x00garbage"
    if kind == "not_an_object":
        return orjson.dumps([base["user_id"], base["type"], base["ts"]])
    if kind == "unknown_type":
        return orjson.dumps({**base, "type": "wishlist_add"})
    if kind == "missing_user_id":
        return orjson.dumps({k: v for k, v in base.items() if k != "user_id"})
    if kind == "empty_event_id":
        return orjson.dumps({**base, "event_id": ""})
    if kind == "oversized_user_id":
        return orjson.dumps({**base, "user_id": "u" * 200})
    if kind == "amount_on_page_view":
        return orjson.dumps({**base, "type": "page_view", "amount": 5.0})
    if kind == "negative_amount":
        return orjson.dumps({**purchase, "amount": -12.5})
    if kind == "missing_amount":
        return orjson.dumps({k: v for k, v in purchase.items() if k != "amount"})
    if kind == "non_finite_amount":
        return orjson.dumps(purchase).replace(b"19.99", b"NaN")
    if kind == "far_future_ts":
        ts = base["ts"]
        assert isinstance(ts, int)
        return orjson.dumps({**base, "ts": ts + 100 * _YEAR_MS})
    if kind == "unparseable_ts":
        return orjson.dumps({**base, "ts": "yesterday at noon"})
    # oversized_properties
    return orjson.dumps({**base, "properties": {"blob": "x" * 5000}})
