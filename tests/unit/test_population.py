"""The population sample's fits: what a customer's silence is measured against."""

from __future__ import annotations

import itertools
import pickle
import random

import pytest

from streamscore.core.population import MIN_CUSTOMERS_TO_FIT, Observation, PopulationModel

DAY = 86_400_000
LAG_DAYS = 50


def _customers(n: int = 600, seed: int = 3) -> list[tuple[Observation, int]]:
    """Customers' summaries as of their latest event (day of that event, from day 0)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        first = rng.uniform(0, 100)
        last = rng.uniform(first, 200)
        repeats = 0 if last == first else rng.randrange(0, 8)
        days = last - first
        obs = Observation(
            x=repeats, t_x=days if repeats else 0.0, T=days, px=repeats,
            pt_x=days if repeats else 0.0, orders=repeats + 1, mean_order=20.0,
        )  # fmt: skip
        out.append((obs, round(last * DAY)))
    return out


def _fit(rows: list[tuple[int, Observation, int, int]], at_ms: int) -> tuple[float, ...]:
    model = PopulationModel(size=10_000, refit_ms=10**15, same_process=True)
    model.fitted_span_ms = model.refit_ms  # grown up: no young-shop fits on the way
    for key, obs, t_ms, partition in rows:
        model.observe(key, obs, t_ms, partition)
    model.refit(at_ms)
    return model.activity.as_tuple()


def test_a_lagging_partition_does_not_make_its_customers_look_silent() -> None:
    """Half the customers come from a partition read 50 days behind the other (a backlog
    handed over unevenly). Their silence is measured up to how far their own partition was
    read, so the fit is the one of the same customers read evenly."""
    customers = _customers()
    end = 200 * DAY
    even = [(k, obs, t, k % 2) for k, (obs, t) in enumerate(customers)]
    # The odd customers' partition has been read only up to 50 days before the other's.
    lagging = [
        (k, obs, t - (k % 2) * LAG_DAYS * DAY, k % 2) for k, (obs, t) in enumerate(customers)
    ]
    assert _fit(lagging, end) == pytest.approx(_fit(even, end), rel=1e-6)


def test_a_model_pickled_before_partition_clocks_still_fits() -> None:
    """A checkpoint of the previous layout (samples without a partition, no clocks) loads
    and refits as it did: every customer measured up to the fit's time."""
    customers = _customers(200)
    model = PopulationModel(size=10_000, refit_ms=10**15, same_process=True)
    for k, (obs, t) in enumerate(customers):
        model.observe(k, obs, t)
    old = pickle.loads(pickle.dumps(model))
    del old.__dict__["clock"]
    old.sample = {k: (e[0], e[1]) for k, e in old.sample.items()}
    restored = pickle.loads(pickle.dumps(old))
    latest = max(t for _, t in customers)  # a refit runs at the latest observation's time
    restored.refit(latest)
    model.refit(latest)
    assert restored.activity.as_tuple() == pytest.approx(model.activity.as_tuple(), rel=1e-9)


def _stream(days: float, per_day: int, seed: int = 5) -> list[tuple[int, Observation, int]]:
    """Customers of a young shop, each seen at their latest event: a visit every 6 hours."""
    rng = random.Random(seed)
    out = []
    for k in range(round(days * per_day)):
        t = k / per_day  # event time of this observation, in days since the shop opened
        first = rng.uniform(0, t)
        repeats = int((t - first) * 4)
        obs = Observation(
            x=repeats, t_x=t - first if repeats else 0.0, T=t - first, px=repeats,
            pt_x=t - first if repeats else 0.0, orders=repeats + 1, mean_order=20.0,
        )  # fmt: skip
        out.append((k, obs, round(t * DAY)))
    return out


def _fit_times(model: PopulationModel, rows: list[tuple[int, Observation, int]]) -> list[float]:
    times = []
    for key, obs, t_ms in rows:
        fits = model.fits
        model.observe(key, obs, t_ms)
        if model.fits != fits:
            times.append(t_ms / DAY)
    return times


def test_a_young_shop_is_fitted_as_its_history_doubles_then_every_refit_period() -> None:
    model = PopulationModel(size=100_000, refit_ms=7 * DAY, same_process=True)
    times = _fit_times(model, _stream(days=30, per_day=200))
    young = [t for t in times if t < 7]
    assert len(young) >= 4, f"fits within the first week: {times}"
    assert young[0] < 1, "the first fit comes within a day of data, not after a week"
    # While young, each fit waits for the span (or the sample) to double.
    assert all(b >= 1.5 * a or b - a < 0.01 for a, b in itertools.pairwise(young))
    grown = [t for t in times if t >= 7]
    gaps = [b - a for a, b in itertools.pairwise(grown)]
    assert gaps and all(g >= 7 - 0.01 for g in gaps), f"grown up: every refit period {times}"


def test_no_fit_before_enough_customers_have_a_repeat_occasion() -> None:
    model = PopulationModel(size=100_000, refit_ms=7 * DAY, same_process=True)
    one_timers = Observation(x=0, t_x=0.0, T=5.0, px=0, pt_x=0.0, orders=1, mean_order=9.0)
    for k in range(500):
        model.observe(k, one_timers, (10 + k) * DAY // 10)
    assert model.fits == 0, "one-time customers alone identify no rate"
    assert model.repeaters == 0
    repeat = Observation(x=2, t_x=4.0, T=5.0, px=2, pt_x=4.0, orders=3, mean_order=9.0)
    for k in range(500, 500 + MIN_CUSTOMERS_TO_FIT):
        model.observe(k, repeat, 60 * DAY)
    assert model.fits == 1
    model.observe(0, repeat, 61 * DAY)  # a one-timer who came back
    assert model.repeaters == MIN_CUSTOMERS_TO_FIT + 1


def test_a_model_pickled_before_the_young_schedule_keeps_its_regular_one() -> None:
    model = PopulationModel(size=10_000, refit_ms=7 * DAY, same_process=True)
    rows = _stream(days=20, per_day=50)
    _fit_times(model, rows)
    old = pickle.loads(pickle.dumps(model))
    for name in ("first_ms", "fitted_span_ms", "repeaters"):
        del old.__dict__[name]
    restored = pickle.loads(pickle.dumps(old))
    assert restored.repeaters == model.repeaters
    assert restored.first_ms == model.first_ms
    assert not restored._grown(rows[-1][2] + DAY), "a fitted model is not young again"


def test_a_first_fit_at_one_instant_does_not_refit_at_every_observation() -> None:
    model = PopulationModel(size=100_000, refit_ms=7 * DAY, same_process=True)
    repeat = Observation(x=2, t_x=4.0, T=5.0, px=2, pt_x=4.0, orders=3, mean_order=9.0)
    for k in range(2 * MIN_CUSTOMERS_TO_FIT + 5):  # all at one event time
        model.observe(k, repeat, 10 * DAY)
    # The first fit, and one more as the sample doubled: not one per observation.
    assert model.fits <= 2
    model.observe(10_000, repeat, 10 * DAY + 3_600_000)
    assert model.fits <= 3
