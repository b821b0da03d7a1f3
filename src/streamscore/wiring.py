"""How the pieces are put together, once, for every command (demo, replay and run).

Only the adapters differ between the commands, and what needs a wall clock: a live service
waits for input (the poll timeout) and lets idle partitions follow the active ones; a finite
run (demo, replay) does neither, so it never reads the wall clock for event time. The limits
(batch size, due users per batch and per record, the dead-letter guard) are the same.
"""

from __future__ import annotations

import threading

import orjson

from streamscore.adapters.memory import ListSource
from streamscore.config import Settings
from streamscore.core.models import Models
from streamscore.core.records import TOPIC_TRAINING
from streamscore.core.scorer import Scorer
from streamscore.core.trainer import Trainer
from streamscore.core.training_records import RecentIds, TrainingOutbox
from streamscore.core.values import ModelParams, Output, ScoringConfig
from streamscore.erasures import Erasures
from streamscore.guards import FILE_ADVICE, TOPIC_ADVICE, DeadLetterGuard, OnRetry, RetryPolicy
from streamscore.ports import Sink, Source, StateStore
from streamscore.runtime import Pipeline
from streamscore.training import TRAINING_PARTITION, Restored, TrainerLoop


class _InProcess:
    """The ``Publication`` of one process: the scorer predicts with the trainer itself, so a
    version is published by the loop's version bump alone (nothing to restore: no crash)."""

    def restore(self) -> Restored | None:
        return None

    def publish(self, trainer: Trainer, window: RecentIds, next_offset: int, version: int) -> None:
        return None


class LocalTraining(TrainingOutbox):
    """The learner of ``demo``, ``replay`` and the in-memory pipelines of tests: the scorer's
    records go to an in-memory ``training-examples``, which the same ``TrainerLoop`` as in
    ``streamscore run`` learns after each batch's flush, in order, and publishes as the next
    version. So a run learns once per batch, exactly what a deployment learns, and is
    deterministic."""

    def __init__(self, trainer: Trainer, window: int = 200_000) -> None:
        super().__init__(trainer)
        self.trainer = trainer
        self.topic = ListSource(topic=TOPIC_TRAINING, partitions={TRAINING_PARTITION})
        self.loop = TrainerLoop(
            self.topic, _InProcess(), lambda: trainer, window=window, publish_every_s=0.0
        )

    def take(self) -> list[Output]:
        for record in super().take():
            self.topic.produce(TRAINING_PARTITION, orjson.dumps(record.value))
        return []  # delivered to the in-memory topic, not to the run's sink

    def delivered(self) -> None:
        self.loop.drain()


def in_process_scorer(
    config: ScoringConfig, params: ModelParams | None = None, *, dedupe_window: int = 200_000
) -> tuple[Scorer, Trainer]:
    """A scorer and the trainer it learns through, in this process (one drift log): the
    trainer is also the lineage it predicts with (``LocalTraining``)."""
    trainer = Trainer(Models(params or model_params_of(config)))
    learner = LocalTraining(trainer, dedupe_window)
    return Scorer(config, trainer, learner, trainer.drift.log), trainer


def model_params_of(config: ScoringConfig) -> ModelParams:
    """Model parameters that predict what ``config`` scores (its horizons and activity)."""
    return ModelParams(
        churn_horizon_days=config.churn_horizon_days,
        value_horizon_days=config.value_horizon_days,
        purchase_activity=config.purchase_activity,
    )


def build_pipeline(
    settings: Settings,
    source: Source,
    store: StateStore,
    sink: Sink,
    scorer: Scorer,
    *,
    live: bool = False,
    stop: threading.Event | None = None,
    on_retry: OnRetry | None = None,
    erasures: Erasures | None = None,
) -> Pipeline:
    """The pipeline of every command, limited by ``settings``.

    ``live``: a service that waits ``poll_timeout_ms`` for input and, after
    ``idle_partition_seconds`` of wall clock without any, lets a partition's watermark follow
    the others; its input has keys, held to the key contract (``key_contract``). ``stop``
    makes a failing step give up instead of retrying (SIGTERM).
    """
    idle_ms = round(settings.idle_partition_seconds * 1000)
    lead_ms = round(settings.watermark_max_lead_seconds * 1000)
    return Pipeline(
        source,
        store,
        sink,
        scorer,
        limits=settings.event_limits(),
        batch_size=settings.batch_max_records,
        poll_timeout_s=settings.poll_timeout_ms / 1000 if live else 0.0,
        due_limit=settings.due_users_per_batch,
        due_per_record=settings.due_users_per_record,
        idle_after_ms=idle_ms or None if live else None,
        dlq_guard=DeadLetterGuard(
            settings.dlq_max_ratio, settings.dlq_window, TOPIC_ADVICE if live else FILE_ADVICE
        ),
        retry=RetryPolicy(stop=stop),
        on_retry=on_retry,
        erasures=erasures,
        on_key_mismatch=settings.on_key_mismatch if live else None,
        max_lead_ms=lead_ms or None,
        agreeing=settings.watermark_agreeing_users,
        late_events=settings.late_events,
    )
