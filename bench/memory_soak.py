"""Memory of one ``streamscore run`` over a long stream, and Redis bytes per user (issue 5).

    .venv/bin/python -m bench.memory_soak [--users 1500 --days 120]   # about 200k events

Needs the local stack (scripts/stack up). Produces a simulated shop into fresh topics, runs
one scorer process over it, samples its resident memory (VmRSS from /proc) twice a second
against the committed progress, and prints (and writes to bench/results/memory_soak.json):

- RSS after start-up, at 25/50/75/100 % of the stream, the peak, and the slope of a least-
  squares line through the samples of the second half, in MB per 100k events: a flat process
  has a slope near 0;
- Redis memory per user: ``MEMORY USAGE`` of the user hashes (``RedisStateStore.bytes_per_user``)
  and the growth of ``used_memory`` divided by the number of users (includes the due queues,
  the expires table and allocator overhead).

A figure, never an assertion: nothing here fails a build.
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

from devstack import (
    GroupProgress,
    create_topics,
    delete_topics,
    produce,
    topic_partitions,
    topic_settings,
)
from streamscore.adapters.redis_store import RedisStateStore
from streamscore.config import load_settings
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event

BOOTSTRAP = os.environ.get("STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
REDIS_URL = os.environ.get("STREAMSCORE_REDIS_URL", "redis://127.0.0.1:6379/0")
RESULTS = Path(__file__).resolve().parent / "results"


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=1500)
    p.add_argument("--days", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--batch", type=int, default=2000, help="STREAMSCORE_BATCH_MAX_RECORDS")
    p.add_argument("--keep", action="store_true", help="keep the topics and Redis keys")
    args = p.parse_args()

    tag = f"soak{uuid.uuid4().hex[:6]}"
    topics = topic_settings(tag)
    client = {"bootstrap_servers": [BOOTSTRAP]}
    create_topics(client, topic_partitions(topics, 4))
    r = redis.Redis.from_url(REDIS_URL)
    progress: GroupProgress | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        sim = ShopSimulator(SimulationConfig(users=args.users, days=args.days, seed=args.seed))
        started = time.perf_counter()
        n = produce(
            client,
            topics["input_topic"],
            ((str(e["user_id"]).encode(), encode_event(e)) for e in sim.events()),
            linger_ms=20,
            batch_size=512 * 1024,
        )
        print(f"produced {n:,} events in {time.perf_counter() - started:.1f}s", flush=True)

        used_before = int(r.info("memory")["used_memory"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
        settings: dict[str, Any] = {
            **topics,
            "kafka_bootstrap_servers": BOOTSTRAP,
            "redis_url": REDIS_URL,
            "kafka_group_id": tag,
            "redis_key_prefix": tag,
            "metrics_port": 0,
            "checkpoint_key": "soak-key",
            "batch_max_records": args.batch,
        }
        env.update({f"STREAMSCORE_{k.upper()}": str(v) for k, v in settings.items()})
        log_path = RESULTS / f"{tag}.log"
        RESULTS.mkdir(exist_ok=True)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamscore.cli", "run"], env=env, stdout=log, stderr=log
            )
        progress = GroupProgress(client, tag, topics["input_topic"])
        ends = progress.ends()
        total = sum(ends.values())
        samples: list[tuple[float, int, float]] = []  # (seconds, committed records, RSS MB)
        t0 = time.monotonic()
        done = 0
        while done < total:
            if proc.poll() is not None:
                raise RuntimeError(f"scorer exited with {proc.returncode}; see {log_path}")
            done = round(progress.fraction() * total)
            samples.append((time.monotonic() - t0, done, rss_mb(proc.pid)))
            time.sleep(0.5)
        took = time.monotonic() - t0
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)

        store = RedisStateStore.from_settings(
            load_settings(redis_url=REDIS_URL, redis_key_prefix=tag)
        )
        per_user = store.bytes_per_user(sample=500)
        store.close()
        users = sum(1 for _ in r.scan_iter(match=f"{tag}:u:*", count=1000))
        used_after = int(r.info("memory")["used_memory"])

        started_at = next((s for s in samples if s[1] > 0), samples[0])

        def at(frac: float) -> float:
            return next(s[2] for s in samples if s[1] >= frac * total)

        second_half = [s for s in samples if s[1] >= total / 2]
        result = {
            "events": total,
            "seconds": round(took, 1),
            "events_per_second": round(total / took),
            "exit_code": code,
            "rss_mb": {
                "first_commit": round(started_at[2], 1),
                "25%": round(at(0.25), 1),
                "50%": round(at(0.5), 1),
                "75%": round(at(0.75), 1),
                "100%": round(samples[-1][2], 1),
                "peak": round(max(s[2] for s in samples), 1),
            },
            "rss_slope_mb_per_100k_events_second_half": round(
                slope([s[1] for s in second_half], [s[2] for s in second_half]) * 100_000, 2
            ),
            "users": users,
            "redis_bytes_per_user_memory_usage": round(per_user),
            "redis_used_memory_growth_per_user": round((used_after - used_before) / users)
            if users
            else None,
            "samples": len(samples),
        }
        out = orjson.dumps(result, option=orjson.OPT_INDENT_2)
        (RESULTS / "memory_soak.json").write_bytes(out)
        print(out.decode())
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if progress is not None:
            progress.close()
        if not args.keep:
            delete_topics(client, list(topics.values()))
            keys = list(r.scan_iter(match=f"{tag}:*", count=1000))
            for i in range(0, len(keys), 500):
                r.delete(*keys[i : i + 500])
        r.close()


if __name__ == "__main__":
    sys.exit(main())
