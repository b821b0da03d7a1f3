"""``python -m bench.save_cost``: what ``RedisStateStore.save`` costs per saved user.

    .venv/bin/python -m bench.save_cost [--redis-url redis://127.0.0.1:6379/0]
        [--users 500 --batches 200 --bytes 900 --repeats 5 --fresh]

Saves batches of ``--users`` states of ``--bytes`` random bytes each (one due entry per
user, one watermark per batch, as the runtime does) under a private key prefix, deleted at
the end. By default every batch saves the same users again (an active user base, where a
save within the TTL refresh window needs no ``EXPIRE``); ``--fresh`` gives every batch new
users (a sparse base, every key new); keys are deleted after each pass. Prints, per pass,
the process CPU and wall time per saved user, and Redis's own CPU per saved user (``INFO
cpu``; only meaningful on a Redis nobody else uses). Figures only; to compare two versions
of the store, run it with ``PYTHONPATH`` pointing at the other one's ``src`` (the first line
says which it loaded).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid

import redis

import streamscore
from streamscore.adapters.redis_store import RedisStateStore
from streamscore.config import Settings


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete every key under ``prefix:`` (one Redis)."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.save_cost", description=__doc__)
    p.add_argument("--redis-url", default=os.environ.get("STREAMSCORE_REDIS_URL", ""))
    p.add_argument("--users", type=int, default=500, help="states per save")
    p.add_argument("--batches", type=int, default=200, help="saves per pass")
    p.add_argument("--bytes", type=int, default=900, help="bytes per state")
    p.add_argument("--repeats", type=int, default=5, help="passes")
    p.add_argument("--fresh", action="store_true", help="new users in every batch")
    args = p.parse_args()
    url = args.redis_url or "redis://127.0.0.1:6379/0"
    prefix = f"ssbench-{uuid.uuid4().hex[:8]}"
    store = RedisStateStore.from_settings(Settings(redis_url=url, redis_key_prefix=prefix))
    watch = redis.Redis.from_url(url)
    print(f"streamscore from {os.path.dirname(streamscore.__file__)}; Redis {url}")
    blob = os.urandom(args.bytes)
    try:
        for rep in range(args.repeats):
            saved = 0
            cpu0, wall0, server0 = time.process_time(), time.perf_counter(), _redis_cpu(watch)
            for b in range(args.batches):
                base = (rep * args.batches + b) * args.users if args.fresh else 0
                users = [f"user-{base + i}" for i in range(args.users)]
                due = {0: dict.fromkeys(users, 1_767_225_600_000 + b)}
                store.save(dict.fromkeys(users, blob), due, {0: b})
                saved += len(users)
            cpu = time.process_time() - cpu0
            wall = time.perf_counter() - wall0
            server = _redis_cpu(watch) - server0
            delete_prefix(watch, prefix)
            print(f"pass {rep + 1}: {saved:,} users saved, client CPU {cpu / saved * 1e6:.2f} "
                  f"µs/user, wall {wall / saved * 1e6:.2f} µs/user, Redis CPU "
                  f"{server / saved * 1e6:.2f} µs/user")  # fmt: skip
    finally:
        delete_prefix(watch, prefix)
        watch.close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
