"""The population sample's fits: what a customer's silence is measured against."""

from __future__ import annotations

import pickle
import random

import pytest

from streamscore.core.population import Observation, PopulationModel

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
