"""Which prediction is served: the learnt corrections, or the fitted BTYD model alone.

The corrections are learnt from labels that are a horizon old, from customers as they were
then. Where the population moves (a young shop whose cohort ages, a season, a change in
what the shop sells) what they learnt can be worse than no correction at all, and nothing in
the learning itself says so: on the labels just learnt they always look good. What does say
so is progressive validation: every snapshot stores both predictions made then, and when its
label resolves, each is scored against it.

So the lineage serves the corrected prediction only while, over the last ``window`` resolved
labels, its stored predictions have a lower (sampling-weighted) loss than the BTYD model's
stored predictions on the same labels; otherwise it serves the BTYD model's, and keeps
learning and validating the corrections alongside. The losses are proper scoring rules for
what each number claims to be: log loss for a churn probability, squared error for expected
spend. Until the corrections have a record (the first horizon of a stream), nothing beats
the BTYD model, and it is served.

The window is a count of labels, like the rolling quality figures on the dashboard, so the
choice follows the same labels the dashboard shows.
"""

from __future__ import annotations

import math
from collections import deque

from streamscore.core.validation import log_loss

WINDOW = 2000


class _Race:
    """Weighted loss of the corrected prediction minus the BTYD model's, over a window."""

    __slots__ = ("diffs", "total", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.diffs: deque[float] = deque()
        self.total = 0.0

    def add(self, diff: float) -> None:
        self.diffs.append(diff)
        self.total += diff
        if len(self.diffs) > self.window:
            self.total -= self.diffs.popleft()
            if not self.diffs:
                self.total = 0.0

    @property
    def corrected_wins(self) -> bool:
        # Summing then subtracting drifts by rounding; a tie (no corrections yet) is a loss.
        return self.total < -1e-9 * max(len(self.diffs), 1)


class ServingGate:
    """Keeps the race between the two predictions, for churn and for value."""

    def __init__(self, window: int = WINDOW) -> None:
        self.churn = _Race(window)
        self.value = _Race(window)

    @property
    def serve_churn_corrections(self) -> bool:
        """Whether scores carry the corrected churn probability (else the BTYD model's)."""
        return self.churn.corrected_wins

    @property
    def serve_value_corrections(self) -> bool:
        """Whether scores carry the corrected expected spend (else BTYD × Gamma-Gamma's)."""
        return self.value.corrected_wins

    def churn_label(self, corrected: float, btyd: float, churned: bool, weight: float) -> None:
        """A resolved churn label and both predictions stored with its snapshot."""
        if math.isnan(corrected) or math.isnan(btyd):
            return
        self.churn.add(weight * (log_loss(corrected, churned) - log_loss(btyd, churned)))

    def value_label(self, corrected: float, btyd: float, spend: float, weight: float) -> None:
        """A resolved value label and both predictions stored with its snapshot."""
        if math.isnan(corrected) or math.isnan(btyd) or math.isnan(spend):
            return
        self.value.add(weight * ((corrected - spend) ** 2 - (btyd - spend) ** 2))

    def describe(self) -> dict[str, object]:
        """For reports and the published summary."""
        return {
            "serving": {
                "churn": "corrected" if self.serve_churn_corrections else "btyd",
                "value": "corrected" if self.serve_value_corrections else "btyd",
            },
            "labels_compared": {"churn": len(self.churn.diffs), "value": len(self.value.diffs)},
        }
