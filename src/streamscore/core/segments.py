"""RFM segments and the customer lifecycle.

R is days since the last purchase (lower is better), F the number of purchases, M lifetime
spend, each scored 1–5 against the population's streaming quintiles. The segment names follow
the usual RFM grid that retention teams already know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from streamscore.core.quantiles import LogHistogram


class Lifecycle(StrEnum):
    """Where a customer is in their relationship with the shop."""

    NEW = "new"
    CONVERTED = "converted"
    RETAINED = "retained"
    AT_RISK = "at_risk"
    CHURNED = "churned"
    REACTIVATED = "reactivated"


PROSPECT = "Prospect"


@dataclass(slots=True)
class RfmScorer:
    """Population quintiles for recency, frequency and monetary value."""

    recency: LogHistogram = field(default_factory=lambda: LogHistogram(max_value=3650.0))
    frequency: LogHistogram = field(default_factory=lambda: LogHistogram(max_value=10_000.0))
    monetary: LogHistogram = field(default_factory=lambda: LogHistogram(max_value=1e7))

    def observe(self, days_since_purchase: float, purchases: float, spend: float) -> None:
        """Add one customer observation to the population (buyers only)."""
        if purchases <= 0:
            return
        self.recency.update(days_since_purchase)
        self.frequency.update(purchases)
        self.monetary.update(spend)

    def scores(
        self, days_since_purchase: float, purchases: float, spend: float
    ) -> tuple[int, int, int]:
        """R, F and M quintile scores, 5 best."""
        return (
            self.recency.score(days_since_purchase, higher_is_better=False),
            self.frequency.score(purchases),
            self.monetary.score(spend),
        )


def segment_name(r: int, f: int, m: int, purchases: float) -> str:
    """Map R, F, M scores to the segment names of the classic RFM grid."""
    if purchases <= 0:
        return PROSPECT
    if purchases == 1 and r >= 4:
        return "New Customers"
    if r >= 4 and f >= 4 and m >= 4:
        return "Champions"
    if r <= 1 and f >= 4 and m >= 4:
        return "Can't Lose"
    if r <= 2 and f >= 3:
        return "At Risk"
    if r >= 3 and f >= 4:
        return "Loyal"
    if r >= 4 and f >= 2:
        return "Potential Loyalists"
    if r >= 4:
        return "Promising"
    if r == 3:
        return "Need Attention"
    if r == 2:
        return "Hibernating"
    return "Lost"


def next_lifecycle(
    previous: Lifecycle | None,
    *,
    purchases: int,
    recency_days: float,
    churn_probability: float,
    churn_horizon_days: float,
    at_risk_threshold: float,
    purchased_since_reactivation: bool,
) -> Lifecycle:
    """The lifecycle stage now, given the previous one (new → converted → retained → …)."""
    if recency_days >= churn_horizon_days:
        return Lifecycle.CHURNED
    if previous is Lifecycle.CHURNED or (
        previous is Lifecycle.REACTIVATED and not purchased_since_reactivation
    ):
        return Lifecycle.REACTIVATED
    if purchases == 0:
        return Lifecycle.NEW
    if churn_probability >= at_risk_threshold:
        return Lifecycle.AT_RISK
    return Lifecycle.CONVERTED if purchases == 1 else Lifecycle.RETAINED
