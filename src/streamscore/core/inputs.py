"""The models' inputs: which derived features they take, how each enters, and the schema id.

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

# Model inputs: derived feature name → whether it enters as log1p (counts, amounts and
# durations are heavy-tailed) or as is (logits, ratios in [0, 1]).
CHURN_INPUTS: dict[str, bool] = {
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
VALUE_INPUTS: dict[str, bool] = {
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
# Input sets of earlier versions, by id, so that snapshots stored for them can be remapped.
EARLIER_SCHEMAS: dict[str, InputSchema] = {}


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


_CHURN_SPEC = tuple(CHURN_INPUTS.items())
_VALUE_SPEC = tuple(VALUE_INPUTS.items())


def _vector(spec: tuple[tuple[str, bool], ...], derived: dict[str, float]) -> list[float]:
    log1p = math.log1p
    out = []
    for name, logged in spec:
        v = derived[name]
        out.append((log1p(v) if v > 0 else 0.0) if logged else v)
    return out


def churn_inputs(derived: dict[str, float]) -> list[float]:
    """The churn model's input vector, in ``CHURN_INPUTS`` order."""
    return _vector(_CHURN_SPEC, derived)


def value_inputs(derived: dict[str, float]) -> list[float]:
    """The value model's input vector, in ``VALUE_INPUTS`` order."""
    return _vector(_VALUE_SPEC, derived)


def named(names: Iterable[str], values: Iterable[float]) -> dict[str, float]:
    """An input vector as a mapping by name; NaN marks an input that could not be derived."""
    return {k: v for k, v in zip(names, values, strict=True) if not math.isnan(v)}
