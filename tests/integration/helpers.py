"""Driving ``streamscore run`` as a real process against the local stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from streamscore.adapters.redis_store import RedisStateStore
from streamscore.config import Settings, load_settings
from streamscore.core.state import UserState

from .conftest import BOOTSTRAP, REDIS_URL


def settings_for(names: dict[str, str], **extra: object) -> Settings:
    """Settings of a test's scorer: its own topics, group and key prefix."""
    return load_settings(
        kafka_bootstrap_servers=BOOTSTRAP, redis_url=REDIS_URL, metrics_port=0, **names, **extra
    )


def env_for(names: dict[str, str], **extra: object) -> dict[str, str]:
    """The same settings as environment variables, for a scorer subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    values: dict[str, object] = {
        "kafka_bootstrap_servers": BOOTSTRAP,
        "redis_url": REDIS_URL,
        "metrics_port": 0,
        "batch_max_records": 500,
        "poll_timeout_ms": 100,
        "checkpoint_key": "integration-test-key",
        "checkpoint_interval_seconds": 2,
        **names,
        **extra,
    }
    env.update({f"STREAMSCORE_{k.upper()}": str(v) for k, v in values.items()})
    return env


def produce(topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Produce (key, value) records and wait for all of them."""
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=5)
    n = 0
    for key, value in records:
        producer.send(topic, key=key, value=value)
        n += 1
    producer.flush()
    producer.close()
    return n


def start_scorer(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``streamscore run`` as a child process, logging to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streamscore.cli", "run"], env=env, stdout=log, stderr=log
        )


def committed_fraction(group: str, topic: str) -> float:
    """Share of the topic's records the group has committed."""
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(parts)
        try:
            committed = admin.list_group_offsets(group).get(group, {})
        except KafkaError:
            return 0.0  # the group has not committed anything yet
        total = sum(ends.values())
        done = sum(min(committed[tp].offset, ends[tp]) for tp in parts if tp in committed)
        return done / total if total else 1.0
    finally:
        consumer.close()
        admin.close()


def wait_until_committed(
    group: str, topic: str, procs: list[subprocess.Popen[bytes]], timeout_s: float = 120.0
) -> None:
    """Block until the group has committed every record, failing early if a scorer died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"scorer exited early with code {p.returncode}")
        if committed_fraction(group, topic) >= 1.0:
            return
        time.sleep(0.5)
    raise AssertionError(f"group {group} did not commit all of {topic} in {timeout_s}s")


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    """SIGTERM and wait: the graceful path. A scorer that ignores it is killed, then failed."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def consume_all(
    topic: str, expect_at_least: int = 0, idle_s: float = 3.0
) -> list[dict[str, object]]:
    """Every JSON record of a topic, read from the beginning until it goes quiet."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=BOOTSTRAP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=int(idle_s * 1000),
    )
    out = [orjson.loads(m.value) for m in consumer]
    consumer.close()
    assert len(out) >= expect_at_least, f"{topic}: {len(out)} records, expected ≥ {expect_at_least}"
    return out


def redis_states(settings: Settings, users: set[str]) -> dict[str, UserState]:
    """The saved states of these users in the Redis the settings point at."""
    store = RedisStateStore.from_settings(settings)
    try:
        raw = store.load(sorted(users))
    finally:
        store.close()
    return {u: UserState.from_bytes(u, b) for u, b in raw.items()}


def assert_same_features(got: dict[str, UserState], want: dict[str, UserState]) -> None:
    """Same users with the same features (floats to 1e-9)."""
    assert got.keys() == want.keys(), (len(got), len(want))
    for uid, state in want.items():
        a, b = got[uid].features.to_dict(), state.features.to_dict()
        for key, value in b.items():
            if isinstance(value, float | list):
                assert a[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (uid, key)
            else:
                assert a[key] == value, (uid, key)
