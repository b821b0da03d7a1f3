"""The buy-till-you-die fits against their published CDNOW figures and an independent
implementation (the ``lifetimes`` package, a dev dependency that also ships the data).

The CDNOW sample: 2,357 customers who first bought in Q1 1997, calibration period of 39
weeks (to 1997-09-30), transactions counted per day, times in weeks, as in Fader, Hardie &
Lee (2005). The published parameters are those of the papers named at each test.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from streamscore.core.btyd import (
    HOMOGENEOUS_SHAPE,
    BgNbd,
    GammaGamma,
    ParetoNbd,
    ParetoRows,
    fit_bgnbd,
    fit_gamma_gamma,
    fit_pareto,
    pareto_log_likelihood,
    pareto_log_likelihood_one,
)

CALIBRATION_END = dt.date(1997, 9, 30)


def _cdnow_calibration() -> dict[str, np.ndarray]:
    # The file ships inside lifetimes; find it without importing the package (pandas warns).
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.submodule_search_locations, "pip install -e '.[dev]'"
    folder = Path(next(iter(spec.submodule_search_locations)))
    text = (folder / "datasets" / "CDNOW_sample.txt").read_text()
    days: dict[str, dict[dt.date, float]] = defaultdict(lambda: defaultdict(float))
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5:
            day = dt.datetime.strptime(parts[2], "%Y%m%d").date()
            days[parts[1]][day] += float(parts[4])
    x, t_x, big_t, orders, zbar = [], [], [], [], []
    for spend in days.values():
        cal = sorted(d for d in spend if d <= CALIBRATION_END)
        first = cal[0]
        x.append(len(cal) - 1)
        t_x.append((cal[-1] - first).days / 7)
        big_t.append((CALIBRATION_END - first).days / 7)
        repeats = [spend[d] for d in cal[1:]]
        orders.append(len(repeats))
        zbar.append(sum(repeats) / len(repeats) if repeats else 0.0)
    arr = np.asarray
    return {
        "x": arr(x, float),
        "t_x": arr(t_x, float),
        "T": arr(big_t, float),
        "orders": arr(orders, float),
        "zbar": arr(zbar, float),
    }


@pytest.fixture(scope="module")
def cdnow() -> dict[str, np.ndarray]:
    return _cdnow_calibration()


def test_the_calibration_sample_is_the_papers(cdnow: dict[str, np.ndarray]) -> None:
    """2,357 customers, 2,457 repeat transactions in the calibration period (the paper's)."""
    assert len(cdnow["x"]) == 2357
    assert int(cdnow["x"].sum()) == 2457


def test_bgnbd_reproduces_fader_hardie_lee_2005(cdnow: dict[str, np.ndarray]) -> None:
    """'Counting your customers the easy way', Table 1: r 0.243, alpha 4.414, a 0.793, b 2.426."""
    m = fit_bgnbd(cdnow["x"], cdnow["t_x"], cdnow["T"])
    assert m.r == pytest.approx(0.243, abs=0.001)
    assert m.alpha == pytest.approx(4.414, abs=0.005)
    assert m.a == pytest.approx(0.793, abs=0.002)
    assert m.b == pytest.approx(2.426, abs=0.005)


def test_pareto_nbd_reproduces_the_published_fit(cdnow: dict[str, np.ndarray]) -> None:
    """Pareto/NBD on the same data (Fader, Hardie & Lee 2005): r 0.55, alpha 10.58, s 0.61,
    beta 11.67 (beta is flat near its optimum: its published value has two digits)."""
    m = fit_pareto(cdnow["x"], cdnow["t_x"], cdnow["T"])
    assert m.r == pytest.approx(0.553, abs=0.005)
    assert m.alpha == pytest.approx(10.58, abs=0.05)
    assert m.s == pytest.approx(0.606, abs=0.01)
    assert m.beta == pytest.approx(11.67, rel=0.02)


def test_gamma_gamma_reproduces_the_published_fit(cdnow: dict[str, np.ndarray]) -> None:
    """'RFM and CLV: using iso-value curves' (Fader, Hardie & Lee 2005): p 6.25, q 3.74,
    gamma 15.44, fitted to the mean value of each repeat buyer's repeat transactions."""
    buyers = cdnow["orders"] > 0
    m = fit_gamma_gamma(cdnow["orders"][buyers], cdnow["zbar"][buyers])
    assert m.p == pytest.approx(6.25, abs=0.02)
    assert m.q == pytest.approx(3.74, abs=0.02)
    assert m.gamma == pytest.approx(15.44, abs=0.1)


@pytest.mark.filterwarnings("ignore")  # lifetimes on pandas 3 warns about deprecated options
def test_conditional_quantities_match_lifetimes(cdnow: dict[str, np.ndarray]) -> None:
    """P(alive) and expected transactions agree with lifetimes' own formulas, customer by
    customer; for Pareto/NBD, P(no purchase within h) too."""
    import lifetimes as lt

    x, t_x, big_t = cdnow["x"], cdnow["t_x"], cdnow["T"]
    sample = slice(0, 400)
    bg = lt.BetaGeoFitter().fit(x, t_x, big_t)
    ours_bg = BgNbd(*(float(bg.params_[k]) for k in ("r", "alpha", "a", "b")))
    pn = lt.ParetoNBDFitter().fit(x, t_x, big_t)
    ours_pn = ParetoNbd(*(float(pn.params_[k]) for k in ("r", "alpha", "s", "beta")))
    for xi, ti, bigti in zip(x[sample], t_x[sample], big_t[sample], strict=True):
        assert ours_bg.p_alive(xi, ti, bigti) == pytest.approx(
            np.ravel(bg.conditional_probability_alive(xi, ti, bigti))[0], rel=1e-6
        )
        assert ours_bg.expected_transactions(xi, ti, bigti, 39.0) == pytest.approx(
            np.ravel(bg.conditional_expected_number_of_purchases_up_to_time(39.0, xi, ti, bigti))[
                0
            ],
            rel=1e-6,
        )
        assert ours_pn.p_alive(xi, ti, bigti) == pytest.approx(
            np.ravel(pn.conditional_probability_alive(xi, ti, bigti))[0], rel=1e-4
        )
        assert ours_pn.p_none(xi, ti, bigti, 13.0) == pytest.approx(
            np.ravel(pn.conditional_probability_of_n_purchases_up_to_time(0, 13.0, xi, ti, bigti))[
                0
            ],
            rel=1e-4,
        )
        assert ours_pn.expected_transactions(xi, ti, bigti, 39.0) == pytest.approx(
            np.ravel(pn.conditional_expected_number_of_purchases_up_to_time(39.0, xi, ti, bigti))[
                0
            ],
            rel=1e-4,
        )


def test_bgnbd_p_none_is_the_simulated_frequency() -> None:
    """P(no purchase within h) of BG/NBD checked by simulating customers from the model:
    draw rates and dropout probabilities, keep those whose history matches, count silences."""
    m = BgNbd(r=2.0, alpha=20.0, a=2.0, b=6.0)
    rng = np.random.default_rng(3)
    n = 400_000
    lam = rng.gamma(m.r, 1.0 / m.alpha, n)
    p = rng.beta(m.a, m.b, n)
    big_t, h = 30.0, 20.0
    # Customers born at 0 with no repeat purchase by T (x = 0): still alive (BG/NBD).
    first_gap = rng.exponential(1.0 / lam)
    silent = first_gap > big_t
    # Of those, no purchase in (T, T + h]: memoryless, so the next gap from T is exponential.
    quiet = rng.exponential(1.0 / lam[silent]) > h
    assert m.p_none(0, 0.0, big_t, h) == pytest.approx(float(quiet.mean()), abs=0.005)
    del p


def test_shapes_that_any_fit_must_have() -> None:
    """Longer silence lowers P(alive) for repeat buyers; more time ahead means more
    expected purchases and less chance of none; Gamma-Gamma shrinks towards the mean."""
    m = BgNbd(r=0.5, alpha=10.0, a=0.8, b=2.5)
    pn = ParetoNbd(r=0.5, alpha=10.0, s=0.6, beta=12.0)
    for model in (m, pn):
        assert model.p_alive(3, 10.0, 40.0) < model.p_alive(3, 30.0, 40.0)
        assert model.expected_transactions(3, 30.0, 40.0, 20.0) < model.expected_transactions(
            3, 30.0, 40.0, 40.0
        )
        assert model.p_none(3, 30.0, 40.0, 20.0) > model.p_none(3, 30.0, 40.0, 40.0)
    # Pareto/NBD lets one-time buyers die: their P(alive) falls with time; BG/NBD's does not.
    assert pn.p_alive(0, 0.0, 80.0) < pn.p_alive(0, 0.0, 10.0)
    assert m.p_alive(0, 0.0, 80.0) == 1.0
    gg = GammaGamma(p=6.0, q=4.0, gamma=15.0)
    pop = gg.population_mean
    assert math.isclose(gg.expected_order_value(0, 0.0), pop)
    one, many = gg.expected_order_value(1, 100.0), gg.expected_order_value(20, 100.0)
    assert pop < one < many < 100.0


@pytest.mark.parametrize("params", [(0.55, 10.58, 0.61, 11.67), (2.0, 1.0, 0.5, 40.0)])
def test_shared_pairs_give_each_row_its_own_likelihood(
    cdnow: dict[str, np.ndarray], params: tuple[float, float, float, float]
) -> None:
    """The vectorised likelihood evaluates each distinct (x, t) once and spreads it back:
    every customer still gets the value computed from their own row alone (both branches,
    alpha >= beta and alpha < beta). Rows are shuffled so shared pairs are not adjacent."""
    order = np.random.default_rng(5).permutation(len(cdnow["x"]))
    x, t_x, big_t = cdnow["x"][order], cdnow["t_x"][order], cdnow["T"][order]
    together = pareto_log_likelihood(params, x, t_x, big_t)
    alone = [
        pareto_log_likelihood_one(params, a, b, c) for a, b, c in zip(x, t_x, big_t, strict=True)
    ]
    np.testing.assert_allclose(together, alone, rtol=1e-12, atol=0)


def _pareto_customers(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, t_x, T)`` of ``n`` customers drawn from a Pareto/NBD population, observed for
    up to 16 days (a young shop: the first weeks of a stream)."""
    rng = np.random.default_rng(seed)
    rates, dropouts = rng.gamma(0.77, 1 / 8.8, n), rng.gamma(2.3, 1 / 155.0, n)
    big_t = rng.uniform(0, 16.0, n)
    lives = rng.exponential(1 / dropouts)
    x, t_x = np.zeros(n), np.zeros(n)
    for i in range(n):
        t, end = 0.0, min(lives[i], big_t[i])
        while (t := t + rng.exponential(1 / rates[i])) <= end:
            x[i], t_x[i] = x[i] + 1, t
    return x, t_x, big_t


def test_a_warm_start_on_the_homogeneous_ridge_is_checked_from_the_neutral_start() -> None:
    """A previous fit far out on the ridge where rates are nearly homogeneous (r ~ 3,400, as
    a shop read partition by partition produced) used to hold every later warm-started fit
    there, tens of nats worse than a fit from scratch. It now gets the better of the two."""
    x, t_x, big_t = _pareto_customers(800, 1)
    rows = ParetoRows(x, t_x, big_t)

    def nll(m: ParetoNbd) -> float:
        return -float(rows.log_likelihood(m.as_tuple()).sum())

    fresh = fit_pareto(x, t_x, big_t)
    rescued = fit_pareto(x, t_x, big_t, start=ParetoNbd(3490.5, 28422.5, 24.8, 53.7))
    assert max(rescued.r, rescued.s) < HOMOGENEOUS_SHAPE
    assert nll(rescued) <= nll(fresh) + 1e-6
