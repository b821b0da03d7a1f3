"""The churn and value models: a fitted buy-till-you-die model, and learnt corrections on top.

- **Population** (``population.py``): Pareto/NBD for the churn-defining activity and for
  purchases, Gamma-Gamma for spend per order, fitted by maximum likelihood to a bounded
  sample of customers and refitted as event time passes. Per customer they give P(alive),
  the probability of no activity within the churn horizon, expected purchases within the
  value horizon and expected spend per order. Before any label exists, those *are* the
  predictions.
- **Churn**: a logistic regression with the BTYD probability as offset (``glm.py``): it
  learns only where the data says the BTYD model is off (browsing without buying, carts,
  tickets, regularity, spend trends) and starts as the BTYD model itself.
- **Value**: expected orders × expected order value. The order count is a Poisson
  regression with the BTYD expectation as offset, learnt on the orders each snapshot saw
  within the horizon; the order value is Gamma-Gamma's. Both factors are positive, so a
  customer the model thinks alive is never flattened to zero.

Which of the corrected and the BTYD predictions a score carries is the serving gate's choice
(``gate.py``): the corrections are served only while their own stored predictions beat the
BTYD model's on the labels resolved since.

Snapshots keep the raw inputs (``inputs.MODEL_INPUTS``), and the offsets are computed with
the population parameters current when a label is learnt, so the corrections always correct
the BTYD model in use. Every step of the corrections is weighted by the snapshot's sampling
weight.

Which constants are not tuned to any data set: the GLMs' learning rate and L2 are river's
usual defaults, the correction bounds are safety limits (``glm.py``), the population prior
is used only before the first fit (``population.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from river import optim

from streamscore.core.btyd import ParetoNbd
from streamscore.core.gate import ServingGate
from streamscore.core.glm import OffsetGLM, logit, sigmoid
from streamscore.core.inputs import FEATURE_SCHEMA, MODEL_INPUTS
from streamscore.core.population import Observation, PopulationModel
from streamscore.core.values import ModelParams

MODEL_FAMILY = "btyd-glm"
DAY_MS = 86_400_000
_IDX = {name: i for i, name in enumerate(MODEL_INPUTS)}
# The inputs the BTYD model needs: an example without them cannot be learnt.
SUMMARY_INPUTS = ("x", "t_x", "T", "px", "pt_x", "orders", "mean_order")


def model_version(generation: int) -> str:
    """The version every score carries: family, input schema and checkpoint generation."""
    return f"{MODEL_FAMILY}-{FEATURE_SCHEMA[:6]}-g{generation}"


class Prediction(NamedTuple):
    """The corrected predictions, the BTYD model's, and which of each is served.

    Every score and snapshot makes one (a named tuple: immutable, and built several times
    faster than a frozen dataclass)."""

    corrected_churn: float
    corrected_value: float
    base: Baseline
    serve_churn: bool  # the corrected churn probability (else the BTYD model's)
    serve_value: bool

    @property
    def churn(self) -> float:
        """The churn probability scores carry."""
        return self.corrected_churn if self.serve_churn else self.base.p_churn

    @property
    def value(self) -> float:
        """The expected spend scores carry."""
        return self.corrected_value if self.serve_value else self.base.value


class Baseline(NamedTuple):
    """What the fitted BTYD model says of one customer."""

    p_alive: float
    p_churn: float
    orders: float
    order_value: float

    @property
    def value(self) -> float:
        """Expected spend within the value horizon."""
        return self.orders * self.order_value


# The corrections' inputs, in the order the models see them; the purchase process's own
# two only where it is not the churn-defining activity.
_OWN_INPUTS = (
    "log_x",
    "log_tenure",
    "log_recency",
    "log_order_value",
    "gap_cv",
    "log_spend_30d",
    "log_browse_recency",
    "browses",
    "log_events_30d",
    "log_carts",
    "log_tickets",
    "refund_rate",
    "logit_alive",
)
_ALL_INPUTS = (*_OWN_INPUTS, "log_px", "log_purchase_recency")


class _BaselineCache:
    """The fitted BTYD model's P(alive), churn probability and expected purchases by
    customer summary ``(x, t_x, T, px, pt_x)``, for the models fitted now.

    In an order log times are whole days, so at a given fit many customers share a summary
    (every one-time buyer silent for the same number of days): on the CDNOW master log more
    than half the evaluations repeat one. The values are those computed the first time, so
    the same; the cache is bounded and starts again at every refit.
    """

    __slots__ = ("activity", "purchases", "values")
    LIMIT = 65_536

    def __init__(self) -> None:
        self.activity: ParetoNbd | None = None
        self.purchases: ParetoNbd | None = None
        self.values: dict[tuple[float, ...], tuple[float, float, float]] = {}

    def reset(self, activity: ParetoNbd, purchases: ParetoNbd) -> None:
        self.activity, self.purchases = activity, purchases
        self.values = {}

    def get(self, key: tuple[float, ...]) -> tuple[float, float, float] | None:
        return self.values.get(key)

    def put(self, key: tuple[float, ...], value: tuple[float, float, float]) -> None:
        if len(self.values) >= self.LIMIT:
            self.values = {}
        self.values[key] = value


def _l1p(v: float) -> float:
    return math.log1p(v) if v > 0 else 0.0


def observation(raw: Sequence[float]) -> Observation:
    """The population model's view of a raw input vector."""
    return Observation(
        x=raw[0], t_x=raw[1], T=raw[2], px=raw[3], pt_x=raw[4], orders=raw[5], mean_order=raw[6]
    )


def _vector(inputs: Mapping[str, float]) -> list[float] | None:
    """An example's named inputs as a vector; None when the BTYD summary is incomplete."""
    if any(name not in inputs for name in SUMMARY_INPUTS):
        return None
    return [inputs.get(name, 0.0) for name in MODEL_INPUTS]


class Models:
    """The population BTYD model and the learnt churn and value corrections."""

    def __init__(self, params: ModelParams | None = None) -> None:
        p = params or ModelParams()
        self.params = p
        self.population = PopulationModel(
            size=p.sample_size,
            refit_ms=round(p.refit_days * DAY_MS),
            same_process=p.purchase_activity,
        )
        self.churn = OffsetGLM(optim.losses.Log(), learning_rate=p.learning_rate, l2=p.l2)
        self.value = OffsetGLM(optim.losses.Poisson(), learning_rate=p.learning_rate, l2=p.l2)
        self.gate = ServingGate()
        self.generation = 0
        self._baselines = _BaselineCache()

    def __getstate__(self) -> dict[str, object]:
        """Checkpoints hold the models, not the cache of their predictions."""
        state = self.__dict__.copy()
        state.pop("_baselines", None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        """Read models pickled before the serving gate: the corrections start without a
        record, so the BTYD model is served until they earn one."""
        self.__dict__.update(state)
        if "gate" not in state:
            self.gate = ServingGate()
        self._baselines = _BaselineCache()

    @property
    def churn_learnt(self) -> int:
        """Churn labels learnt so far."""
        return self.churn.learnt

    @property
    def value_learnt(self) -> int:
        """Value labels learnt so far."""
        return self.value.learnt

    @property
    def version(self) -> str:
        """Carried by every score."""
        return model_version(self.generation)

    # -- the BTYD baseline and the corrections' inputs -------------------------------------

    def baseline(self, raw: Sequence[float]) -> Baseline:
        """The fitted BTYD model's view of this customer."""
        x, t_x, big_t, px, pt_x, orders, mean_order = raw[:7]
        pop = self.population
        activity, purchases = pop.activity, pop.purchases
        cache = self._baselines
        if cache.activity is not activity or cache.purchases is not purchases:
            cache.reset(activity, purchases)
        key = (x, t_x, big_t, px, pt_x)
        known = cache.get(key)
        if known is None:
            p = self.params
            alive = activity.p_alive(x, t_x, big_t)  # the costly part: once when shared
            same = purchases is activity and px == x and pt_x == t_x
            known = (
                alive,
                activity.p_none(x, t_x, big_t, p.churn_horizon_days, alive),
                purchases.expected_transactions(
                    px, pt_x, big_t, p.value_horizon_days, alive if same else None
                ),
            )
            cache.put(key, known)
        return Baseline(*known, order_value=pop.order_value(orders, mean_order))

    def correction_inputs(self, raw: Sequence[float], base: Baseline) -> dict[str, float]:
        """The corrections' inputs for this customer (before standardisation)."""
        return self._inputs(raw, base)

    def _inputs(self, raw: Sequence[float], base: Baseline) -> dict[str, float]:
        return dict(zip(self._input_names, self._input_values(raw, base), strict=True))

    @property
    def _input_names(self) -> tuple[str, ...]:
        return _OWN_INPUTS if self.params.purchase_activity else _ALL_INPUTS

    def _input_values(self, raw: Sequence[float], base: Baseline) -> list[float]:
        """The corrections' inputs in ``_input_names`` order."""
        g = raw.__getitem__
        big_t = g(_IDX["T"])
        out = [
            _l1p(g(_IDX["x"])),
            _l1p(big_t),
            _l1p(big_t - g(_IDX["t_x"])),
            _l1p(g(_IDX["mean_order"])),
            g(_IDX["gap_cv"]),
            _l1p(g(_IDX["spend_30d"])),
            _l1p(g(_IDX["browse_recency"])),
            g(_IDX["browses"]),
            _l1p(g(_IDX["events_30d"])),
            _l1p(g(_IDX["carts"])),
            _l1p(g(_IDX["tickets"])),
            g(_IDX["refund_rate"]),
            logit(base.p_alive),
        ]
        if not self.params.purchase_activity:
            out.append(_l1p(g(_IDX["px"])))
            out.append(_l1p(big_t - g(_IDX["pt_x"])))
        return out

    # -- predicting -------------------------------------------------------------------------

    def predict_all(self, raw: Sequence[float]) -> Prediction:
        """Both models' predictions for this customer, and which of them is served."""
        base = self.baseline(raw)
        names, x = self._input_names, self._input_values(raw, base)
        churn = sigmoid(self.churn.link(names, x, logit(base.p_churn)))
        orders = math.exp(self.value.link(names, x, math.log(max(base.orders, 1e-9))))
        gate = self.gate
        return Prediction(
            churn,
            orders * base.order_value,
            base,
            serve_churn=gate.serve_churn_corrections,
            serve_value=gate.serve_value_corrections,
        )

    def predict(self, raw: Sequence[float]) -> tuple[float, float]:
        """The served churn probability and expected spend within the value horizon."""
        p = self.predict_all(raw)
        return p.churn, p.value

    # -- learning ---------------------------------------------------------------------------

    def wants(self, key_hash: int) -> bool:
        """Whether the population sample takes this customer's observations."""
        return self.population.wants(key_hash)

    def observe(self, key_hash: int, raw: Sequence[float], t_ms: int, partition: int = -1) -> None:
        """A customer's summary as of their latest event, for the population fit."""
        self.population.observe(key_hash, observation(raw), t_ms, partition)

    def learn_churn(self, inputs: Mapping[str, float], churned: bool, weight: float = 1.0) -> bool:
        """One weighted step on a resolved churn label; False when the example lacks the
        BTYD summary (a snapshot made for an older input set) and cannot be learnt."""
        raw = _vector(inputs)
        if raw is None:
            return False
        base = self.baseline(raw)
        self.churn.learn(self._inputs(raw, base), logit(base.p_churn), float(churned), weight)
        return True

    def learn_value(self, inputs: Mapping[str, float], orders: float, weight: float = 1.0) -> bool:
        """One weighted step on the number of orders within the value horizon."""
        raw = _vector(inputs)
        if raw is None or math.isnan(orders):
            return False
        base = self.baseline(raw)
        offset = math.log(max(base.orders, 1e-9))
        self.value.learn(self._inputs(raw, base), offset, orders, weight)
        return True

    # -- explaining -------------------------------------------------------------------------

    def churn_reasons(self, raw: Sequence[float], top: int = 3) -> list[dict[str, float | str]]:
        """What pushes this churn score up, largest first; never empty.

        The first reason is the BTYD model's own evidence (its churn probability for this
        customer's rhythm and silence, as a logit); then the learnt corrections that raise
        the score, each weight × standardised input, while the corrections are served.
        """
        base = self.baseline(raw)
        x = self._inputs(raw, base)
        served = self.gate.serve_churn_corrections
        reasons: list[dict[str, float | str]] = [
            {
                "feature": "btyd_churn_probability",
                "contribution": round(logit(base.p_churn), 4),
                "value": round(base.p_churn, 3),
            }
        ]
        terms = sorted(((c, k) for k, c in self.churn.correction(x).items()), reverse=True)
        reasons += [
            {"feature": k, "contribution": round(c, 4), "value": round(x[k], 3)}
            for c, k in terms[: top - 1]
            if served and round(c, 4) > 0
        ]
        return reasons
