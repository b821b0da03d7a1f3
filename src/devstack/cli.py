"""``scripts/stack`` (``python -m devstack``): start, stop and inspect the local stack.

Environment (defaults in brackets): STREAMSCORE_STACK_DIR [<repo>/.stack],
STREAMSCORE_KAFKA_VERSION [4.1.1], STREAMSCORE_KAFKA_PORT [9092],
STREAMSCORE_KAFKA_CONTROLLER_PORT [9093], STREAMSCORE_REDIS_PORT [6379],
STREAMSCORE_REDIS_CLUSTER_PORT [7001, then the next two], STREAMSCORE_PARTITIONS [4],
STREAMSCORE_KAFKA_HEAP_OPTS [-Xms256m -Xmx512m], STREAMSCORE_KAFKA_START_TIMEOUT [120].
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

from devstack.procs import DevstackError
from devstack.stack import LocalStack, StackConfig

USAGE = """\
Usage:
  scripts/stack up [--with-prometheus] [--with-redis-cluster]
                                         start (idempotent; fast when already running)
  scripts/stack down [--wipe | --redis-cluster]
                                         stop everything; --wipe also deletes Kafka/Redis data;
                                         --redis-cluster stops only the Redis Cluster
  scripts/stack status                   show what runs; exit 0 only when all is healthy
  scripts/stack topics [NAME PARTITIONS] ensure the standard topics (or create one extra topic)
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/stack", usage=USAGE, add_help=False)
    p.add_argument("command", nargs="?")
    p.add_argument("args", nargs="*")
    p.add_argument("--with-prometheus", action="store_true")
    p.add_argument("--with-redis-cluster", action="store_true")
    p.add_argument("--wipe", action="store_true")
    p.add_argument("--redis-cluster", action="store_true")
    p.add_argument("-h", "--help", action="store_true")
    return p


def _check_options(command: str, given: dict[str, bool], allowed: set[str]) -> None:
    for option, on in given.items():
        if on and option not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise DevstackError(f"unknown option for {command}: {option} (known: {known})")


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors are printed as ``stack: error: ...`` with exit code 1."""
    logging.getLogger("kafka").setLevel(logging.CRITICAL + 1)  # probes fail while starting
    parser = _parser()
    ns, unknown = parser.parse_known_args(argv)
    if ns.help or ns.command in ("help", None):
        print(USAGE, end="", file=sys.stdout if ns.command or ns.help else sys.stderr)
        return 0 if ns.command or ns.help else 2
    given = {
        "--with-prometheus": ns.with_prometheus,
        "--with-redis-cluster": ns.with_redis_cluster,
        "--wipe": ns.wipe,
        "--redis-cluster": ns.redis_cluster,
    }
    try:
        if unknown:
            raise DevstackError(f"unknown option for {ns.command}: {unknown[0]}")
        stack = LocalStack(StackConfig.from_env())
        if ns.command == "up":
            _check_options("up", given, {"--with-prometheus", "--with-redis-cluster"})
            stack.up(prometheus=ns.with_prometheus, redis_cluster=ns.with_redis_cluster)
        elif ns.command == "down":
            _check_options("down", given, {"--wipe", "--redis-cluster"})
            if ns.wipe and ns.redis_cluster:
                raise DevstackError("down: --wipe and --redis-cluster do not go together")
            stack.down(wipe=ns.wipe, only_cluster=ns.redis_cluster)
        elif ns.command == "status":
            lines, ok = stack.status()
            print("\n".join(lines))
            return 0 if ok else 1
        elif ns.command == "topics":
            print("\n".join(stack.topics(*_topic_args(ns.args))))
        else:
            print(USAGE, end="", file=sys.stderr)
            raise DevstackError(f"unknown command '{ns.command}'")
    except DevstackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _topic_args(args: list[str]) -> tuple[str | None, int | None]:
    if not args:
        return None, None
    if len(args) != 2:
        raise DevstackError("usage: scripts/stack topics [NAME PARTITIONS]")
    name, parts = args
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise DevstackError(f"invalid topic name '{name}'")
    if not parts.isdigit() or int(parts) < 1:
        raise DevstackError(f"PARTITIONS must be a positive number, got '{parts}'")
    return name, int(parts)
