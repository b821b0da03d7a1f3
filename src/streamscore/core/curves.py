"""The curves behind report.html, from the running figures progressive validation keeps:
ROC from the score histograms, AUC per block of labels over time, and the value model's gain
(Lorenz) curve and lift by decile from its reservoir sample. All bounded in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streamscore.core.timeutil import iso

TIMELINE_BINS = 100


def auc_of_bins(pos: list[float], neg: list[float]) -> float | None:
    """ROC AUC from score histograms: P(score of a positive > score of a negative)."""
    n_pos, n_neg = sum(pos), sum(neg)
    if not n_pos or not n_neg:
        return None
    below = 0.0
    total = 0.0
    for p, n in zip(pos, neg, strict=True):
        total += p * (below + n / 2)
        below += n
    return total / (n_pos * n_neg)


def roc_points(pos: list[float], neg: list[float], points: int = 100) -> list[list[float]]:
    """[false positive rate, true positive rate] from the highest threshold down, thinned to
    about ``points`` (the ends (0, 0) and (1, 1) always in)."""
    n_pos, n_neg = sum(pos), sum(neg)
    if not n_pos or not n_neg:
        return []
    step = max(1, len(pos) // points)
    out = [[0.0, 0.0]]
    tp = fp = 0.0
    for i in range(len(pos) - 1, -1, -1):
        tp += pos[i]
        fp += neg[i]
        if i % step == 0:
            out.append([round(fp / n_neg, 5), round(tp / n_pos, 5)])
    if out[-1] != [1.0, 1.0]:
        out.append([1.0, 1.0])
    return out


@dataclass(slots=True)
class _Block:
    start_ms: int
    end_ms: int
    n: int = 0
    pos: list[float] = field(default_factory=lambda: [0.0] * TIMELINE_BINS)
    neg: list[float] = field(default_factory=lambda: [0.0] * TIMELINE_BINS)

    def absorb(self, other: _Block) -> None:
        self.start_ms = min(self.start_ms, other.start_ms)
        self.end_ms = max(self.end_ms, other.end_ms)
        self.n += other.n
        self.pos = [a + b for a, b in zip(self.pos, other.pos, strict=True)]
        self.neg = [a + b for a, b in zip(self.neg, other.neg, strict=True)]


@dataclass(slots=True)
class AucTimeline:
    """ROC AUC per block of consecutive labels, in the order they resolve.

    Blocks hold ``block_size`` labels; when there are more than ``max_blocks``, neighbours
    merge in pairs and the block size doubles, so memory stays bounded (``max_blocks`` ×
    two 100-bin histograms) however long the stream, and the blocks stay equal in size.
    """

    max_blocks: int = 64
    block_size: int = 250
    blocks: list[_Block] = field(default_factory=list)

    def update(self, p: float, churned: bool, t_ms: int) -> None:
        """Add one resolved label (``t_ms``: when its prediction was made)."""
        if not self.blocks or self.blocks[-1].n >= self.block_size:
            self.blocks.append(_Block(t_ms, t_ms))
            if len(self.blocks) > self.max_blocks:
                self._halve()
        block = self.blocks[-1]
        b = min(int(p * TIMELINE_BINS), TIMELINE_BINS - 1)
        (block.pos if churned else block.neg)[b] += 1
        block.n += 1
        block.start_ms = min(block.start_ms, t_ms)
        block.end_ms = max(block.end_ms, t_ms)

    def _halve(self) -> None:
        full, last = self.blocks[:-1], self.blocks[-1]
        merged = []
        for i in range(0, len(full) - 1, 2):
            full[i].absorb(full[i + 1])
            merged.append(full[i])
        if len(full) % 2:
            merged.append(full[-1])
        self.blocks = [*merged, last]
        self.block_size *= 2

    def report(self) -> list[dict[str, Any]]:
        """One row per block: its time span, labels, churn rate and AUC."""
        return [
            {
                "from": iso(b.start_ms),
                "to": iso(b.end_ms),
                "labels": b.n,
                "churn_rate": round(sum(b.pos) / b.n, 4) if b.n else None,
                "roc_auc": auc_of_bins(b.pos, b.neg),
            }
            for b in self.blocks
        ]


def gain_curve(sample: list[tuple[float, float]], points: int = 50) -> dict[str, Any]:
    """Share of the realised spend captured by the top share of customers, ranked by the
    model and by the spend itself (the best possible), at ``points`` + 1 shares."""
    n = len(sample)
    total = sum(actual for _, actual in sample)
    if n < 2 or total <= 0:
        return {"share": [], "model": [], "perfect": []}
    by_model = [a for _, a in sorted(sample, key=lambda r: -r[0])]
    by_actual = sorted((a for _, a in sample), reverse=True)
    shares = [i / points for i in range(points + 1)]

    def captured(order: list[float]) -> list[float]:
        cum = [0.0]
        for a in order:
            cum.append(cum[-1] + a)
        return [round(cum[round(s * n)] / total, 5) for s in shares]

    return {"share": shares, "model": captured(by_model), "perfect": captured(by_actual)}


def lift_by_decile(sample: list[tuple[float, float]]) -> list[dict[str, float]]:
    """Mean predicted and realised spend per decile of the prediction (1: highest)."""
    n = len(sample)
    if n < 10:
        return []
    ranked = sorted(sample, key=lambda r: -r[0])
    out = []
    for d in range(10):
        rows = ranked[d * n // 10 : (d + 1) * n // 10]
        out.append(
            {
                "decile": d + 1,
                "mean_predicted": round(sum(p for p, _ in rows) / len(rows), 4),
                "mean_actual": round(sum(a for _, a in rows) / len(rows), 4),
            }
        )
    return out
