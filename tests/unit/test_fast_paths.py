"""The hot path's shortcuts give the values of the plain computation, to the last bit.

Each shortcut (a plan of the corrections' weights, a cache of the BTYD model's per-customer
values, numpy binning for PSI, distinct pairs for the likelihood, one decay factor per
half-life, a vector step in the population fit) is checked against the straightforward
code it replaced, written out here, on inputs chosen to hit its edges: repeated and
missing inputs, zero deviations, clipping, ties on bin edges, refits between calls.
"""

from __future__ import annotations

import bisect
import math
import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from river import optim

from streamscore.core.btyd import _distinct_pairs, fit_pareto
from streamscore.core.drift import PSI_EPS, psi
from streamscore.core.features import HALF_LIVES_DAYS, UserFeatures, _decay
from streamscore.core.glm import OffsetGLM
from streamscore.core.inputs import MODEL_INPUTS
from streamscore.core.models import Models
from streamscore.core.population import Observation, PopulationModel
from streamscore.core.values import ModelParams

DAY = 86_400_000
NAMES = ("a", "b", "c", "d")
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def _psi_reference(reference: list[float], current: list[float], bins: int = 10) -> float:
    ref = sorted(reference)
    cuts = sorted({ref[int(len(ref) * i / bins)] for i in range(1, bins)})

    def shares(values: list[float]) -> list[float]:
        counts = [0] * (len(cuts) + 1)
        for v in values:
            counts[bisect.bisect_right(cuts, v)] += 1
        return [max(c / len(values), PSI_EPS) for c in counts]

    e, a = shares(reference), shares(current)
    return sum((x - y) * math.log(x / y) for x, y in zip(a, e, strict=True))


@given(
    st.lists(st.integers(0, 6).map(float) | finite, min_size=1, max_size=300),
    st.lists(st.integers(0, 6).map(float) | finite, min_size=1, max_size=300),
)
def test_psi_bins_every_value_as_bisect_does(reference: list[float], current: list[float]) -> None:
    # Small integers make many values fall exactly on the cuts.
    assert psi(reference, current) == _psi_reference(reference, current)


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from([0.0, 0.5, 1.0, 7.0, 1e-300])), max_size=80
    )
)
def test_distinct_pairs_spread_back_to_every_row(rows: list[tuple[int, float]]) -> None:
    a = np.asarray([float(x) for x, _ in rows] or [0.0])
    b = np.asarray([t for _, t in rows] or [0.0])
    pairs, back = _distinct_pairs(a, b)
    assert len({(float(x), float(t)) for x, t in pairs}) == len(pairs)
    assert np.array_equal(pairs[back, 0], a) and np.array_equal(pairs[back, 1], b)


def _link_reference(glm: OffsetGLM, x: dict[str, float], offset: float) -> float:
    c = glm.intercept["intercept"]
    for k, v in x.items():
        m = glm.moments.get(k)
        c += glm.weights.get(k, 0.0) * (m.scale(v) if m is not None else 0.0)
    c = min(max(c, -4.0), 4.0)
    return min(max(offset + c, -30.0), 30.0)


@settings(max_examples=80)
@given(
    st.lists(st.tuples(st.lists(finite, min_size=4, max_size=4), st.booleans()), max_size=12),
    st.lists(st.lists(finite, min_size=4, max_size=4), min_size=1, max_size=6),
    st.floats(-40, 40),
)
def test_link_is_the_plain_sum_between_and_after_learning_steps(
    examples: list[tuple[list[float], bool]], queries: list[list[float]], offset: float
) -> None:
    """Constant inputs (deviation 0), inputs never learnt ("d" only from the second step)
    and extreme values (clipped) included; the plan must follow every step."""
    glm = OffsetGLM(optim.losses.Log())
    for values, label in examples:
        for q in queries:
            x = dict(zip(NAMES, q, strict=True))
            assert glm.link(NAMES, q, offset) == _link_reference(glm, x, offset)
        names = NAMES if glm.learnt else NAMES[:3]
        glm.learn(dict(zip(names, values, strict=False)), 0.0, float(label))
    for q in queries:
        x = dict(zip(NAMES, q, strict=True))
        assert glm.link(NAMES, q, offset) == _link_reference(glm, x, offset)


def _raw(rng: random.Random) -> list[float]:
    """A purchase-only customer's inputs with whole-day times, so that many repeat."""
    x = float(rng.randrange(0, 4))
    t_x = float(rng.randrange(1, 100)) if x else 0.0
    big_t = t_x + float(rng.choice([0, 3, 7, 14, 30, 60, 120, 200]))
    values = {"x": x, "t_x": t_x, "T": big_t, "px": x, "pt_x": t_x, "orders": x + 1.0}
    values["mean_order"] = float(rng.choice([10, 25, 40]))
    return [values.get(name, 0.0) for name in MODEL_INPUTS]


def test_cached_btyd_values_are_those_of_the_model_fitted_now() -> None:
    """Customers sharing a summary get the values computed for the first of them, and a
    refit in between starts the cache again: compared with a fresh computation each time."""
    rng = random.Random(5)
    params = ModelParams(purchase_activity=True, refit_days=7.0)
    models = Models(params)
    for day in range(0, 60, 2):
        for k in range(30):
            raw = _raw(rng)
            models.observe(rng.getrandbits(64), raw, day * DAY + k)
            for _ in range(2):  # the second call hits the cache
                got = models.baseline(raw)
                activity = models.population.activity
                alive = activity.p_alive(raw[0], raw[1], raw[2])
                assert got.p_alive == alive
                assert got.p_churn == activity.p_none(
                    raw[0], raw[1], raw[2], params.churn_horizon_days, alive
                )
                assert got.orders == activity.expected_transactions(
                    raw[0], raw[1], raw[2], params.value_horizon_days, alive
                )
    assert models.population.fits > 3


def test_a_checkpoint_does_not_carry_the_caches() -> None:
    import pickle

    models = Models(ModelParams(purchase_activity=True))
    raw = _raw(random.Random(1))
    before = models.predict_all(raw)
    assert models._baselines.values and models.churn._plan is not None
    state = pickle.loads(pickle.dumps(models))
    assert not state._baselines.values and state.churn._plan is None
    assert state.predict_all(raw) == before
    assert "_baselines" not in models.__getstate__()


@given(
    st.lists(st.floats(0, 1e6), min_size=2, max_size=2),
    st.lists(st.floats(0, 1e6), min_size=2, max_size=2),
    st.integers(-(10**12), 10**12),
)
def test_decayed_values_are_decayed_one_by_one(
    events: list[float], spend: list[float], elapsed_ms: int
) -> None:
    f = UserFeatures()
    f.decayed_events, f.decayed_spend, f.decay_ref_ms = list(events), list(spend), 10**12
    ev, sp = f.decayed_at(10**12 + elapsed_ms)
    gone = max(elapsed_ms, 0)
    assert ev == [_decay(v, gone, hl) for v, hl in zip(events, HALF_LIVES_DAYS, strict=True)]
    assert sp == [_decay(v, gone, hl) for v, hl in zip(spend, HALF_LIVES_DAYS, strict=True)]


def test_a_refit_measures_each_customer_up_to_their_partition_clock() -> None:
    """The fit's rows, built row by row as before, give the parameters the population
    model fits (two partitions, one read further than the other)."""
    rng = random.Random(9)
    model = PopulationModel(size=10_000, refit_ms=10**15, same_process=True)
    model.fitted_span_ms = model.refit_ms
    rows = []
    for key in range(200):
        x = float(rng.randrange(0, 5))
        t = float(rng.randrange(1, 200))
        obs = Observation(x=x, t_x=t if x else 0.0, T=t, px=x, pt_x=t if x else 0.0,
                          orders=x + 1, mean_order=20.0)  # fmt: skip
        at = rng.randrange(0, 200) * DAY + rng.randrange(DAY)
        rows.append((obs, at, key % 2))
        model.observe(key, obs, at, key % 2)
    end = 230 * DAY
    model.refit(end)
    clock = model.clock
    t_adj = [o.T + max(clock.get(p, end) - at, 0) / DAY for o, at, p in rows]
    x = np.asarray([o.x for o, _, _ in rows])
    t_x = np.asarray([o.t_x for o, _, _ in rows])
    expected = fit_pareto(x, t_x, np.asarray(t_adj))
    assert model.activity.as_tuple() == expected.as_tuple()
