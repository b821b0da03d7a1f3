"""Servers for tests that need their own: through ``devstack``, like ``scripts/stack``.

- ``kafka_jars``: Kafka's jars (the stack's cache, ``STREAMSCORE_STACK_DIR``) and Java;
- ``make_broker`` / ``make_redis``: private Kafka brokers and Redis servers on free ports in
  the test's temporary directory, started, and stopped (by pid) when the test ends, so a test
  may stop, kill, pause or lock them with credentials and TLS;
- ``redis_cluster``: a real 3-master Redis Cluster for the session: the stack's
  (``scripts/stack up --with-redis-cluster``) when it runs, else a private one; tests share
  it and must not change its topology;
- ``make_cluster``: private Redis Clusters (replicas, credentials, TLS) a test may reshard,
  fail over, stop or kill; stopped when the test ends.

Each skips without its servers, and fails instead under ``STREAMSCORE_STACK=1``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import (
    DevstackError,
    KafkaBroker,
    KafkaJars,
    LocalStack,
    RedisCluster,
    RedisServer,
    StackConfig,
    TlsFiles,
    free_cluster_ports,
    free_port,
    make_tls_files,
)
from tests.required import skip_or_fail

MakeBroker = Callable[..., KafkaBroker]
MakeRedis = Callable[..., RedisServer]
MakeCluster = Callable[..., RedisCluster]


@pytest.fixture(scope="session")
def stack_config() -> StackConfig:
    """The local stack's settings (``STREAMSCORE_STACK_DIR``, ports...)."""
    return StackConfig.from_env()


@pytest.fixture(scope="session")
def kafka_jars(stack_config: StackConfig) -> KafkaJars:
    """The cached Kafka jars, and Java to run them."""
    jars = KafkaJars(stack_config.stack_dir, stack_config.kafka_version)
    if not jars.present():
        skip_or_fail(f"Kafka jars missing in {jars.dir}; run scripts/stack up once")
    if shutil.which("java") is None:
        skip_or_fail("java not found (apt-get install -y openjdk-17-jre-headless)")
    return jars


@pytest.fixture(scope="session")
def redis_installed() -> None:
    """Debian's redis-server and redis-cli."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        skip_or_fail("redis-server not installed; scripts/stack up installs it")


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    """A throw-away self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        skip_or_fail("openssl not installed")
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def make_broker(kafka_jars: KafkaJars, tmp_path: Path) -> Iterator[MakeBroker]:
    """Start private brokers: ``make_broker(sasl_users=..., tls=..., client_certs=...)``."""
    started: list[KafkaBroker] = []

    def make(**options: Any) -> KafkaBroker:
        broker = KafkaBroker(
            tmp_path / f"kafka{len(started)}",
            kafka_jars,
            port=free_port(),
            controller_port=free_port(),
            **options,
        )
        started.append(broker)
        broker.start(timeout_s=90)
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def make_redis(redis_installed: None, tmp_path: Path) -> Iterator[MakeRedis]:
    """Start private Redis servers: ``make_redis(password=..., acl_users=..., tls=...)``."""
    started: list[RedisServer] = []

    def make(**options: Any) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(started)}", free_port(), **options)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(
    redis_installed: None, stack_config: StackConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster on loopback (``.addresses``, ``.client()``). Tests share it:
    each uses its own key prefix."""
    shared = LocalStack(stack_config).cluster
    if all(shared.running()) and shared.ok():
        yield shared
        return
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"), free_cluster_ports())
    try:
        cluster.start()
    except DevstackError as exc:
        cluster.stop()
        skip_or_fail(f"could not start a Redis Cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def make_cluster(redis_installed: None, tmp_path: Path) -> Iterator[MakeCluster]:
    """Start private clusters: ``make_cluster(replicas=1, node_timeout_ms=..., tls=...)``."""
    started: list[RedisCluster] = []

    def make(*, replicas: int = 0, **options: Any) -> RedisCluster:
        ports = free_cluster_ports(3 * (1 + replicas))
        root = tmp_path / f"cluster{len(started)}"
        cluster = RedisCluster(root, ports, replicas=replicas, **options)
        started.append(cluster)
        try:
            cluster.start()
        except DevstackError as exc:
            skip_or_fail(f"could not start a Redis Cluster: {exc}")
        return cluster

    yield make
    for cluster in started:
        cluster.stop()


def pytest_report_header() -> str:
    """Say which stack directory the tests use."""
    return f"stack: {os.environ.get('STREAMSCORE_STACK_DIR', '<repo>/.stack')}"
