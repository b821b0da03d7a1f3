"""``streamscore run`` and ``simulate --rate``: the pipeline on Kafka and Redis.

Shutdown on SIGTERM/SIGINT is graceful: the batch in hand finishes (flush, save, commit),
the trainer thread (if this process trains) publishes what it learnt since the last version,
then the clients close. During an outage the batch in hand cannot
finish, so the stop abandons it uncommitted (see ``RetryAbandoned``) instead of waiting.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from streamscore import metrics
from streamscore.adapters.kafka import KafkaSource
from streamscore.adapters.kafka_client import BrokerWatch
from streamscore.adapters.kafka_erasures import KafkaErasureSource, topic_partitions
from streamscore.adapters.kafka_sink import KafkaSink
from streamscore.adapters.pseudonymous import maybe_pseudonymous
from streamscore.adapters.redis_store import RedisStateStore
from streamscore.config import Settings
from streamscore.core.lineage import ServedLineage
from streamscore.core.models import Models
from streamscore.core.records import TOPIC_EVENTS
from streamscore.core.scorer import Scorer
from streamscore.core.segments import RfmScorer
from streamscore.core.training_records import TrainingOutbox
from streamscore.erasures import Erasures
from streamscore.errors import ConfigError, RetryAbandoned
from streamscore.gc_freeze import freeze_startup_heap, thaw_heap
from streamscore.guards import RetryPolicy
from streamscore.health import LoopStatus
from streamscore.httpd import serve_http
from streamscore.model_checkpoints import LineageStore, ModelFollower
from streamscore.ports import ErasureStore
from streamscore.progress import Progress
from streamscore.runtime import Pipeline
from streamscore.simulator import ShopSimulator, encode_event
from streamscore.trainer_service import (
    TrainerRunner,
    TrainerThread,
    check_one_partition,
    require_key,
    trainer_group,
)
from streamscore.wiring import build_pipeline

log = logging.getLogger("streamscore.service")
# How often the loop looks up consumer lag, which doubles as the liveness check of Kafka
# while no records flow: an outage is reported within this plus PROBE_WAIT_S.
HEALTH_CHECK_S = 3.0


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between batches."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        """Route both signals here."""
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        log.info(
            "received %s: finishing the current batch, then stopping", signal.Signals(signum).name
        )
        self.event.set()


@dataclass
class Service:
    """``streamscore run`` wired: the pipeline, the model version it scores with and how it
    follows the published ones, its outbox of training records, and its trainer thread."""

    pipeline: Pipeline
    served: ServedLineage
    follower: ModelFollower
    outbox: TrainingOutbox
    trainer: TrainerThread | None


def build_service(settings: Settings, stop: threading.Event | None = None) -> Service:
    """Connect to Redis and Kafka (clear errors when they are not there) and wire the pipeline."""
    require_key(settings, "streamscore run")
    stop = stop or threading.Event()
    store = maybe_pseudonymous(RedisStateStore.from_settings(settings), settings)
    params = settings.model_params()
    served = ServedLineage(Models(params), RfmScorer())
    follower = ModelFollower(
        LineageStore(settings, store, params), served, settings.model_staleness_seconds
    )
    follower.refresh(force=True)
    outbox = TrainingOutbox(served)
    scorer = Scorer(settings.scoring(), served, outbox)
    watch = BrokerWatch(settings.kafka_bootstrap_servers)
    source = KafkaSource(
        settings,
        watch=watch,
        on_tombstone=metrics.TOMBSTONES.inc,
        linger_ms=settings.batch_linger_ms,
    )
    outputs = {settings.scores_topic, settings.alerts_topic, settings.segments_topic}
    missing = sorted(
        (outputs | {settings.dlq_topic, settings.training_topic}) - source.topics_on_broker
    )
    if missing:
        source.close()
        raise ConfigError(
            f"output topic{'s' if len(missing) > 1 else ''} {', '.join(missing)} do not exist on "
            f"{settings.kafka_bootstrap_servers}; create them (scripts/stack up creates the "
            "default topics) or set STREAMSCORE_SCORES_TOPIC, STREAMSCORE_ALERTS_TOPIC, "
            "STREAMSCORE_SEGMENTS_TOPIC, STREAMSCORE_DLQ_TOPIC and STREAMSCORE_TRAINING_TOPIC"
        )
    check_one_partition(source, settings)
    sink = KafkaSink(
        settings,
        watch=watch,
        on_undeliverable=lambda topic: metrics.UNDELIVERABLE.labels(topic).inc(),
    )
    try:
        erasures = _erasures(settings, source, store, stop)
    except ConfigError:
        source.close()
        sink.close()
        raise
    pipeline = build_pipeline(
        settings,
        source,
        store,
        sink,
        scorer,
        live=True,
        stop=stop,
        on_retry=metrics.count_transient_error,
        erasures=erasures,
    )
    trainer = None
    if settings.run_trainer:
        trainer = TrainerThread(TrainerRunner(settings, stop, watch=watch), stop)
    return Service(pipeline, served, follower, outbox, trainer)


def _erasures(
    settings: Settings,
    source: KafkaSource,
    store: ErasureStore,
    stop: threading.Event | None,
) -> Erasures | None:
    """The erasure step, when the erasure topic exists: partitioned like the input."""
    topic, server = settings.erasures_topic, settings.kafka_bootstrap_servers
    if topic not in source.topics_on_broker:
        log.warning(
            "erasure topic %r does not exist on %s: erasure requests are not read. Create it "
            "with as many partitions as %r (scripts/stack up does) to use streamscore forget",
            topic,
            server,
            settings.input_topic,
        )
        return None
    if settings.confirmations_topic not in source.topics_on_broker:
        raise ConfigError(
            f"topic {settings.confirmations_topic!r} does not exist on {server}; create it "
            "beside the erasure topic, or set STREAMSCORE_CONFIRMATIONS_TOPIC"
        )
    wanted = topic_partitions(source.consumer, settings.input_topic)
    have = topic_partitions(source.consumer, topic)
    if have != wanted:
        raise ConfigError(
            f"erasure topic {topic!r} has {have} partitions and input topic "
            f"{settings.input_topic!r} {wanted}: they must be equal (a user's erasure is read "
            "by the owner of their input partition); recreate it, or add partitions to it"
        )
    keep_s = settings.allowed_lateness_seconds + settings.erasure_margin_seconds
    if settings.late_events == "apply":
        # A mark keeps an erased user's older events out only while it lasts; after it,
        # such an event is late, and applied late it would start a state from old data.
        log.warning(
            "late_events=apply: an erased user's events from before their erasure are kept "
            "out for erasure_margin_seconds (%.0fs) of event time after it; raise it to cover "
            "the oldest history you may backfill, or filter erased users out of backfills",
            settings.erasure_margin_seconds,
        )
    key = settings.pseudonym_key
    return Erasures(
        KafkaErasureSource(settings, have),
        store,
        keep_ms=round(keep_s * 1000),
        key=key.get_secret_value().encode() if key is not None else None,
        retry=RetryPolicy(stop=stop),
        on_retry=metrics.count_transient_error,
    )


def _serve(
    settings: Settings,
    stop: StopFlag | None,
    body: Callable[[Settings, StopFlag, LoopStatus], int],
) -> int:
    """``body`` with the signal handlers, its health status and the HTTP server (run, train)."""
    stop = stop or StopFlag()
    if threading.current_thread() is threading.main_thread():
        stop.install()
    status = LoopStatus(settings.health_stuck_after_polls * settings.poll_timeout_ms / 1000)
    http = serve_http(settings, status)
    try:
        return body(settings, stop, status)
    finally:
        if http is not None:
            http.close()


def run_service(settings: Settings, stop: StopFlag | None = None) -> int:
    """Run the scorer until stopped."""
    return _serve(settings, stop, _run)


def _run(settings: Settings, stop: StopFlag, status: LoopStatus) -> int:
    service = build_service(settings, stop.event)
    pipeline, served, trainer = service.pipeline, service.served, service.trainer
    source = pipeline.source
    status.models_loaded(served.models.version, restored=served.version > 0)
    pipeline.on_retry = status.wrap_on_retry(pipeline.on_retry)
    frozen = freeze_startup_heap()
    log.info(
        "scoring %s from %s with model version %s (%d start-up objects exempt from garbage "
        "collection); %s",
        settings.input_topic,
        settings.kafka_bootstrap_servers,
        served.models.version,
        frozen,
        "a trainer thread takes part in " + trainer_group(settings)
        if trainer is not None
        else "not training here (run_trainer=false)",
    )
    last_lag = 0.0
    failed_commits = 0
    watch = metrics.ScorerWatch(pipeline.scorer, service.outbox, served, log)
    abandoned = False
    if trainer is not None:
        trainer.start()
    status.running()
    try:
        while not stop.event.is_set():
            if trainer is not None and trainer.failure is not None:
                raise trainer.failure
            stats = pipeline.run_once()
            status.batch_done(source.owned)
            now = time.time()
            metrics.observe_batch(stats, now)
            if service.follower.refresh():
                status.models_loaded(served.models.version, restored=True)
            refused = source.commit_status().failed
            if refused > failed_commits:
                # Offset commits are asynchronous: their failures surface here, not as retries.
                metrics.TRANSIENT_ERRORS.labels("commit offsets").inc(refused - failed_commits)
                failed_commits = refused
            if now - last_lag > HEALTH_CHECK_S:
                last_lag = now
                watch.update(now, max(stats.watermarks.values(), default=0))
                for p, lag in source.lag().items():
                    metrics.CONSUMER_LAG.labels(str(p)).set(lag)
                metrics.SOURCE_CONNECTED.set(1 if source.health().connected else 0)
    except RetryAbandoned as exc:
        abandoned = True
        log.warning(
            "%s; the batch in hand stays uncommitted and is read again after a restart, "
            "where what it already changed is recognised and skipped",
            exc,
        )
    finally:
        status.stopping()
        stop.event.set()  # also stops the trainer thread, after it publishes what it learnt
        try:
            if trainer is not None:
                trainer.join()
        finally:
            thaw_heap()
            pipeline.sink.close()
            source.close()
            if pipeline.erasures is not None:
                pipeline.erasures.source.close()
            pipeline.store.close()
    log.info("stopped with a batch left uncommitted" if abandoned else "stopped cleanly")
    return 0


def run_trainer(settings: Settings, stop: StopFlag | None = None) -> int:
    """``streamscore train``: the trainer alone, until stopped (``trainer_service.py``)."""
    require_key(settings, "streamscore train")
    return _serve(settings, stop, _train)


def _train(settings: Settings, stop: StopFlag, status: LoopStatus) -> int:
    runner = TrainerRunner(
        settings, stop.event, status.wrap_on_retry(metrics.count_transient_error)
    )
    status.running()
    try:
        log.info("training for the scorers of group %r", settings.kafka_group_id)
        while not stop.event.is_set():
            runner.turn()
            loop = runner.loop
            status.models_loaded(loop.trainer.models.version if loop.trainer else "standby",
                                 restored=loop.version > 0)  # fmt: skip
            status.batch_done(loop.source.owned)
    except RetryAbandoned as exc:
        log.warning("%s; what was not published is learnt again by the next trainer", exc)
    finally:
        status.stopping()
        runner.close()
    log.info("stopped")
    return 0


def simulate_to_kafka(
    settings: Settings, sim: ShopSimulator, *, rate: float | None, limit: int | None
) -> int:
    """Produce simulated events into the input topic at ``rate`` events/s (default: flat out)."""
    from kafka import KafkaProducer

    from streamscore.adapters.kafka_client import UNREACHABLE, client_config, unreachable_error

    try:
        producer = KafkaProducer(
            acks="all", linger_ms=10, batch_size=256 * 1024, **client_config(settings)
        )
    except UNREACHABLE as exc:
        raise unreachable_error(settings, exc) from None
    progress = Progress(f"simulate → {settings.input_topic}", total=limit)
    started = time.perf_counter()
    sent = 0
    try:
        for event in sim.events():
            if limit is not None and sent >= limit:
                break
            key = event["user_id"] if isinstance(event, dict) else None
            producer.send(
                settings.input_topic if settings.input_topic else TOPIC_EVENTS,
                key=str(key).encode() if key is not None else None,
                value=encode_event(event),
            )
            sent += 1
            if sent % 1000 == 0:
                progress.update(1000)
                if rate:
                    ahead = sent / rate - (time.perf_counter() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        producer.flush()
    finally:
        producer.close()
        progress.close()
    took = time.perf_counter() - started
    print(f"produced {sent:,} events to {settings.input_topic} in {took:.1f}s")
    return 0
