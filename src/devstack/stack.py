"""The shared local stack of ``scripts/stack``: one Kafka broker, one Redis, optionally a
3-master Redis Cluster, under one directory, configured by ``STREAMSCORE_*`` variables.

Layout of ``STREAMSCORE_STACK_DIR`` (default ``<repo>/.stack``): ``kafka-dist/<version>/jars``
(the cache), ``kafka/`` (broker config, data, log, pid), ``redis/`` (AOF, log, pid),
``redis-cluster/node-<port>/``, ``.lock`` (serialises concurrent ``up``/``down``) and
``apt.log``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.apt import ensure_prometheus, ensure_redis
from devstack.jars import DEFAULT_KAFKA_VERSION, KafkaJars, check_kafka_version
from devstack.kafka import KafkaBroker
from devstack.procs import DevstackError
from devstack.redis import RedisCluster, RedisServer, check_cluster_ports
from devstack.topics import (
    STANDARD_TOPICS,
    TOPIC_SETTINGS,
    create_topics,
    list_topics,
    topic_partitions,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCK_WAIT_S = 600


def say(msg: str) -> None:
    """A progress line, as scripts/stack has always printed them."""
    print(f"stack: {msg}", flush=True)


def warn(msg: str) -> None:
    """A warning on stderr."""
    print(f"stack: warning: {msg}", file=sys.stderr, flush=True)


def _number(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(f"STREAMSCORE_{name}", str(default))
    if not raw.isdigit():
        raise DevstackError(f"STREAMSCORE_{name} must be a number, got '{raw}'")
    if int(raw) < minimum:
        raise DevstackError(f"STREAMSCORE_{name} must be >= {minimum}")
    return int(raw)


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and which ports it takes (defaults in brackets in README)."""

    stack_dir: Path
    kafka_version: str = DEFAULT_KAFKA_VERSION
    kafka_port: int = 9092
    controller_port: int = 9093
    redis_port: int = 6379
    cluster_port: int = 7001  # the first of three consecutive cluster ports
    partitions: int = 4
    kafka_heap: tuple[str, ...] = ("-Xms256m", "-Xmx512m")
    kafka_start_timeout_s: int = 120

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        """Read ``STREAMSCORE_STACK_DIR``, ``STREAMSCORE_KAFKA_PORT`` etc., with checks."""
        env = os.environ if env is None else env
        version = env.get("STREAMSCORE_KAFKA_VERSION", DEFAULT_KAFKA_VERSION)
        check_kafka_version(version)
        config = cls(
            stack_dir=Path(env.get("STREAMSCORE_STACK_DIR") or REPO_ROOT / ".stack").resolve(),
            kafka_version=version,
            kafka_port=_number(env, "KAFKA_PORT", 9092),
            controller_port=_number(env, "KAFKA_CONTROLLER_PORT", 9093),
            redis_port=_number(env, "REDIS_PORT", 6379),
            cluster_port=_number(env, "REDIS_CLUSTER_PORT", 7001),
            partitions=_number(env, "PARTITIONS", 4, minimum=1),
            kafka_heap=tuple(env.get("STREAMSCORE_KAFKA_HEAP_OPTS", "-Xms256m -Xmx512m").split()),
            kafka_start_timeout_s=_number(env, "KAFKA_START_TIMEOUT", 120),
        )
        if config.kafka_port == config.controller_port:
            raise DevstackError(
                "STREAMSCORE_KAFKA_PORT and STREAMSCORE_KAFKA_CONTROLLER_PORT must differ"
            )
        check_cluster_ports(config.cluster_ports)
        return config

    @property
    def cluster_ports(self) -> list[int]:
        """The three Redis Cluster ports."""
        return [self.cluster_port + i for i in range(3)]

    @property
    def bootstrap(self) -> str:
        """host:port of the broker."""
        return f"127.0.0.1:{self.kafka_port}"


class LocalStack:
    """The servers of one stack directory: find them, start them, stop them, report them."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.dir = config.stack_dir
        self.jars = KafkaJars(self.dir, config.kafka_version)
        self.kafka = KafkaBroker(
            self.dir / "kafka",
            self.jars,
            port=config.kafka_port,
            controller_port=config.controller_port,
            partitions=config.partitions,
            heap=config.kafka_heap,
            server_jvm=True,
            small=False,
        )
        self.redis = RedisServer(self.dir / "redis", config.redis_port, appendfsync="everysec")
        self.cluster = RedisCluster(self.dir / "redis-cluster", config.cluster_ports)

    @property
    def client(self) -> dict[str, Any]:
        """kafka-python keyword arguments for the stack's broker."""
        return {"bootstrap_servers": [self.config.bootstrap]}

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise ``up``/``down`` between concurrent callers (tests, other shells)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("w") as fp:
            try:
                fcntl.flock(fp, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say("waiting for another 'scripts/stack' run to finish…")
                deadline = time.monotonic() + LOCK_WAIT_S
                while True:
                    try:
                        fcntl.flock(fp, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise DevstackError(
                                f"another 'scripts/stack' has held {self.dir / '.lock'} for 10 "
                                "minutes; is it stuck?"
                            ) from None
                        time.sleep(0.5)
            yield

    # -- up -----------------------------------------------------------------------------------

    def up(self, *, prometheus: bool = False, redis_cluster: bool = False) -> None:
        """Start what is not running (idempotent), create the standard topics."""
        with self.lock():
            t0 = time.monotonic()
            self.start_redis()
            self.start_kafka()
            self.ensure_topics(topic_partitions(TOPIC_SETTINGS, self.config.partitions))
            extra = ""
            if redis_cluster:
                self.start_cluster()
                extra = ", redis cluster " + " ".join(
                    f"127.0.0.1:{p}" for p in self.config.cluster_ports
                )
            if prometheus:
                ensure_prometheus(self.dir / "apt.log", say, warn)
            say(
                f"ready in {time.monotonic() - t0:.0f}s: kafka {self.config.bootstrap}, redis "
                f"127.0.0.1:{self.config.redis_port}{extra}, topics {' '.join(STANDARD_TOPICS)}"
            )

    def start_redis(self) -> None:
        """Install Debian's redis-server if missing; start our instance unless it runs."""
        ensure_redis(self.dir / "apt.log", say)
        pid = self.redis.pid()
        port = self.config.redis_port
        if pid is not None:
            if self.redis.healthy():
                say(f"redis already running (pid {pid}) on 127.0.0.1:{port}")
                return
            raise DevstackError(
                f"redis (pid {pid}) is running but does not answer PING on port {port}; see "
                f"{self.redis.log}"
            )
        say(f"starting redis on 127.0.0.1:{port}…")
        pid = self.redis.start()
        say(f"redis up on 127.0.0.1:{port} (pid {pid}, log {self.redis.log})")

    def start_kafka(self) -> None:
        """Fetch the jars once, format once, start the broker unless it runs."""
        kafka, cfg = self.kafka, self.config
        pid = kafka.pid()
        if pid is not None:
            try:
                kafka.wait_ready(cfg.kafka_start_timeout_s)
            except DevstackError:
                raise DevstackError(
                    f"kafka (pid {pid}) is running but not answering on {cfg.bootstrap}; see "
                    f"{kafka.log}, then 'scripts/stack down' and 'scripts/stack up'"
                ) from None
            say(f"kafka already running (pid {pid}) on {cfg.bootstrap}")
            return
        self.jars.ensure(say)
        if not kafka.formatted:
            kafka.write_config()
            say(f"formatted KRaft log dir (cluster id {kafka.format()})")
        say(
            f"starting kafka {cfg.kafka_version} on {cfg.bootstrap} (controller "
            f"127.0.0.1:{cfg.controller_port})…"
        )
        pid = kafka.start(cfg.kafka_start_timeout_s)
        say(f"kafka up on {cfg.bootstrap} (pid {pid}, log {kafka.log})")

    def start_cluster(self) -> None:
        """Start the Redis Cluster unless all its nodes run and agree it is ok."""
        ports = " ".join(str(p) for p in self.config.cluster_ports)
        if all(self.cluster.running()) and self.cluster.ok():
            say(f"redis cluster already running on 127.0.0.1 ports {ports}")
            return
        self.cluster.stop()
        say(f"starting a 3-master redis cluster on 127.0.0.1 ports {ports}…")
        self.cluster.start()
        say(f"redis cluster up (cluster_state:ok, data {self.cluster.root})")

    def ensure_topics(self, wanted: Mapping[str, int]) -> None:
        """Create missing topics; warn about existing ones with other partition counts."""
        existing = list_topics(self.client)
        for name, parts in wanted.items():
            if name in existing and existing[name] != parts:
                warn(
                    f"topic {name} exists with {existing[name]} partitions (wanted {parts}); "
                    "left as is - 'scripts/stack down --wipe' to start over"
                )
        created = create_topics(self.client, wanted)
        if created:
            say("created topics: " + ", ".join(f"{n}({p})" for n, p in sorted(created.items())))

    # -- down, status, topics ------------------------------------------------------------------

    def down(self, *, wipe: bool = False, only_cluster: bool = False) -> None:
        """Stop everything this stack runs (or only its Redis Cluster); ``wipe`` also deletes
        the data (not the jars)."""
        with self.lock():
            if not only_cluster:
                self._stop("kafka", self.kafka.pid(), self.kafka.stop)
                self._stop("redis", self.redis.pid(), self.redis.stop)
            if any(self.cluster.running()):
                say("stopping the redis cluster…")
                self.cluster.stop()
                say("redis cluster stopped")
            if wipe:
                for sub in ("kafka", "redis", "redis-cluster"):
                    shutil.rmtree(self.dir / sub, ignore_errors=True)
                say(f"wiped Kafka and Redis data (kept the jar cache in {self.dir / 'kafka-dist'})")

    @staticmethod
    def _stop(name: str, pid: int | None, stop: Callable[..., bool]) -> None:
        if pid is None:
            stop()  # clears a stale pid file
            say(f"{name} not running")
            return
        say(f"stopping {name} (pid {pid})…")
        stop(30.0)
        say(f"{name} stopped")

    def status(self) -> tuple[list[str], bool]:
        """One line per server and whether Kafka and Redis (and a started cluster) are healthy."""
        cfg, ok, lines = self.config, True, []
        pid = self.kafka.pid()
        if pid is None:
            lines.append(f"kafka  stopped          ({cfg.bootstrap})")
            ok = False
        elif self.kafka.healthy():
            lines.append(
                f"kafka  running healthy  pid {pid}  {cfg.bootstrap}  controller "
                f"127.0.0.1:{cfg.controller_port}  version {cfg.kafka_version}  "
                f"log {self.kafka.log}"
            )
        else:
            lines.append(
                f"kafka  running UNHEALTHY pid {pid}  {cfg.bootstrap}  (see {self.kafka.log})"
            )
            ok = False
        pid = self.redis.pid()
        where = f"127.0.0.1:{cfg.redis_port}"
        if pid is None:
            lines.append(f"redis  stopped          ({where})")
            ok = False
        elif self.redis.healthy():
            version = self.redis.info("server").get("redis_version", "?")
            client = self.redis.client()
            try:
                aof = client.config_get("appendonly").get("appendonly", "?")
            finally:
                client.close()
            lines.append(
                f"redis  running healthy  pid {pid}  {where}  version {version}  aof {aof}  "
                f"log {self.redis.log}"
            )
        else:
            lines.append(f"redis  running UNHEALTHY pid {pid}  {where}  (see {self.redis.log})")
            ok = False
        pids = self.cluster.running()
        ports = ",".join(str(p) for p in cfg.cluster_ports)
        if any(pids):
            healthy = all(pids) and self.cluster.ok()
            ok = ok and healthy
            state = "running healthy " if healthy else "running UNHEALTHY"
            shown = " ".join(str(p) if p else "-" for p in pids)
            lines.append(f"redis cluster  {state}  pids {shown}  127.0.0.1:{ports}")
        else:
            lines.append(f"redis cluster  stopped  (127.0.0.1:{ports}; up --with-redis-cluster)")
        return lines, ok

    def topics(self, name: str | None = None, partitions: int | None = None) -> list[str]:
        """Ensure the standard topics (or one extra topic); then every topic, one a line."""
        if self.kafka.pid() is None:
            raise DevstackError("kafka is not running; run 'scripts/stack up' first")
        if name is None:
            self.ensure_topics(topic_partitions(TOPIC_SETTINGS, self.config.partitions))
        else:
            self.ensure_topics({name: partitions or 1})
        return [f"{n} {p}" for n, p in sorted(list_topics(self.client).items())]
