"""Model checkpoints in the state store: restore at start, save periodically and on shutdown."""

from __future__ import annotations

import logging
import platform
import time
from importlib.metadata import version as package_version
from typing import Any

from streamscore import __version__
from streamscore.config import Settings
from streamscore.core import checkpoint
from streamscore.core.inputs import FEATURE_SCHEMA
from streamscore.core.trainer import Trainer
from streamscore.core.values import ModelParams
from streamscore.errors import CheckpointError, CheckpointTooNew, ConfigError, TransientError
from streamscore.ports import StateStore

log = logging.getLogger("streamscore.models")
BLOB = "models"


def _predicts(params: ModelParams) -> dict[str, object]:
    """What a lineage's models predict: checkpoints of other horizons are not restored."""
    return {
        "churn_horizon_days": params.churn_horizon_days,
        "value_horizon_days": params.value_horizon_days,
        "purchase_activity": params.purchase_activity,
    }


class ModelCheckpoints:
    """Owns the signed checkpoint of the trainer's lineage (models, RFM quantiles)."""

    def __init__(self, settings: Settings, store: StateStore, trainer: Trainer) -> None:
        self.store = store
        self.trainer = trainer
        self.interval = settings.checkpoint_interval_seconds
        self.on_bad = settings.on_bad_checkpoint
        self.key_id = settings.checkpoint_key_id
        self.keys = {
            k: v.get_secret_value().encode() for k, v in settings.checkpoint_old_keys.items()
        }
        self.key = (
            settings.checkpoint_key.get_secret_value().encode() if settings.checkpoint_key else None
        )
        if self.key is not None:
            self.keys[self.key_id] = self.key
        self.last_saved = time.monotonic()
        self.last_saved_wall = 0.0
        self.offsets: dict[int, int] = {}

    def restore(self) -> bool:
        """Load the latest checkpoint if there is one; True when models were restored."""
        blob = self.store.get_blob(BLOB)
        if blob is None:
            log.info("no model checkpoint yet: starting with fresh models")
            return False
        if not self.keys:
            raise ConfigError(
                "a model checkpoint exists but STREAMSCORE_CHECKPOINT_KEY is not set, so it "
                "cannot be verified; set the key it was signed with"
            )
        try:
            ckpt = checkpoint.load(blob, self.keys)
        except CheckpointError as exc:
            if self.on_bad == "fresh":
                log.error("%s; starting with fresh models (on_bad_checkpoint=fresh)", exc)
                return False
            if isinstance(exc, CheckpointTooNew):
                raise CheckpointTooNew(
                    f"{exc}, or set STREAMSCORE_ON_BAD_CHECKPOINT=fresh to start fresh models"
                ) from None
            raise CheckpointError(
                f"{exc}. Fix or remove it, or set STREAMSCORE_ON_BAD_CHECKPOINT=fresh"
            ) from None
        if ckpt.header.get("feature_schema") != FEATURE_SCHEMA:
            log.warning(
                "the model checkpoint was made for other model inputs (schema %s, this version's "
                "is %s): starting fresh models",
                ckpt.header.get("feature_schema"),
                FEATURE_SCHEMA,
            )
            return False
        wanted = _predicts(self.trainer.models.params)
        if ckpt.header.get("predicts", wanted) != wanted:
            log.warning(
                "the model checkpoint predicts %s, the settings ask for %s (a horizon or "
                "churn_activity changed): starting fresh models",
                ckpt.header.get("predicts"),
                wanted,
            )
            return False
        state: dict[str, Any] = ckpt.state
        self.trainer.models = state["models"]
        self.trainer.rfm = state["rfm"]
        # Carry the restored lineage's offsets forward: this process may never read some of
        # those partitions again, and its checkpoints must still say what the models reflect.
        saved = ckpt.header.get("offsets")
        if isinstance(saved, dict):
            self.offsets = {int(p): int(o) for p, o in saved.items()}
        log.info("restored models %s from checkpoint", self.trainer.models.version)
        return True

    def maybe_save(self, offsets: dict[int, int]) -> None:
        """Save when the interval has passed."""
        self.offsets.update(offsets)
        if time.monotonic() - self.last_saved >= self.interval:
            try:
                self.save()
            except TransientError as exc:
                # A checkpoint is an optimisation: a store hiccup must not stop the scorer.
                log.warning(
                    "model checkpoint failed (%s); trying again in %.0fs", exc, self.interval
                )

    def _newer_checkpoint(self) -> int | None:
        """The format of the stored checkpoint when only a newer version can read it."""
        blob = self.store.get_blob(BLOB)
        header = checkpoint.peek_header(blob) if blob is not None else None
        if header is None:
            return None
        try:
            written, needs = checkpoint.versions(header)
        except CheckpointError:
            return None
        return written if needs > checkpoint.FORMAT else None

    def save(self) -> None:
        """Write a signed checkpoint now (no-op without a key).

        Never over a checkpoint only a newer version can read: in a rolling upgrade the old
        processes would otherwise downgrade the new version's models at every interval.
        """
        self.last_saved = time.monotonic()
        if self.key is None:
            return
        newer = self._newer_checkpoint()
        if newer is not None:
            log.warning(
                "not checkpointing: the stored model checkpoint has format v%d, newer than "
                "this streamscore's v%d (a rolling upgrade is under way: finish it, or roll "
                "back)",
                newer,
                checkpoint.FORMAT,
            )
            return
        models = self.trainer.models
        models.generation += 1
        header = {
            "model_version": models.version,
            "feature_schema": FEATURE_SCHEMA,
            "streamscore": __version__,
            "river": package_version("river"),
            "kafka-python": package_version("kafka-python"),
            "python": platform.python_version(),
            "created_unix": time.time(),
            "offsets": {str(p): o for p, o in self.offsets.items()},
            "labels_learnt": {"churn": models.churn_learnt, "value": models.value_learnt},
            "predicts": _predicts(models.params),
        }
        blob = checkpoint.dump(
            {"models": models, "rfm": self.trainer.rfm},
            key_id=self.key_id,
            key=self.key,
            header=header,
        )
        self.store.put_blob(BLOB, blob)
        self.last_saved_wall = time.time()
        log.info("checkpointed models %s (%d bytes)", models.version, len(blob))
