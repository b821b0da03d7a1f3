"""The plain values that cross streamscore's layers: below the scorer, above nothing.

Ports, adapters and the runtime import their types from here, never from the scorer, so
importing an adapter does not import the models (or river). Everything here is a frozen or
slotted dataclass without behaviour beyond a few derived properties.

- ``Output``: one record for an output topic, what sinks carry.
- ``ScoringConfig`` (and ``ChurnActivity``): the horizons, periods and thresholds of the
  scoring semantics, built from the settings.
- ``ModelParams``: what the models predict (horizons, churn activity) and how they learn.
- ``Evaluation``: a user's scores as of some event time, before any side effect.
- ``Counters``: what the scorer has done so far, for progress displays and metrics.
- ``TrainingExample``: one resolved label with everything needed to validate and learn it
  anywhere; what the scorer hands the trainer (see ``core/lineage.py``).
- ``PopulationSample``: one customer's recency, frequency and spend at a snapshot, which the
  RFM quantiles of the population are fitted to.
- ``CustomerObservation``: one sampled customer's buy-till-you-die summary after an event,
  which the population model (Pareto/NBD, Gamma-Gamma) is fitted to.
- ``LabelOutcome``: a resolved churn label with its user, for comparisons against ground
  truth (the demo's simulator oracle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from streamscore.core.alerts import AlertPolicy
from streamscore.core.timeutil import DAY_MS


@dataclass(slots=True)
class Output:
    """One record for an output topic, keyed by user.

    ``value`` None is a tombstone (an erased user's records retracted from a compacted
    topic). ``raw``, when set, is sent byte for byte instead of ``value`` encoded (a re-keyed
    input record, whose ``value`` then only describes it), with ``headers``.
    """

    topic: str
    key: str
    value: dict[str, Any] | None
    raw: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


class ChurnActivity(StrEnum):
    """What counts as activity for the churn label."""

    ANY = "any"
    PURCHASE = "purchase"


@dataclass(frozen=True, slots=True)
class ScoringConfig:
    """Horizons, periods and thresholds of the scoring semantics (event-time milliseconds)."""

    churn_horizon_days: float = 14.0
    value_horizon_days: float = 30.0
    snapshot_period_days: float = 7.0
    allowed_lateness_ms: int = 5 * 60_000
    rescore_after_days: tuple[float, ...] = (3.0, 7.0, 14.0, 21.0, 30.0, 45.0, 60.0, 90.0)
    churn_activity: ChurnActivity = ChurnActivity.ANY
    at_risk_threshold: float = 0.6
    alerts: AlertPolicy = field(default_factory=AlertPolicy)
    explain_scores: bool = False  # every score carries its contributions (alerts always do)

    @property
    def churn_horizon_ms(self) -> int:
        """Churn horizon H in milliseconds."""
        return round(self.churn_horizon_days * DAY_MS)

    @property
    def value_horizon_ms(self) -> int:
        """Value horizon in milliseconds."""
        return round(self.value_horizon_days * DAY_MS)

    @property
    def snapshot_period_ms(self) -> int:
        """The period of each user's snapshot grid, in milliseconds."""
        return round(self.snapshot_period_days * DAY_MS)

    @property
    def dormant_periods(self) -> float:
        """Periods of silence after which a user's snapshots are sampled, not all taken:
        as many as the churn horizon spans (silence beyond it is the long tail)."""
        return max(1.0, math.ceil(self.churn_horizon_days / self.snapshot_period_days))

    @property
    def purchase_activity(self) -> bool:
        """Churn means no purchase (rather than no event) within the horizon."""
        return self.churn_activity is ChurnActivity.PURCHASE

    @property
    def rescore_points_ms(self) -> tuple[int, ...]:
        """Inactivity offsets at which silent users are rescored; the churn horizon is one."""
        points = {*self.rescore_after_days, self.churn_horizon_days}
        return tuple(sorted(round(d * DAY_MS) for d in points))


@dataclass(frozen=True, slots=True)
class ModelParams:
    """What the models predict (the horizons and churn activity) and how they learn."""

    churn_horizon_days: float = 14.0
    value_horizon_days: float = 30.0
    purchase_activity: bool = False  # churn means no purchase (True) or no event (False)
    learning_rate: float = 0.05
    l2: float = 1e-3
    sample_size: int = 20_000
    refit_days: float = 7.0


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A user's scores as of some event time, before any side effect."""

    churn: float
    value: float
    segment: str
    lifecycle: str
    derived: dict[str, float]
    churn_x: list[float]


@dataclass(slots=True)
class Counters:
    """What the scorer has done since it started (cumulative, never reset)."""

    events: int = 0
    late_applied: int = 0  # of ``events``, late ones applied (late_events=apply)
    duplicates: int = 0
    scores: int = 0
    alerts: int = 0
    segment_changes: int = 0
    snapshots: int = 0


class LabelKind(StrEnum):
    """Which model a training example is for."""

    CHURN = "churn"
    VALUE = "value"


@dataclass(frozen=True, slots=True)
class TrainingExample:
    """One resolved label, with what it takes to validate and learn it anywhere.

    Made by the scorer when the watermark passes a snapshot's horizon, and handed to a
    ``Learner``: first scored against ``predicted`` (the prediction stored with the snapshot,
    made before anything learnt this label), then learnt. No user id: the trainer needs none,
    and the ``training-examples`` topic carries none (DESIGN.md §3).

    ``inputs`` are the model's inputs at ``snapshot_ms``, by name. A name the current models
    take but the example lacks could not be derived when a stored snapshot was upgraded from
    an older input set (see ``core/inputs.py``): the model learns without it.
    """

    kind: LabelKind
    inputs: dict[str, float]
    label: float  # churn: 1.0 churned, 0.0 not; value: the spend within the horizon
    predicted: float
    baseline: float | None  # value: the naive baseline (past daily spend × horizon); churn: None
    snapshot_ms: int
    label_ms: int  # when the label became final: the snapshot's time plus the horizon
    weight: float = 1.0  # inverse of the probability the snapshot was taken with
    model_version: str | None = None  # of the models that made ``predicted``, when known
    orders: float = math.nan  # value: orders within the horizon (NaN: unknown)
    btyd: float = math.nan  # the fitted BTYD model's own prediction then (NaN: unknown)
    corrected: float = math.nan  # the corrected model's prediction then, served or not
    id: str = ""  # deterministic (a hash of user, snapshot time and kind): how the trainer
    # recognises an example published twice (``core/training_records.py``)

    @property
    def churned(self) -> bool:
        """The churn label as a boolean (churn examples only)."""
        return self.label >= 0.5


@dataclass(frozen=True, slots=True)
class PopulationSample:
    """A customer's recency, frequency and monetary value at a snapshot (RFM population)."""

    days_since_purchase: float
    purchases: float
    spend: float
    id: str = ""  # deterministic (a hash of user and snapshot time), as for examples


@dataclass(frozen=True, slots=True)
class CustomerObservation:
    """A sampled customer's model inputs as of their latest event, for the population fit.

    ``key_hash`` stands for the customer (the latest observation of a customer replaces the
    earlier ones); it is a hash, not the user id.
    """

    key_hash: int
    inputs: tuple[float, ...]
    t_ms: int
    partition: int = -1  # the input partition it came from (-1: not known)


@dataclass(slots=True)
class LabelOutcome:
    """A resolved churn label, for callers that compare against ground truth (the demo)."""

    user_id: str
    t_ms: int
    churned: bool
    predicted: float
    recency_days: float
    btyd: float = math.nan  # the fitted BTYD model's own prediction, stored with the snapshot
