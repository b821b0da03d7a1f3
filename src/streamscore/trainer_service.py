"""Where the trainer runs on Kafka and Redis: a thread of ``streamscore run``, or
``streamscore train``.

Both are the same ``TrainerLoop`` (``training.py``) in the consumer group
``<kafka_group_id>-trainer`` on ``training-examples``: every process of the group takes part,
the one that owns the topic's partition trains, the others wait to be given it. Inside ``run``
the loop has a thread of its own, with its own Kafka consumer and Redis connections: the
scorer's batches never wait for a group join or a publish, and the trainer uses the time the
scoring thread waits for Kafka and Redis.
"""

from __future__ import annotations

import logging
import threading
import time

from streamscore import metrics
from streamscore.adapters.kafka import KafkaSource
from streamscore.adapters.kafka_client import BrokerWatch
from streamscore.adapters.redis_store import RedisStateStore
from streamscore.config import Settings
from streamscore.core.models import Models
from streamscore.core.trainer import Trainer
from streamscore.errors import ConfigError, RetryAbandoned
from streamscore.guards import OnRetry, RetryPolicy
from streamscore.model_checkpoints import LineageStore
from streamscore.training import TrainerLoop

log = logging.getLogger("streamscore.trainer")
POLL_S = 0.2
LAG_EVERY_S = 3.0  # how often the trainer asks the broker how far behind it is


def trainer_group(settings: Settings) -> str:
    """The consumer group of the trainers of the scorers' group."""
    return f"{settings.kafka_group_id}-trainer"


def require_key(settings: Settings, command: str) -> None:
    """Every process signs or verifies model versions: the key must be set."""
    if settings.checkpoint_key is None:
        raise ConfigError(
            f"{command} needs STREAMSCORE_CHECKPOINT_KEY: the trainer signs every model version "
            "it publishes and every scorer verifies it; set a long random key (openssl rand "
            "-hex 32), the same in every process"
        )


def check_one_partition(source: KafkaSource, settings: Settings) -> None:
    """training-examples must have exactly one partition: the trainer reads only that one."""
    partitions = source.consumer.partitions_for_topic(settings.training_topic) or set()
    if len(partitions) != 1:
        source.close()
        raise ConfigError(
            f"topic {settings.training_topic!r} has {len(partitions)} partitions; it needs "
            "exactly one, which the one trainer reads in order (records on others would never "
            "be learnt). Recreate it with --partitions 1 (scripts/stack up does) or set "
            "STREAMSCORE_TRAINING_TOPIC"
        )


class TrainerRunner:
    """A ``TrainerLoop`` on Kafka and Redis, with its metrics."""

    def __init__(
        self,
        settings: Settings,
        stop: threading.Event,
        on_retry: OnRetry | None = None,
        watch: BrokerWatch | None = None,
    ) -> None:
        """``watch``: the scorer's, inside ``run``, so an outage is reported once per process."""
        self.group = trainer_group(settings)
        self.store = RedisStateStore.from_settings(settings)
        try:
            source = KafkaSource(
                settings,
                topic=settings.training_topic,
                group_id=self.group,
                watch=watch or BrokerWatch(settings.kafka_bootstrap_servers),
                topic_setting="STREAMSCORE_TRAINING_TOPIC",
            )
            check_one_partition(source, settings)
        except BaseException:
            self.store.close()
            raise
        params = settings.model_params()
        self.loop = TrainerLoop(
            source,
            LineageStore(settings, self.store, params),
            lambda: Trainer(Models(params)),
            window=settings.training_dedupe_window,
            publish_every_s=settings.checkpoint_interval_seconds,
            retry=RetryPolicy(stop=stop),
            on_retry=on_retry or metrics.count_transient_error,
        )
        self.watch = metrics.TrainerWatch(self.loop, log)
        self._lag_at = 0.0
        self.stop = stop
        self.linger_s = settings.batch_linger_ms / 1000
        self._polled = 0

    def turn(self, timeout_s: float = POLL_S) -> int:
        """One turn of the loop, then the metrics; returns the records polled.

        After a turn that found records but not a full batch, the next waits ``linger_s``
        before it polls (the module's docstring says why it waits before, not after)."""
        if self.linger_s and 0 < self._polled < self.loop.max_records:
            self.stop.wait(self.linger_s)
        n = self._polled = self.loop.run_once(timeout_s)
        now = time.time()
        lag = now - self._lag_at >= LAG_EVERY_S
        if lag:
            self._lag_at = now
        self.watch.update(now, lag=lag)
        return n

    def run(self, stop: threading.Event) -> None:
        """Turn until ``stop`` is set (a failing step then gives up: ``RetryAbandoned``)."""
        log.info(
            "trainer: in consumer group %r on %s; the member that owns its partition trains",
            self.group,
            self.loop.source.topic,
        )
        while not stop.is_set():
            self.turn()

    def close(self) -> None:
        """Publish what is unpublished, leave the group, close the connections."""
        try:
            self.loop.close()
        finally:
            self.store.close()
            metrics.TRAINER_ACTIVE.set(0)


class TrainerThread:
    """``streamscore run``'s trainer: the runner on a thread; a failure stops the service."""

    def __init__(self, runner: TrainerRunner, stop: threading.Event) -> None:
        self.runner = runner
        self.stop = stop
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="trainer", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _main(self) -> None:
        try:
            self.runner.run(self.stop)
        except RetryAbandoned as exc:
            log.warning("trainer: %s; its unpublished learning is learnt again later", exc)
        except BaseException as exc:  # surfaced by the service loop, which then stops
            self.failure = exc
            log.error("trainer failed: %s", exc)
        finally:
            try:
                self.runner.close()
            except Exception as exc:  # stopping: say so, never hide the cause
                log.warning("trainer: closing failed (%s)", exc)

    def join(self, timeout_s: float = 30.0) -> None:
        """Wait for the thread to publish and leave (after ``stop`` is set)."""
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            log.warning("trainer: still busy after %.0fs; stopping without it", timeout_s)
