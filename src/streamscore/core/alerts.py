"""When a churn score becomes an alert, and what the retention team should do about it.

Hysteresis keeps a user whose score hovers around the threshold from flapping: an alert is
raised at ``raise_at`` and re-armed only after the score falls below ``clear_at``. A cooldown
in event time caps alerts per user, whatever the score does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamscore.core.timeutil import DAY_MS

DEFAULT_ACTIONS: dict[str, str] = {
    "high/critical": "personal_outreach",
    "high/high": "vip_discount",
    "mid/critical": "discount_offer",
    "mid/high": "reengagement_email",
    "low/critical": "reengagement_email",
    "low/high": "newsletter_nudge",
}


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """Thresholds, cooldown and the value-tier × risk action matrix."""

    raise_at: float = 0.7
    clear_at: float = 0.5
    critical_at: float = 0.9
    cooldown_days: float = 7.0
    min_purchases: int = 1
    value_tiers: tuple[float, float] = (50.0, 200.0)
    actions: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ACTIONS))

    def value_tier(self, predicted_value: float) -> str:
        """low, mid or high by expected spend within the value horizon."""
        low, high = self.value_tiers
        return "high" if predicted_value >= high else "mid" if predicted_value >= low else "low"

    def risk(self, churn_probability: float) -> str:
        """high or critical, for scores at or above the alert threshold."""
        return "critical" if churn_probability >= self.critical_at else "high"

    def action(self, churn_probability: float, predicted_value: float) -> str:
        """The recommended retention action for this score."""
        key = f"{self.value_tier(predicted_value)}/{self.risk(churn_probability)}"
        return self.actions.get(key, "review")


@dataclass(slots=True)
class AlertState:
    """Per-user memory of the alert policy: armed or not, and when it last fired."""

    active: bool = False
    last_alert_ms: int = 0

    def step(
        self, policy: AlertPolicy, churn_probability: float, t_ms: int, purchases: int
    ) -> bool:
        """Advance with a new score; True when this score raises an alert."""
        if self.active:
            if churn_probability < policy.clear_at:
                self.active = False
            return False
        if churn_probability < policy.raise_at or purchases < policy.min_purchases:
            return False
        if self.last_alert_ms and t_ms - self.last_alert_ms < policy.cooldown_days * DAY_MS:
            return False
        self.active = True
        self.last_alert_ms = t_ms
        return True
