"""Published model versions in the state store: the trainer writes them, every scorer reads them.

Two keys: ``lineage``, the latest version as a signed checkpoint (``core/checkpoint.py``:
HMAC-SHA256 under a key id, format versions) holding the models, the RFM quantiles and, pickled
apart, the trainer's own state; and ``lineage-head``, a few bytes of JSON (version, writer,
time, offset) that scorers read every ``model_staleness_seconds`` to learn whether there is
something newer to load. The blob is written before the head, each with one SET, so a reader
never sees a head ahead of its blob.

A publish first checks that the head is still the one this trainer restored or last wrote:
another writer since then means another process trains (``LineageFencedError``), and this one
gives way rather than fork the lineage. Checkpoints of earlier streamscore versions (one
``models`` blob per deployment, format 2) are imported when no lineage exists yet.
"""

from __future__ import annotations

import logging
import os
import pickle
import platform
import socket
import time
import uuid
from dataclasses import dataclass
from importlib.metadata import version as package_version
from typing import Any

import orjson

from streamscore import __version__
from streamscore.config import Settings
from streamscore.core import checkpoint
from streamscore.core.inputs import FEATURE_SCHEMA
from streamscore.core.lineage import ServedLineage
from streamscore.core.models import Models
from streamscore.core.segments import RfmScorer
from streamscore.core.trainer import Trainer
from streamscore.core.training_records import RecentIds
from streamscore.core.values import ModelParams
from streamscore.errors import CheckpointError, CheckpointTooNew, ConfigError, TransientError
from streamscore.ports import StateStore
from streamscore.training import LineageFencedError, Restored

log = logging.getLogger("streamscore.models")
BLOB = "lineage"
HEAD = "lineage-head"
LEGACY_BLOB = "models"


def _predicts(params: ModelParams) -> dict[str, object]:
    """What a lineage's models predict: checkpoints of other horizons are not restored."""
    return {
        "churn_horizon_days": params.churn_horizon_days,
        "value_horizon_days": params.value_horizon_days,
        "purchase_activity": params.purchase_activity,
    }


@dataclass(frozen=True, slots=True)
class Head:
    """What ``lineage-head`` says: the latest version, who published it, when, up to where."""

    version: int
    writer: str
    created_unix: float
    offset: int
    min_reader: int  # of the blob's checkpoint format

    @classmethod
    def parse(cls, raw: bytes) -> Head | None:
        """The head in ``raw``; None when it is not one (then the blob alone is believed)."""
        try:
            d = orjson.loads(raw)
            return cls(
                int(d["version"]),
                str(d["writer"]),
                float(d["created_unix"]),
                int(d["offset"]),
                int(d.get("min_reader", checkpoint.MIN_READER)),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {"version": self.version, "writer": self.writer, "created_unix": self.created_unix,
             "offset": self.offset, "format": checkpoint.FORMAT, "min_reader": self.min_reader}
        )  # fmt: skip


@dataclass(slots=True)
class Published:
    """A verified version as the store holds it."""

    models: Models
    rfm: RfmScorer
    version: int
    writer: str
    created_unix: float
    summary: dict[str, Any]
    trainer_state: bytes | None  # the trainer's part, pickled; None in imported checkpoints
    next_offset: int


class LineageStore:
    """Signed model versions of the one lineage in a state store.

    The trainer's ``Publication`` (``restore``, ``publish``) and what scorers load (``head``,
    ``load``).
    """

    def __init__(
        self, settings: Settings, store: StateStore, params: ModelParams | None = None
    ) -> None:
        self.store = store
        self.params = params or settings.model_params()
        self.on_bad = settings.on_bad_checkpoint
        self.window_size = settings.training_dedupe_window
        self.key_id = settings.checkpoint_key_id
        self.keys = {
            k: v.get_secret_value().encode() for k, v in settings.checkpoint_old_keys.items()
        }
        self.key = (
            settings.checkpoint_key.get_secret_value().encode() if settings.checkpoint_key else None
        )
        if self.key is not None:
            self.keys[self.key_id] = self.key
        self.writer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._expected: tuple[int, str] | None = None  # the head the next publish must find
        self.last_published_wall = 0.0

    # -- reading ------------------------------------------------------------------------------

    def head(self) -> Head | None:
        """The latest version's head (one small read), or None before any publish."""
        raw = self.store.get_blob(HEAD)
        return None if raw is None else Head.parse(raw)

    def load(self) -> Published | None:
        """The latest published version, verified; None when there is none to use."""
        blob, imported = self.store.get_blob(BLOB), False
        if blob is None:
            blob, imported = self.store.get_blob(LEGACY_BLOB), True
        if blob is None:
            return None
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
                return None
            if isinstance(exc, CheckpointTooNew):
                raise CheckpointTooNew(
                    f"{exc}, or set STREAMSCORE_ON_BAD_CHECKPOINT=fresh to start fresh models"
                ) from None
            raise CheckpointError(
                f"{exc}. Fix or remove it, or set STREAMSCORE_ON_BAD_CHECKPOINT=fresh"
            ) from None
        header = ckpt.header
        if header.get("feature_schema") != FEATURE_SCHEMA:
            log.warning(
                "the model checkpoint was made for other model inputs (schema %s, this version's "
                "is %s): starting fresh models",
                header.get("feature_schema"),
                FEATURE_SCHEMA,
            )
            return None
        wanted = _predicts(self.params)
        if header.get("predicts", wanted) != wanted:
            log.warning(
                "the model checkpoint predicts %s, the settings ask for %s (a horizon or "
                "churn_activity changed): starting fresh models",
                header.get("predicts"),
                wanted,
            )
            return None
        state: dict[str, Any] = ckpt.state
        if imported:
            log.info(
                "no published model lineage yet: starting from the models %s of an earlier "
                "streamscore's checkpoint",
                state["models"].version,
            )
        return Published(
            models=state["models"],
            rfm=state["rfm"],
            version=int(header["version"]),
            writer=str(header.get("writer", "")),
            created_unix=float(header.get("created_unix", 0.0)),
            summary=dict(header.get("lineage") or {}),
            trainer_state=state.get("trainer"),
            next_offset=int(header["training_offset"]),
        )

    # -- the trainer's Publication --------------------------------------------------------------

    def restore(self) -> Restored | None:
        """The latest version as a trainer resumes it (and the head its next publish expects)."""
        head = self.head()
        self._expected = None if head is None else (head.version, head.writer)
        published = self.load()
        if published is None:
            if head is None:
                return None
            # A version exists but cannot be used (on_bad_checkpoint=fresh, other inputs or
            # horizons): fresh models learn the whole topic again, numbered after it.
            return Restored(Trainer(Models(self.params)), None, 0, head.version)
        trainer = Trainer(published.models, published.rfm)
        window = None
        if published.trainer_state is not None:
            # Verified with the rest of the payload: its bytes are inside the signed pickle.
            own = pickle.loads(published.trainer_state)
            trainer.quality, trainer.btyd_quality = own["quality"], own["btyd_quality"]
            trainer.drift, trainer.unlearnt = own["drift"], own["unlearnt"]
            trainer.labels_until_ms = own.get("labels_until_ms", 0)  # older versions: 0
            window = RecentIds.from_state(self.window_size, own["window"])
        version = max(published.version, head.version if head else 0)
        return Restored(trainer, window, published.next_offset, version)

    def publish(self, trainer: Trainer, window: RecentIds, next_offset: int, version: int) -> None:
        """Write ``version`` (blob, then head); ``LineageFencedError`` if another trainer wrote."""
        if self.key is None:
            raise ConfigError(
                "STREAMSCORE_CHECKPOINT_KEY is not set: the trainer signs every model version "
                "it publishes; set a long random key (openssl rand -hex 32), the same in "
                "every process"
            )
        head = self.head()
        if head is not None and head.min_reader > checkpoint.FORMAT:
            log.warning(
                "not publishing: the stored model version needs a reader of format v%d, newer "
                "than this streamscore's v%d (a rolling upgrade is under way: finish it, or "
                "roll back)",
                head.min_reader,
                checkpoint.FORMAT,
            )
            return
        found = None if head is None else (head.version, head.writer)
        if head is not None and found != self._expected:
            raise LineageFencedError(
                f"model version {head.version} was published by {head.writer} since this "
                f"trainer ({self.writer}) resumed or published its own"
            )
        models = trainer.models
        created = time.time()
        header = {
            "model_version": models.version,
            "version": version,
            "writer": self.writer,
            "training_offset": next_offset,
            "feature_schema": FEATURE_SCHEMA,
            "streamscore": __version__,
            "river": package_version("river"),
            "kafka-python": package_version("kafka-python"),
            "python": platform.python_version(),
            "created_unix": created,
            "labels_learnt": {"churn": models.churn_learnt, "value": models.value_learnt},
            "predicts": _predicts(models.params),
            "lineage": trainer.summary(),
        }
        own = {
            "quality": trainer.quality,
            "btyd_quality": trainer.btyd_quality,
            "drift": trainer.drift,
            "unlearnt": trainer.unlearnt,
            "labels_until_ms": trainer.labels_until_ms,
            "window": window.state(),
        }
        blob = checkpoint.dump(
            {
                "models": models,
                "rfm": trainer.rfm,
                "trainer": pickle.dumps(own, protocol=pickle.HIGHEST_PROTOCOL),
            },
            key_id=self.key_id,
            key=self.key,
            header=header,
        )
        self.store.put_blob(BLOB, blob)
        new_head = Head(version, self.writer, created, next_offset, checkpoint.MIN_READER)
        self.store.put_blob(HEAD, new_head.to_bytes())
        self._expected = (version, self.writer)
        self.last_published_wall = created
        log.info(
            "published model version %s (%d bytes, training-examples offset %d)",
            models.version,
            len(blob),
            next_offset,
        )


class ModelFollower:
    """Keeps a scorer on the latest published version: a head check every ``every_s``."""

    def __init__(
        self,
        lineage: LineageStore,
        served: ServedLineage,
        every_s: float,
        clock: Any = time.monotonic,
    ) -> None:
        self.lineage = lineage
        self.served = served
        self.every_s = every_s
        self.clock = clock
        self._checked = -float("inf")
        self._failing = False

    def refresh(self, *, force: bool = False) -> bool:
        """Load a newer version if the head names one (always, with ``force``: at start);
        True when the scorer now uses another version. A store that fails is logged once
        and tried again at the next check; a version that fails to verify is refused at start
        (``on_bad_checkpoint``) and logged later, the scorer keeping its models."""
        now = self.clock()
        if not force and now - self._checked < self.every_s:
            return False
        self._checked = now
        served = self.served
        try:
            if not force:
                head = self.lineage.head()
                if head is None or (head.version, head.writer) == (served.version, served.writer):
                    self._recovered()
                    return False
            published = self.lineage.load()
        except TransientError as exc:
            if force:
                raise
            if not self._failing:
                log.warning("cannot check for a newer model version (%s); trying again", exc)
            self._failing = True
            return False
        except CheckpointError as exc:
            if force:
                raise
            log.error("a published model version was refused: %s; keeping version %d", exc,
                      served.version)  # fmt: skip
            return False
        self._recovered()
        if published is None:
            return False
        first = not served.created_unix
        served.replace(
            published.models,
            published.rfm,
            version=published.version,
            writer=published.writer,
            created_unix=published.created_unix,
            summary=published.summary,
        )
        (log.info if first or force else log.debug)(
            "scoring with model version %s (published %.0fs ago by %s)",
            published.models.version,
            max(time.time() - published.created_unix, 0.0),
            published.writer or "an earlier streamscore",
        )
        return True

    def _recovered(self) -> None:
        if self._failing:
            log.info("model version checks work again")
        self._failing = False
