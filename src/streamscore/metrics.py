"""Every Prometheus metric streamscore exports, declared in one place.

Names follow Prometheus conventions (``_total`` counters, base units). The Grafana dashboard
and alert rules in ``deploy/`` use only these names.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streamscore.core.drift import PSI_FEATURES
from streamscore.core.scorer import Scorer
from streamscore.core.timeutil import iso
from streamscore.core.trainer import Trainer
from streamscore.errors import NewerFormatError
from streamscore.runtime import BatchStats

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
    "Valid events behind their partition's watermark, dead-lettered as late_event (not "
    "counted as invalid input)",
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
LABELS = Counter(
    "streamscore_labels_resolved_total", "Labels learnt by model", ["model"], registry=REGISTRY
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
    "Seconds since the last model checkpoint",
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
RETRY_STEPS = (  # the steps runtime.Pipeline retries with on_retry
    "load states",
    "query due users",
    "send outputs",
    "flush producer",
    "save states",
    "commit offsets",
)
for _signal in DRIFT_SIGNALS:
    DRIFT_DETECTIONS.labels(_signal)
for _step in RETRY_STEPS:
    TRANSIENT_ERRORS.labels(_step)


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
    for p in stats.churn_scores:
        SCORES.observe(p)
    for v in stats.predicted_values:
        VALUES.observe(v)
    for (before, after), n in stats.segment_moves.items():
        SEGMENT_MOVES.labels(before, after).inc(n)


class ScorerWatch:
    """Turns the scorer's and trainer's running figures into metrics; logs new drift detections."""

    def __init__(self, scorer: Scorer, trainer: Trainer, log: logging.Logger) -> None:
        self.scorer = scorer
        self.trainer = trainer
        self.log = log
        self._labels = {"churn": 0, "value": 0}
        self._events_seen = 0

    def update(self) -> None:
        """Refresh quality, drift and label metrics (a few ms: call every few seconds)."""
        s = self.scorer
        q = self.trainer.quality
        for model, total in (("churn", q.churn.count), ("value", q.value.count)):
            LABELS.labels(model).inc(total - self._labels[model])
            self._labels[model] = total
        PENDING_LABELS.set(s.counters.snapshots - q.value.count)
        auc = q.churn.rolling_auc()
        if auc is not None:
            CHURN_AUC.set(auc)
        loss = q.churn.rolling_log_loss()
        if loss is not None:
            CHURN_LOGLOSS.set(loss)
        mae = q.value.rolling_mae()
        if mae is not None:
            VALUE_MAE.set(mae)
        for row in q.churn.report()["calibration"]:
            CALIBRATION.labels(row["bucket"], "observed").set(row["observed_rate"])
            CALIBRATION.labels(row["bucket"], "predicted").set(row["mean_predicted"])
        labels = self.trainer.drift
        DRIFT_BIAS.labels("churn").set(labels.churn_bias)
        DRIFT_BIAS.labels("value").set(labels.value_bias)
        for signal, value in s.drift.psi.items():
            DRIFT_PSI.labels(signal).set(value)
        events = labels.log.events
        for event in events[self._events_seen :]:
            DRIFT_DETECTIONS.labels(event.signal).inc()
            self.log.warning(
                "drift detected (%s) at %s: %s", event.signal, iso(event.t_ms), event.detail
            )
        self._events_seen = len(events)
