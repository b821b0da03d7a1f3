"""Every Prometheus metric streamscore exports, declared in one place.

Names follow Prometheus conventions (``_total`` counters, base units). The Grafana dashboard
and alert rules in ``deploy/`` use only these names.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streamscore.core.drift import PSI_FEATURES, DriftEvent
from streamscore.core.lineage import ServedLineage
from streamscore.core.records import TOPIC_CONFIRMATIONS
from streamscore.core.scorer import Scorer
from streamscore.core.timeutil import iso
from streamscore.core.trainer import Trainer
from streamscore.core.training_records import TrainingOutbox
from streamscore.errors import NewerFormatError
from streamscore.runtime import BatchStats
from streamscore.training import TrainerLoop, TrainerStats

REGISTRY = CollectorRegistry(auto_describe=True)

RECORDS = Counter("streamscore_records_consumed_total", "Input records polled", registry=REGISTRY)
EVENTS = Counter("streamscore_events_processed_total", "Valid events applied", registry=REGISTRY)
DEAD_LETTERS = Counter(
    "streamscore_dead_letters_total",
    "Invalid input records by error type (late events are counted apart)",
    ["error_type"],
    registry=REGISTRY,
)
LATE_EVENTS = Counter(
    "streamscore_late_events_total",
    "Valid events behind their partition's watermark, dead-lettered as late_event or applied "
    "(late_events=apply); not counted as invalid input",
    registry=REGISTRY,
)
LATE_APPLIED = Counter(
    "streamscore_late_events_applied_total",
    "Late events applied to their user's features (late_events=apply), of "
    "streamscore_late_events_total",
    registry=REGISTRY,
)
HELD_EVENTS = Counter(
    "streamscore_watermark_held_events_total",
    "Events too far ahead of their partition's stream to move its watermark alone "
    "(watermark_max_lead_seconds)",
    registry=REGISTRY,
)
REKEYED = Counter(
    "streamscore_rekeyed_records_total",
    "Input records whose key was not their user_id, produced again keyed by it "
    "(on_key_mismatch=rekey)",
    registry=REGISTRY,
)
OUTPUTS = Counter(
    "streamscore_outputs_total", "Output records by topic", ["topic"], registry=REGISTRY
)
BATCH_SIZE = Histogram(
    "streamscore_batch_records",
    "Records per batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "streamscore_batch_duration_seconds",
    "Batch processing time by stage",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
EVENT_TIME_LAG = Gauge(
    "streamscore_event_time_lag_seconds",
    "Wall clock minus the partition's watermark",
    ["partition"],
    registry=REGISTRY,
)
WATERMARK = Gauge(
    "streamscore_watermark_seconds",
    "Partition watermark (event time, unix s)",
    ["partition"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "streamscore_consumer_lag_records",
    "Records behind the end of the partition",
    ["partition"],
    registry=REGISTRY,
)
TRANSIENT_ERRORS = Counter(
    "streamscore_transient_errors_total",
    "Transient failures by step (each is retried with backoff; nothing is committed meanwhile)",
    ["step"],
    registry=REGISTRY,
)
TOMBSTONES = Counter(
    "streamscore_tombstones_total",
    "Input records with a null value (no event), skipped and committed past",
    registry=REGISTRY,
)
UNDELIVERABLE = Counter(
    "streamscore_undeliverable_outputs_total",
    "Output records Kafka refused for good (too large, invalid, not authorised), by topic",
    ["topic"],
    registry=REGISTRY,
)
NEWER_FORMAT_REFUSALS = Counter(
    "streamscore_newer_format_refusals_total",
    "Steps retried because a stored user state or checkpoint needs a newer streamscore "
    "(a rolling upgrade is under way: finish it, or roll back)",
    registry=REGISTRY,
)
DUE_USERS_LOADED = Counter(
    "streamscore_due_users_loaded_total",
    "Users loaded without new events of theirs, because a label horizon or a rescoring point "
    "of their silence fell due",
    registry=REGISTRY,
)
DUE_BEHIND_BATCHES = Counter(
    "streamscore_due_behind_batches_total",
    "Batches that left silent users further behind their watermark than the allowed "
    "lateness: the next batch reads one record, so that their labels and snapshots are not "
    "taken late (a steady rise: the scorer cannot keep up with its silent users)",
    registry=REGISTRY,
)
STATES_REMOVED = Counter(
    "streamscore_states_removed_total",
    "User states removed: reason=expired (state_retention_days passed; counted when their due "
    "entry is dropped), reason=erased (erasure requests carried out)",
    ["reason"],
    registry=REGISTRY,
)
ERASED_EVENTS = Counter(
    "streamscore_erased_events_dropped_total",
    "Events of erased users at or before their erasure, dropped unseen",
    registry=REGISTRY,
)
LABELS = Counter(
    "streamscore_labels_resolved_total",
    "Labels this process resolved and published to training-examples, by model",
    ["model"],
    registry=REGISTRY,
)
LABELS_LEARNT = Counter(
    "streamscore_labels_learnt_total",
    "Labels the trainer in this process validated and learnt, by model (repeats dropped)",
    ["model"],
    registry=REGISTRY,
)
TRAINING_DUPLICATES = Counter(
    "streamscore_training_duplicates_total",
    "training-examples records the trainer dropped as repeats (a scorer redid a batch after "
    "a crash)",
    registry=REGISTRY,
)
TRAINING_UNREADABLE = Counter(
    "streamscore_training_unreadable_total",
    "training-examples records the trainer could not decode (another version's input set)",
    registry=REGISTRY,
)
TRAINER_ACTIVE = Gauge(
    "streamscore_trainer_active",
    "1 in the process that trains (owns training-examples' partition), else 0",
    registry=REGISTRY,
)
TRAINER_LAG = Gauge(
    "streamscore_trainer_lag_records",
    "training-examples records the trainer has not learnt yet (0 where it does not train)",
    registry=REGISTRY,
)
MODEL_VERSION = Gauge(
    "streamscore_model_version",
    "Version of the published models this process scores with (0: none published yet)",
    registry=REGISTRY,
)
MODEL_VERSION_AGE = Gauge(
    "streamscore_model_version_age_seconds",
    "Seconds since the model version this process scores with was published",
    registry=REGISTRY,
)
MODEL_EVENT_LAG = Gauge(
    "streamscore_model_version_event_lag_seconds",
    "This process's highest watermark minus the event time of the newest label the model "
    "version it scores with has learnt: near the version's age in real time, days while a "
    "backlog is caught up (0 until the version has learnt a label)",
    registry=REGISTRY,
)
CHURN_AUC = Gauge(
    "streamscore_churn_rolling_auc", "Churn ROC AUC over recent labels", registry=REGISTRY
)
CHURN_LOGLOSS = Gauge(
    "streamscore_churn_rolling_log_loss", "Churn log loss over recent labels", registry=REGISTRY
)
VALUE_MAE = Gauge(
    "streamscore_value_rolling_mae", "Value MAE over recent labels", registry=REGISTRY
)
CORRECTIONS_SERVED = Gauge(
    "streamscore_corrections_served",
    "1 while scores carry the learnt corrections, 0 while they carry the BTYD model's "
    "prediction (the serving gate: whichever had the lower loss on recent labels)",
    ["model"],
    registry=REGISTRY,
)
MODEL_INFO = Gauge(
    "streamscore_model_info", "Current model version", ["version"], registry=REGISTRY
)
SOURCE_CONNECTED = Gauge(
    "streamscore_source_connected",
    "1 while Kafka answers the scorer's calls, its last poll worked and a broker connection "
    "is up, else 0",
    registry=REGISTRY,
)
CHECKPOINT_AGE = Gauge(
    "streamscore_checkpoint_age_seconds",
    "Seconds the trainer has held learning it has not published as a model version (0: all "
    "published, or this process does not train)",
    registry=REGISTRY,
)
UP_SINCE = Gauge("streamscore_start_time_seconds", "Process start time (unix s)", registry=REGISTRY)


SCORES = Histogram(
    "streamscore_churn_probability",
    "Published churn probabilities",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    registry=REGISTRY,
)
VALUES = Histogram(
    "streamscore_predicted_value",
    "Published expected spend within the value horizon",
    buckets=(1, 5, 10, 25, 50, 100, 200, 500, 1000, 5000),
    registry=REGISTRY,
)
SEGMENT_MOVES = Counter(
    "streamscore_segment_changes_total",
    "Segment changes by previous and current segment",
    ["from_segment", "to_segment"],
    registry=REGISTRY,
)
PENDING_LABELS = Gauge(
    "streamscore_pending_snapshots",
    "Training snapshots taken and not yet learnt (this process)",
    registry=REGISTRY,
)
CALIBRATION = Gauge(
    "streamscore_churn_calibration",
    "Observed churn rate and mean prediction by predicted-probability bucket",
    ["bucket", "series"],
    registry=REGISTRY,
)
DRIFT_DETECTIONS = Counter(
    "streamscore_drift_detections_total",
    "Drift detections by signal",
    ["signal"],
    registry=REGISTRY,
)
DRIFT_PSI = Gauge(
    "streamscore_drift_psi",
    "Population stability index, current vs previous window",
    ["signal"],
    registry=REGISTRY,
)
DRIFT_BIAS = Gauge(
    "streamscore_drift_bias",
    "Running mean residual (label − prediction) by model",
    ["model"],
    registry=REGISTRY,
)

# Label values known in advance start at 0: a counter series that first appears at 1 shows no
# rate() or increase(), so the first drift detection (or retry) would never alert, and the
# dashboard panels would say "No data" instead of 0 until something happens.
DRIFT_SIGNALS = ("churn_bias", "value_bias", *(f"psi_{name}" for name in PSI_FEATURES))
RETRY_STEPS = (  # the steps runtime.Pipeline and training.TrainerLoop retry with on_retry
    "load states",
    "query due users",
    "send outputs",
    "flush producer",
    "save states",
    "commit offsets",
    "poll training examples",
    "publish model version",
)
for _signal in DRIFT_SIGNALS:
    DRIFT_DETECTIONS.labels(_signal)
for _step in RETRY_STEPS:
    TRANSIENT_ERRORS.labels(_step)
for _model in ("churn", "value"):
    LABELS.labels(_model)
    LABELS_LEARNT.labels(_model)
for _reason in ("expired", "erased"):
    STATES_REMOVED.labels(_reason)


def count_transient_error(step: str, error: Exception) -> None:
    """``Pipeline``'s ``on_retry``: one more transient failure of ``step``."""
    TRANSIENT_ERRORS.labels(step).inc()
    if isinstance(error, NewerFormatError):
        NEWER_FORMAT_REFUSALS.inc()


def observe_batch(stats: BatchStats, now_s: float) -> None:
    """Fold one batch's figures into the metrics."""
    RECORDS.inc(stats.records)
    EVENTS.inc(stats.events)
    BATCH_SIZE.observe(stats.records)
    for error_type, n in stats.dead_letters.items():
        DEAD_LETTERS.labels(error_type).inc(n)
    LATE_EVENTS.inc(stats.late_events)
    LATE_APPLIED.inc(stats.late_applied)
    HELD_EVENTS.inc(stats.held_events)
    REKEYED.inc(stats.rekeyed)
    for topic, n in stats.outputs.items():
        OUTPUTS.labels(topic).inc(n)
    for stage, seconds in stats.seconds.items():
        BATCH_SECONDS.labels(stage).observe(seconds)
    for partition, wm in stats.watermarks.items():
        if wm > 0:
            WATERMARK.labels(str(partition)).set(wm / 1000)
            EVENT_TIME_LAG.labels(str(partition)).set(max(now_s - wm / 1000, 0.0))
    DUE_USERS_LOADED.inc(stats.due_users)
    if stats.due_behind:
        DUE_BEHIND_BATCHES.inc()
    STATES_REMOVED.labels("expired").inc(stats.due_expired)
    STATES_REMOVED.labels("erased").inc(stats.outputs.get(TOPIC_CONFIRMATIONS, 0))
    ERASED_EVENTS.inc(stats.erased_events)
    for p in stats.churn_scores:
        SCORES.observe(p)
    for v in stats.predicted_values:
        VALUES.observe(v)
    for (before, after), n in stats.segment_moves.items():
        SEGMENT_MOVES.labels(before, after).inc(n)


class ScorerWatch:
    """Turns a scorer's running figures into metrics: what it resolved and published, the
    model version it scores with and that version's quality, its population drift (logged)."""

    def __init__(
        self, scorer: Scorer, outbox: TrainingOutbox, served: ServedLineage, log: logging.Logger
    ) -> None:
        self.scorer = scorer
        self.outbox = outbox
        self.served = served
        self.log = log
        self._labels = {"churn": 0, "value": 0}
        self._events_seen = 0

    def update(self, now_s: float, watermark_ms: int = 0) -> None:
        """Refresh label, version, quality and drift metrics (cheap: every few seconds);
        ``watermark_ms``: the highest watermark of this process's partitions (0: none yet)."""
        s, published = self.scorer, self.outbox.published
        for model in ("churn", "value"):
            LABELS.labels(model).inc(published[model] - self._labels[model])
            self._labels[model] = published[model]
        PENDING_LABELS.set(s.counters.snapshots - published["value"])
        served = self.served
        MODEL_INFO.clear()
        MODEL_INFO.labels(served.models.version).set(1)
        MODEL_VERSION.set(served.version)
        if served.created_unix:
            MODEL_VERSION_AGE.set(max(now_s - served.created_unix, 0.0))
        quality = served.summary
        until = quality.get("labels_until_ms")
        if watermark_ms and isinstance(until, int):
            MODEL_EVENT_LAG.set(max(watermark_ms - until, 0) / 1000)
        for gauge, key in (
            (CHURN_AUC, "churn_rolling_auc"),
            (CHURN_LOGLOSS, "churn_rolling_log_loss"),
            (VALUE_MAE, "value_rolling_mae"),
        ):
            value = quality.get(key)
            if isinstance(value, int | float):
                gauge.set(value)
        serving = quality.get("serving")
        if isinstance(serving, dict):
            for model in ("churn", "value"):
                CORRECTIONS_SERVED.labels(model).set(serving.get(model) == "corrected")
        rows = quality.get("calibration")
        for row in rows if isinstance(rows, list) else ():
            CALIBRATION.labels(row["bucket"], "observed").set(row["observed_rate"])
            CALIBRATION.labels(row["bucket"], "predicted").set(row["mean_predicted"])
        bias = quality.get("bias")
        if isinstance(bias, dict):
            for model in ("churn", "value"):
                DRIFT_BIAS.labels(model).set(float(bias.get(model, 0.0)))
        for signal, value in s.drift.psi.items():
            DRIFT_PSI.labels(signal).set(value)
        events = s.drift.log.events
        self._events_seen = _log_detections(self.log, events, self._events_seen)


class TrainerWatch:
    """The trainer's figures as metrics: labels learnt, repeats dropped, lag, whether this
    process trains; label-drift detections are logged and counted where they are made."""

    def __init__(self, loop: TrainerLoop, log: logging.Logger) -> None:
        self.loop = loop
        self.log = log
        self._stats = TrainerStats()
        self._trainer: Trainer | None = None
        self._events_seen = 0
        self._unpublished_since: float | None = None

    def update(self, now_s: float, *, lag: bool = False) -> None:
        """After each turn of the loop (cheap); ``lag`` also asks the broker for the lag."""
        loop, stats, seen = self.loop, self.loop.stats, self._stats
        for model in ("churn", "value"):
            LABELS_LEARNT.labels(model).inc(stats.learnt[model] - seen.learnt[model])
            seen.learnt[model] = stats.learnt[model]
        TRAINING_DUPLICATES.inc(stats.duplicates - seen.duplicates)
        TRAINING_UNREADABLE.inc(stats.unreadable - seen.unreadable)
        seen.duplicates, seen.unreadable = stats.duplicates, stats.unreadable
        trainer = loop.trainer
        TRAINER_ACTIVE.set(1 if trainer is not None else 0)
        if trainer is None:
            TRAINER_LAG.set(0)
        elif lag:
            behind = loop.lag()
            if behind is not None:
                TRAINER_LAG.set(behind)
        if loop.unpublished:
            since = self._unpublished_since = self._unpublished_since or now_s
            CHECKPOINT_AGE.set(now_s - since)
        else:
            self._unpublished_since = None
            CHECKPOINT_AGE.set(0)
        if trainer is not self._trainer:  # resumed a lineage: its past detections are old news
            self._trainer = trainer
            self._events_seen = len(trainer.drift.log.events) if trainer is not None else 0
        if trainer is not None:
            events = trainer.drift.log.events
            self._events_seen = _log_detections(self.log, events, self._events_seen)


def _log_detections(log: logging.Logger, events: list[DriftEvent], seen: int) -> int:
    """Count and log the detections after the first ``seen``; returns how many there are."""
    for event in events[seen:]:
        DRIFT_DETECTIONS.labels(event.signal).inc()
        log.warning("drift detected (%s) at %s: %s", event.signal, iso(event.t_ms), event.detail)
    return len(events)
