"""The trainer: one process at a time learns ``training-examples`` for every scorer.

The trainer is whichever member of the trainer's consumer group owns the topic's one
partition, so Kafka's group protocol decides who trains and moves the job when that process
dies or leaves: no lock of ours. Its loop:

- **on assignment**, restore the latest published model version (``Publication.restore``:
  models, RFM quantiles, progressive-validation figures, drift detectors and the window of
  recent ids) and seek the partition to the offset that version reflects, not to the group's
  commit. What was learnt after that version is learnt again from the topic, once, and
  nothing before it twice: a crash of the trainer loses no learning and doubles none;
- **per record**, in the partition's order: decode it back into the learner call a scorer
  made (``core/training_records.py``), drop it when its id is among the recent ones (a
  crashed scorer's redone batch), then validate and learn (``core/trainer.py``);
- **every** ``publish_every_s``, when something was learnt, publish the next signed version
  with the offset of the next record to read, then commit that offset (for lag tools; the
  trainer itself never resumes from a commit).

A version another trainer published meanwhile (two owners, e.g. one that lost its session
without noticing) makes ``publish`` raise ``LineageFencedError``: this one drops its lineage and
restores the newest, so the published lineage never forks.

``streamscore run`` runs this loop on a thread of its own (``service.py``), ``streamscore
train`` on its main thread, and ``demo``/``replay`` after every batch over an in-memory topic
(``wiring.LocalTraining``), so all three learn through this code.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from streamscore.core.trainer import Trainer
from streamscore.core.training_records import RecentIds, UnreadableRecordError, decode
from streamscore.core.values import CustomerObservation, TrainingExample
from streamscore.errors import StreamscoreError
from streamscore.guards import OnRetry, RetryPolicy
from streamscore.ports import SeekableSource, SourceRecord

log = logging.getLogger("streamscore.trainer")
TRAINING_PARTITION = 0
# Unreadable records logged one by one; after that, one line per this many.
UNREADABLE_LOG_EVERY = 1000


class LineageFencedError(StreamscoreError):
    """Another trainer published a version since this one restored or published its own."""


@dataclass(slots=True)
class Restored:
    """A published lineage as the trainer resumes it."""

    trainer: Trainer
    window: RecentIds | None  # None: a lineage from before windows were stored
    next_offset: int  # of training-examples: the first record it has not learnt
    version: int


class Publication(Protocol):
    """Where model versions are published (signed blobs in the state store; in-process)."""

    def restore(self) -> Restored | None:
        """The latest published lineage, or None to start fresh (from offset 0)."""
        ...

    def publish(self, trainer: Trainer, window: RecentIds, next_offset: int, version: int) -> None:
        """Publish ``version``; ``LineageFencedError`` when another trainer published since."""
        ...


@dataclass(slots=True)
class TrainerStats:
    """What the loop has done since the process started (cumulative)."""

    records: int = 0
    learnt: Counter[str] = field(default_factory=Counter)  # churn, value, rfm, customer
    duplicates: int = 0
    unreadable: int = 0
    published: int = 0
    fenced: int = 0


class TrainerLoop:
    """Consumes ``training-examples`` while it owns the partition; see the module docstring."""

    def __init__(
        self,
        source: SeekableSource,
        publication: Publication,
        fresh: Callable[[], Trainer],
        *,
        window: int,
        publish_every_s: float,
        max_records: int = 5000,
        clock: Callable[[], float] = time.monotonic,
        retry: RetryPolicy | None = None,
        on_retry: OnRetry | None = None,
    ) -> None:
        self.source = source
        self.publication = publication
        self.fresh = fresh
        self.window_size = window
        self.publish_every_s = publish_every_s
        self.max_records = max_records
        self.clock = clock
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self.stats = TrainerStats()
        self.trainer: Trainer | None = None  # set while this process owns the partition
        self.window = RecentIds(window)
        self.next_offset = 0
        self.version = 0
        self.unpublished = False
        self.published_at = clock()
        source.on_rebalance(self._assigned, self._revoked)

    @property
    def active(self) -> bool:
        """True while this process trains (owns the partition, lineage restored)."""
        return self.trainer is not None

    # -- ownership ----------------------------------------------------------------------------

    def _assigned(self, partitions: set[int]) -> None:
        if TRAINING_PARTITION in partitions:
            self._resume()

    def _resume(self) -> None:
        restored = self.retry.run("restore model lineage", self.publication.restore, self.on_retry)
        if restored is None:
            restored = Restored(self.fresh(), None, 0, 0)
        self.trainer = restored.trainer
        self.window = RecentIds.from_state(
            self.window_size, restored.window.state() if restored.window else None
        )
        self.next_offset, self.version = restored.next_offset, restored.version
        self.unpublished = False
        self.published_at = self.clock()
        self.source.seek(TRAINING_PARTITION, self.next_offset)
        log.info(
            "training: this process owns %s; resuming model version %d at offset %d "
            "(%d recent ids)",
            self.source.topic,
            self.version,
            self.next_offset,
            len(self.window),
        )

    def _revoked(self, partitions: set[int]) -> None:
        if TRAINING_PARTITION in partitions and self.trainer is not None:
            log.info(
                "training: %s moved to another process; this one stops training (version %d; "
                "what it learnt since is learnt again by the next owner)",
                self.source.topic,
                self.version,
            )
            self.trainer = None

    # -- learning -----------------------------------------------------------------------------

    def run_once(self, timeout_s: float = 0.0) -> int:
        """Poll once, learn what came, publish when due; returns the records polled."""
        records = self.retry.run(
            "poll training examples",
            lambda: self.source.poll(self.max_records, timeout_s),
            self.on_retry,
        )
        trainer = self.trainer
        if trainer is not None and records:
            for rec in records:
                self._learn(trainer, rec)
            self.next_offset = records[-1].offset + 1
            self.unpublished = True
        if self.unpublished and self.clock() - self.published_at >= self.publish_every_s:
            self.publish()
        return len(records)

    def drain(self) -> None:
        """Learn everything there is to read now, then publish (demo and replay)."""
        while self.run_once():
            pass
        self.publish()

    def _learn(self, trainer: Trainer, rec: SourceRecord) -> None:
        self.stats.records += 1
        try:
            rid, call = decode(orjson.loads(rec.value))
        except (orjson.JSONDecodeError, UnreadableRecordError) as exc:
            self.stats.unreadable += 1
            if self.stats.unreadable <= 10 or self.stats.unreadable % UNREADABLE_LOG_EVERY == 0:
                log.warning(
                    "training: skipping record %d of %s, which this version cannot learn (%s); "
                    "%d such records so far",
                    rec.offset,
                    rec.topic,
                    exc,
                    self.stats.unreadable,
                )
            return
        if isinstance(call, CustomerObservation):
            trainer.observe_customer(call)  # the sample keeps the latest: repeats are harmless
            self.stats.learnt["customer"] += 1
        elif not self.window.add(rid):
            self.stats.duplicates += 1
        elif isinstance(call, TrainingExample):
            trainer.learn(call)
            self.stats.learnt[call.kind.value] += 1
        else:
            trainer.observe(call)
            self.stats.learnt["rfm"] += 1

    # -- publishing ---------------------------------------------------------------------------

    def publish(self) -> None:
        """Publish the next version if anything was learnt since the last one."""
        trainer = self.trainer
        if trainer is None or not self.unpublished:
            return
        version = self.version + 1
        trainer.models.generation = version
        offset = self.next_offset
        try:
            self.retry.run(
                "publish model version",
                lambda: self.publication.publish(trainer, self.window, offset, version),
                self.on_retry,
            )
        except LineageFencedError as exc:
            self.stats.fenced += 1
            log.warning("training: %s; restoring the newest version instead", exc)
            self.trainer = None
            if TRAINING_PARTITION in self.source.owned:
                self._resume()
            return
        self.version = version
        self.unpublished = False
        self.published_at = self.clock()
        self.stats.published += 1
        self.retry.run(
            "commit training offset",
            lambda: self.source.commit({TRAINING_PARTITION: offset}),
            self.on_retry,
        )

    def lag(self) -> int | None:
        """Records of the partition not read yet (None when not training or unknown)."""
        if self.trainer is None:
            return None
        return self.source.lag().get(TRAINING_PARTITION)

    def close(self) -> None:
        """Publish what was learnt since the last version, then leave the group."""
        try:
            self.publish()
        finally:
            self.source.close()
