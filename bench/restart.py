"""Restart to first commit after a crash, with and without static group membership (issue 10).

    .venv/bin/python -m bench.restart [--runs 2 --users 400 --days 60]

Needs the local stack (scripts/stack up). For each variant, on fresh topics: produce a
simulated shop, start ``streamscore run``, SIGKILL it once a third of the input is committed,
start it again at once, and time from that start to (a) ``assigned partitions`` in its log and
(b) the first offset commit past what the killed process had committed. Variants:

- ``dynamic``: no ``kafka_group_instance_id``. The new process is a new member; the group
  waits for the dead one's session (``session_timeout_ms``, 45 s by default) to expire;
- ``static``: ``STREAMSCORE_KAFKA_GROUP_INSTANCE_ID=bench-0``. The new process takes over
  the dead member's place (KIP-345) and its assignment at once.

Both run with the default session timeout. Figures only (printed, and written to
bench/results/restart.json): nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event

BOOTSTRAP = os.environ.get("STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
REDIS_URL = os.environ.get("STREAMSCORE_REDIS_URL", "redis://127.0.0.1:6379/0")
RESULTS = Path(__file__).resolve().parent / "results"
TOPIC_KINDS = ("user-events", "user-scores", "churn-alerts", "segment-changes", "user-events-dlq")
SETTING_OF = {
    "user-events": "input_topic",
    "user-scores": "scores_topic",
    "churn-alerts": "alerts_topic",
    "segment-changes": "segments_topic",
    "user-events-dlq": "dlq_topic",
}


def committed(admin: KafkaAdminClient, group: str, parts: list[TopicPartition]) -> dict[int, int]:
    """The group's committed offset per partition."""
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    except Exception:
        return {}
    return {tp.partition: offsets[tp].offset for tp in parts if tp in offsets}


def one_run(variant: str, users: int, days: float, seed: int) -> dict[str, Any]:
    """Kill and restart one scorer; returns the timings of the restart."""
    tag = f"rst{uuid.uuid4().hex[:6]}"
    topics = {SETTING_OF[k]: f"{tag}-{k}" for k in TOPIC_KINDS}
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    admin.create_topics([NewTopic(t, 4, 1) for t in topics.values()])
    log_path = RESULTS / f"{tag}-{variant}.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=20)
        for e in ShopSimulator(SimulationConfig(users=users, days=days, seed=seed)).events():
            assert isinstance(e, dict)
            producer.send(
                topics["input_topic"], key=str(e["user_id"]).encode(), value=encode_event(e)
            )
        producer.flush()
        producer.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
        settings: dict[str, Any] = {
            **topics,
            "kafka_bootstrap_servers": BOOTSTRAP,
            "redis_url": REDIS_URL,
            "kafka_group_id": tag,
            "redis_key_prefix": tag,
            "metrics_port": 0,
            "checkpoint_key": "bench-key",
            "batch_max_records": 500,
            "poll_timeout_ms": 100,
        }
        if variant == "static":
            settings["kafka_group_instance_id"] = "bench-0"
        env.update({f"STREAMSCORE_{k.upper()}": str(v) for k, v in settings.items()})
        consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP)
        parts = [TopicPartition(topics["input_topic"], i) for i in range(4)]
        total = sum(consumer.end_offsets(parts).values())
        consumer.close()

        def start() -> subprocess.Popen[bytes]:
            with log_path.open("ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "streamscore.cli", "run"],
                    env=env,
                    stdout=log,
                    stderr=log,
                )
            procs.append(proc)
            return proc

        first = start()
        while sum(committed(admin, tag, parts).values()) < total / 3:
            if first.poll() is not None:
                raise RuntimeError(f"scorer exited; see {log_path}")
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        before = committed(admin, tag, parts)
        joins = log_path.read_text().count("assigned partitions [")
        started = time.monotonic()
        second = start()
        assigned_s = commit_s = None
        while commit_s is None and time.monotonic() - started < 180:
            if second.poll() is not None:
                raise RuntimeError(f"scorer exited; see {log_path}")
            now = time.monotonic() - started
            if assigned_s is None and log_path.read_text().count("assigned partitions [") > joins:
                assigned_s = now
            after = committed(admin, tag, parts)
            if any(after.get(p, 0) > o for p, o in before.items()):
                commit_s = now
            time.sleep(0.05)
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
        return {"variant": variant, "assigned_s": assigned_s, "first_commit_s": commit_s}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        admin.delete_topics(list(topics.values()))
        admin.close()
        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter(match=f"{tag}:*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
        r.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=2, help="kills per variant")
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--days", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    RESULTS.mkdir(exist_ok=True)
    results = []
    for run in range(args.runs):
        for variant in ("dynamic", "static"):
            res = one_run(variant, args.users, args.days, args.seed + run)
            results.append(res)
            print(
                f"{variant:8s} restart → partitions assigned {res['assigned_s']:.1f}s, "
                f"first commit {res['first_commit_s']:.1f}s",
                flush=True,
            )
    (RESULTS / "restart.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
