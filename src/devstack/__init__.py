"""streamscore's development stack: real Kafka and Redis servers on loopback, in Python.

One module starts every server the project runs outside Docker: ``scripts/stack`` (the shared
stack, ``python -m devstack``), the tests (private brokers and Redis servers they may stop,
kill, pause or lock with credentials and TLS; the Redis Cluster) and the benchmarks. The
servers are the real ones: Apache Kafka from its Maven Central jars in KRaft mode, Debian's
``redis-server``.

    broker = KafkaBroker(tmp / "kafka", KafkaJars(stack_dir), port=free_port(),
                         controller_port=free_port(), sasl_users={"app": "pw"})
    with broker, RedisServer(tmp / "redis", free_port(), password="pw") as rds:
        ...
    with RedisCluster(tmp / "cluster", [p1, p2, p3]) as cluster:
        cluster.client().set("{user}:k", b"v")
"""

from devstack.clients import GroupProgress, consume, produce, read_topic
from devstack.jars import KafkaJars
from devstack.kafka import BROKER_ADMIN, KafkaBroker
from devstack.procs import DevstackError, free_port, port_open, wait_until
from devstack.redis import RedisCluster, RedisServer, require_redis_server
from devstack.stack import LocalStack, StackConfig
from devstack.tls import TlsFiles, make_tls_files
from devstack.topics import (
    STANDARD_TOPICS,
    TOPIC_SETTINGS,
    create_topics,
    delete_topics,
    topic_partitions,
    topic_settings,
)

__all__ = [
    "BROKER_ADMIN",
    "STANDARD_TOPICS",
    "TOPIC_SETTINGS",
    "DevstackError",
    "GroupProgress",
    "KafkaBroker",
    "KafkaJars",
    "LocalStack",
    "RedisCluster",
    "RedisServer",
    "StackConfig",
    "TlsFiles",
    "consume",
    "create_topics",
    "delete_topics",
    "free_port",
    "make_tls_files",
    "port_open",
    "produce",
    "read_topic",
    "require_redis_server",
    "topic_partitions",
    "topic_settings",
    "wait_until",
]
