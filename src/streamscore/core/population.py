"""The population side of the buy-till-you-die model: a bounded sample of customers and the
parameters fitted to it.

Each observation is one customer's summary as of some event time: repeat occasions of the
churn-defining activity and of purchases, their timing, and orders with their mean value. A
summary as of time ``t`` is the customer's likelihood for a calibration period ending at
``t``, so summaries taken at different times can be fitted together; the latest one of each
customer replaces the earlier.

The sample keeps the ``size`` customers with the smallest key hash (a bottom-k sample): a
uniform random sample of distinct customers, the same whatever order they arrive in, and
cheap to maintain. Refits run every ``refit_ms`` of event time, warm-started from the last,
and sooner while the shop is young: whenever the event time the sample spans or the number
of customers in it has doubled since the last fit. Scores before the first fit use a prior
that is right for no shop in particular (a demo shop visited three times a week is scored
as one visited monthly, and its first week's churn scores came out three times too high);
the doubling schedule replaces it within hours of data instead of a week, at a cost of a
logarithmic number of extra fits on small samples. A first fit waits for
``MIN_CUSTOMERS_TO_FIT`` customers with a repeat occasion, without which the rates are not
identified.

A fit measures each customer's silence up to how far *their own* input partition has been
read (the latest event time the sample saw from it), not up to the fit's event time: Kafka
hands a consumer partitions unevenly (a backlog comes in chunks per partition), and a
customer whose partition lags would otherwise look silent for the lag, which biases the
dropout rate and puts the fit on a costly ridge (``python -m bench.fit_order``).
"""

from __future__ import annotations

import hashlib
import heapq
import math
from dataclasses import dataclass
from operator import attrgetter

import numpy as np

from streamscore.core.btyd import GammaGamma, ParetoNbd, fit_gamma_gamma, fit_pareto

# Before the first fit: about one transaction a month and an expected lifetime of a few
# months, each with a spread as wide as its mean. Only used until data exists.
PRIOR = ParetoNbd(r=1.0, alpha=30.0, s=1.0, beta=120.0)
MIN_CUSTOMERS_TO_FIT = 30
MIN_BUYERS_TO_FIT_SPEND = 10
_ROW = attrgetter("x", "t_x", "T", "px", "pt_x", "orders", "mean_order")


@dataclass(frozen=True, slots=True)
class Observation:
    """A customer's summary as of their latest event (times in days since their first).

    Observations are refreshed at every event of a sampled customer, so between two of them
    only the time observed grows: a fit at a later time uses ``T`` plus the time since.
    """

    x: float  # repeat occasions of the churn-defining activity
    t_x: float
    T: float
    px: float  # repeat purchase occasions (the value model's process)
    pt_x: float
    orders: float
    mean_order: float


class PopulationModel:
    """Bounded customer sample, fitted Pareto/NBD (activity and purchases), Gamma-Gamma."""

    def __init__(
        self, *, size: int = 20_000, refit_ms: int = 7 * 86_400_000, same_process: bool = False
    ) -> None:
        self.size = size
        self.refit_ms = refit_ms
        self.same_process = same_process  # churn activity is purchasing: one fit serves both
        self.sample: dict[int, tuple[Observation, int, int]] = {}  # (obs, at, partition)
        self.clock: dict[int, int] = {}  # latest event time seen from each partition
        self._heap: list[int] = []  # max-heap (negated) of the sample's hashes
        self.activity = PRIOR
        self.purchases = PRIOR
        self.spend: GammaGamma | None = None
        self.fitted_at_ms = 0
        self.fitted_size = 0
        self.first_ms: int | None = None  # the earliest event time observed
        self.fitted_span_ms = 0  # event time the sample spanned at the last fit
        self.repeaters = 0  # customers in the sample with a repeat occasion
        self.fits = 0
        self.changed = 0
        self._order_sum = 0.0
        self._order_n = 0.0  # orders and their total value in the sample, at the last fit

    def wants(self, key_hash: int) -> bool:
        """Whether an observation of this customer would enter or update the sample."""
        return len(self.sample) < self.size or key_hash <= -self._heap[0]

    def __setstate__(self, state: dict[str, object]) -> None:
        """Read a model pickled before per-partition clocks: its customers' partition is
        unknown (-1), measured up to the fit's time as they were then."""
        self.__dict__.update(state)
        if "clock" not in state:
            self.clock = {}
            self.sample = {k: (e[0], e[1], -1) for k, e in self.sample.items()}
        if "repeaters" not in state:  # before the young-shop schedule: a fitted one is not young
            self.first_ms = min((e[1] for e in self.sample.values()), default=None)
            self.fitted_span_ms = self.refit_ms if self.fits else 0
            self.repeaters = sum(e[0].x >= 1 for e in self.sample.values())

    def observe(self, key_hash: int, obs: Observation, t_ms: int, partition: int = -1) -> None:
        """Record a customer's summary as of event time ``t_ms``, read from ``partition``;
        refit when ``refit_ms`` of event time has passed since the last fit.

        Observations arrive in about event-time order (a batch's events are seconds apart
        in a live stream, at most ``replay_batch_span`` in a replay), so the sample at a fit
        reflects the population up to then.
        """
        entry = (obs, t_ms, partition)
        if t_ms > self.clock.get(partition, 0):
            self.clock[partition] = t_ms
        if self.first_ms is None or t_ms < self.first_ms:
            self.first_ms = t_ms
        old = self.sample.get(key_hash)
        if old is not None:
            if old[1] > t_ms:
                return  # an older view than the one kept (events within the lateness)
            self.repeaters -= old[0].x >= 1
            self.sample[key_hash] = entry
        elif len(self.sample) < self.size:
            self.sample[key_hash] = entry
            heapq.heappush(self._heap, -key_hash)
        elif key_hash < -self._heap[0]:
            evicted = -heapq.heappushpop(self._heap, -key_hash)
            self.repeaters -= self.sample.pop(evicted)[0].x >= 1
            self.sample[key_hash] = entry
        else:
            return
        self.repeaters += obs.x >= 1
        self.changed += 1
        self.maybe_refit(t_ms)

    def maybe_refit(self, t_ms: int) -> bool:
        """Refit when ``refit_ms`` of event time has passed since the last fit, or the young
        sample's span or size has doubled since."""
        if t_ms - self.fitted_at_ms < self.refit_ms and not self._grown(t_ms):
            return False
        self.refit(t_ms)
        return True

    def _grown(self, t_ms: int) -> bool:
        if self.repeaters < MIN_CUSTOMERS_TO_FIT or self.first_ms is None:
            return False
        span = t_ms - self.first_ms
        if self.fitted_span_ms >= self.refit_ms:
            return False  # grown up: the regular schedule alone
        # A fit over no span at all (every observation so far at one instant) does not start
        # the span's doubling, or every observation at that instant would refit.
        if (self.fitted_span_ms > 0 or not self.fits) and span >= 2 * self.fitted_span_ms:
            return True
        return len(self.sample) >= 2 * self.fitted_size

    def refit(self, t_ms: int) -> None:
        """Refit every model to the sample (no-op while it is too small)."""
        self.fitted_at_ms = t_ms
        if self.repeaters < MIN_CUSTOMERS_TO_FIT or not self.changed:
            return
        self.changed = 0
        self.fitted_size = len(self.sample)
        self.fitted_span_ms = t_ms - (t_ms if self.first_ms is None else self.first_ms)
        # One C-level row per customer, then the time each has been observed since their
        # latest event (up to their partition's clock) added to T in one vector step: the
        # same operations per row as adding it row by row, so the same fit.
        entries = list(self.sample.values())
        arr = np.asarray([_ROW(e[0]) for e in entries], dtype=np.float64)
        clock = self.clock
        since = np.asarray([clock.get(part, t_ms) - at for _, at, part in entries], dtype=np.int64)
        arr[:, 2] += np.maximum(since, 0) / 86_400_000.0
        x, t_x, big_t, px, pt_x, orders, mean = arr.T
        start_a = self.activity if self.fits else None
        self.activity = fit_pareto(x, t_x, big_t, start=start_a)
        if self.same_process:
            self.purchases = self.activity
        else:
            start_p = self.purchases if self.fits else None
            self.purchases = fit_pareto(px, pt_x, big_t, start=start_p)
        buyers = (orders >= 1) & (mean > 0)
        if buyers.any():
            self._order_sum = float(np.sum(orders[buyers] * mean[buyers]))
            self._order_n = float(np.sum(orders[buyers]))
        if int(buyers.sum()) >= MIN_BUYERS_TO_FIT_SPEND:
            self.spend = fit_gamma_gamma(orders[buyers], mean[buyers], start=self.spend)
        self.fits += 1

    def order_value(self, orders: float, mean_order: float) -> float:
        """Expected spend per future order of this customer.

        A customer with orders gets Gamma-Gamma's weighted mean of their own mean and the
        population's; one without gets the sample's mean order value, which unlike the
        model's population mean (p gamma / (q - 1)) stays finite when q is near 1.
        """
        if orders > 0:
            if self.spend is not None and self.spend.q > 1.0:
                return self.spend.expected_order_value(orders, mean_order)
            return mean_order
        return self._order_sum / self._order_n if self._order_n else 0.0

    def describe(self) -> dict[str, object]:
        """The fitted parameters and the sample, for reports."""
        spend = self.spend
        return {
            "customers_sampled": len(self.sample),
            "fits": self.fits,
            "churn_activity_model": dict(
                zip(("r", "alpha", "s", "beta"), self.activity.as_tuple(), strict=True)
            ),
            "purchase_model": dict(
                zip(("r", "alpha", "s", "beta"), self.purchases.as_tuple(), strict=True)
            ),
            "spend_model": None
            if spend is None
            else {"p": spend.p, "q": spend.q, "gamma": spend.gamma},
        }

    @property
    def threshold(self) -> int:
        """Hashes below this enter (or update) the sample; scorers need not send the rest."""
        if len(self.sample) < self.size:
            return 1 << 64
        return -self._heap[0]


def key_hash(key: str) -> int:
    """A stable 64-bit hash, for sampling: users into the population sample, snapshots
    of dormant users (never stored with the id it hashes)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def clip_probability(p: float) -> float:
    """Keep a probability strictly inside (0, 1)."""
    return min(max(p, 1e-6), 1 - 1e-6) if math.isfinite(p) else 0.5
