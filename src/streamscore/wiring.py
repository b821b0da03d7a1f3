"""How the pieces are put together, once, for every command (demo, replay and run).

Only the adapters differ between the commands; what sits between them is built here.
"""

from __future__ import annotations

from streamscore.core.scorer import Scorer
from streamscore.core.trainer import Trainer
from streamscore.core.values import ScoringConfig


def in_process_scorer(config: ScoringConfig) -> tuple[Scorer, Trainer]:
    """A scorer that learns through a trainer of its own, synchronously (one drift log)."""
    trainer = Trainer()
    return Scorer(config, trainer, trainer, trainer.drift.log), trainer
