"""Streaming quantiles over the customer population, for RFM scores.

A log-spaced histogram: constant memory, mergeable, deterministic, and accurate to a bin width
(about 4% of the value) which is far finer than the quintiles it serves. Counts are halved when
they pass a cap, so the cut points follow a slowly changing population.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

QUINTILES = (0.2, 0.4, 0.6, 0.8)


@dataclass(slots=True)
class LogHistogram:
    """Quantiles of non-negative values from a histogram on a log1p scale."""

    max_value: float
    bins: int = 256
    cap: float = 200_000.0
    counts: list[float] = field(default_factory=list)
    total: float = 0.0
    refresh_every: int = 256
    _cuts: list[float] = field(default_factory=list)
    _stale: int = 0
    _scale: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0.0] * (self.bins + 1)
        self._scale = self.bins / math.log1p(self.max_value)

    def _bin(self, value: float) -> int:
        return min(int(math.log1p(max(value, 0.0)) * self._scale), self.bins)

    def _edge(self, index: float) -> float:
        return math.expm1(index / self._scale)

    def update(self, value: float) -> None:
        """Count one observation."""
        self.counts[self._bin(value)] += 1.0
        self.total += 1.0
        self._stale += 1
        if self.total > self.cap:
            self.counts = [c / 2 for c in self.counts]
            self.total /= 2

    def quantile(self, q: float) -> float:
        """The value below which a share ``q`` of observations lie (interpolated in a bin)."""
        if self.total == 0:
            return 0.0
        target = q * self.total
        seen = 0.0
        for i, c in enumerate(self.counts):
            if c and seen + c >= target:
                return self._edge(i + (target - seen) / c)
            seen += c
        return self.max_value

    def score(self, value: float, *, higher_is_better: bool = True) -> int:
        """A 1–5 quintile score of ``value`` against the population so far."""
        if self.total == 0:
            return 3
        if not self._cuts or self._stale >= self.refresh_every:
            # Cut points move slowly; recomputing them every few hundred updates keeps a
            # score at a bisect instead of a histogram scan.
            self._cuts = [self.quantile(q) for q in QUINTILES]
            self._stale = 0
        rank = bisect.bisect_right(self._cuts, value) + 1
        return rank if higher_is_better else 6 - rank

    def to_dict(self) -> dict[str, Any]:
        """Serializable form for the model checkpoint."""
        return {"max_value": self.max_value, "bins": self.bins, "counts": self.counts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogHistogram:
        """Inverse of ``to_dict``."""
        counts = list(data["counts"])
        return cls(data["max_value"], data["bins"], counts=counts, total=sum(counts))
