"""The models' inputs: which values a snapshot keeps for them, and the schema id.

Kept apart from ``models.py`` (which needs river) because stored snapshots and training
examples carry these inputs: the state codec and anything that moves examples around need the
names, not the learners.

A pending snapshot stores its inputs as a vector, with the id of the input set it was made
for (``FEATURE_SCHEMA``). When the input set changes, the snapshots already stored must not
be lost nor misread: add the old set to ``EARLIER_SCHEMAS`` under its id (never remove one),
and ``remap`` turns an old vector into the new set by name. An input the old set lacks (or
took with another transform) cannot be derived afterwards: it is NaN in the vector and
absent from the training example, and the models learn that example without it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from streamscore.core.features import DerivedParts, UserFeatures, btyd_summary, derived_parts
from streamscore.core.timeutil import DAY_MS

# The models' inputs (state format v4 on): a buy-till-you-die summary of the churn-defining
# activity and of purchases, and what a shop may send besides purchases. All raw values (days,
# counts, amounts): the models turn them into their own inputs (``models.py``), and the
# population model refits on them, so a snapshot keeps them exact. Every one is derivable
# from purchases alone except the last six, which are constant where a shop sends only
# purchases (and then carry no weight).
MODEL_INPUTS: tuple[str, ...] = (
    "x",  # repeat occasions of the churn-defining activity after the first event
    "t_x",  # days from the first event to the latest such occasion
    "T",  # days from the first event to the snapshot
    "px",  # repeat purchase occasions
    "pt_x",  # days from the first event to the latest purchase
    "orders",  # purchases so far
    "mean_order",  # their mean value
    "gap_cv",  # spread of the gaps between purchases (std / mean)
    "spend_30d",  # spend, decayed with a 30-day half-life
    "browse_recency",  # days since the latest event that is not a purchase (0: none)
    "browses",  # 1 when there was such an event
    "events_30d",  # events, decayed with a 30-day half-life
    "carts",
    "tickets",
    "refund_rate",
)
# Input sets of state formats v2 and v3: derived features, some log-scaled.
_V3_CHURN: dict[str, bool] = {
    "p_quiet_logit": False,
    "p_alive_logit": False,
    "recency_days": True,
    "tenure_days": True,
    "sessions": True,
    "session_rate": True,
    "session_gap_ratio": True,
    "events_hl7d": True,
    "events_hl30d": True,
    "purchases": True,
    "days_since_purchase": True,
    "purchase_gap_ratio": True,
    "spend": True,
    "tickets": True,
    "refund_rate": False,
    "cart_to_purchase": False,
}
_V3_VALUE: dict[str, bool] = {
    "spend": True,
    "spend_hl7d": True,
    "spend_hl30d": True,
    "purchases": True,
    "avg_order_value": True,
    "p_alive_logit": False,
    "days_since_purchase": True,
    "purchase_gap_days": True,
    "recency_days": True,
    "session_rate": True,
    "session_gap_ratio": True,
    "events_hl30d": True,
    "refund_rate": False,
}
# The stored vector is one list (the "churn" part of an input set); both models read it.
CHURN_INPUTS: dict[str, bool] = dict.fromkeys(MODEL_INPUTS, False)
VALUE_INPUTS: dict[str, bool] = {}


def schema_id(churn: Iterable[str], value: Iterable[str]) -> str:
    """The id of an input set: a hash of its names, in order."""
    return hashlib.sha256(("|".join(churn) + "#" + "|".join(value)).encode()).hexdigest()[:12]


FEATURE_SCHEMA = schema_id(CHURN_INPUTS, VALUE_INPUTS)


@dataclass(frozen=True, slots=True)
class InputSchema:
    """One input set: both models' inputs by name, with whether each enters as log1p."""

    churn: Mapping[str, bool]
    value: Mapping[str, bool]
    id: str = field(init=False)  # stored with the snapshots made for this set
    size: int = field(init=False)  # inputs in a snapshot's vector (churn's, then value's)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", schema_id(self.churn, self.value))
        object.__setattr__(self, "size", len(self.churn) + len(self.value))


CURRENT_INPUTS = InputSchema(CHURN_INPUTS, VALUE_INPUTS)
_V3_INPUTS = InputSchema(_V3_CHURN, _V3_VALUE)
# Input sets of earlier versions, by id, so that snapshots stored for them can be remapped.
# The v3 set shares no raw input with the current one: its pending snapshots keep their
# stored predictions and labels (progressive validation) but cannot be learnt from.
EARLIER_SCHEMAS: dict[str, InputSchema] = {_V3_INPUTS.id: _V3_INPUTS}


def known_schema(schema: str, current: InputSchema = CURRENT_INPUTS) -> InputSchema | None:
    """The input set of a stored schema id, if this version knows it."""
    if schema == current.id:
        return current
    return EARLIER_SCHEMAS.get(schema)


def remap(values: list[float], old: InputSchema, new: InputSchema) -> tuple[list[float], list[str]]:
    """A snapshot's vector made for ``old`` as ``new``'s vector, by name.

    Returns the vector and the names that could not be derived (NaN in it): inputs ``old``
    did not take, or took with another transform. A name may come from either model's
    inputs, since both are the same derived feature with the same transform.
    """
    found: dict[str, tuple[bool, float]] = {}
    for names, vector in ((old.value, values[len(old.churn) :]), (old.churn, values)):
        for (name, logged), v in zip(names.items(), vector, strict=False):
            found[name] = (logged, v)
    out: list[float] = []
    missing: list[str] = []
    for names in (new.churn, new.value):
        for name, logged in names.items():
            have = found.get(name)
            if have is None or have[0] != logged or math.isnan(have[1]):
                out.append(math.nan)
                missing.append(name)
            else:
                out.append(have[1])
    return out, missing


def model_inputs(
    f: UserFeatures, t_ms: int, purchase_activity: bool, parts: DerivedParts | None = None
) -> list[float]:
    """The models' inputs as of ``t_ms``, in ``MODEL_INPUTS`` order (``parts``: those
    ``derive`` computed for the same features and time, when the caller has them)."""
    x, t_x, big_t, px, pt_x = btyd_summary(f, t_ms, purchase_activity)
    (gap_mean, gap_std), (dec_events, dec_spend) = parts or derived_parts(f, t_ms)
    browsed = f.last_browse_ms > 0
    return [
        x,
        t_x,
        big_t,
        px,
        pt_x,
        float(f.purchases),
        f.spend / f.purchases if f.purchases else 0.0,
        gap_std / gap_mean if gap_mean > 0 else 0.0,
        dec_spend[-1],
        max(t_ms - f.last_browse_ms, 0) / DAY_MS if browsed else 0.0,
        1.0 if browsed else 0.0,
        dec_events[-1],
        float(f.carts),
        float(f.tickets),
        f.refunds / f.purchases if f.purchases else 0.0,
    ]


def named(names: Iterable[str], values: Iterable[float]) -> dict[str, float]:
    """An input vector as a mapping by name; NaN marks an input that could not be derived."""
    return {k: v for k, v in zip(names, values, strict=True) if not math.isnan(v)}
