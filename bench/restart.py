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
import signal
import sys
import time
from typing import Any

import orjson

from bench.common import RESULTS_DIR, Stack, ensure_stack, log
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event


def one_run(variant: str, users: int, days: float, seed: int) -> dict[str, Any]:
    """Kill and restart one scorer; returns the timings of the restart."""
    stack = Stack()
    try:
        names = {
            "input_topic": stack.create_topic(stack.name("events"), 4),
            **stack.output_topics(variant),
            "kafka_group_id": stack.group(variant),
            "redis_key_prefix": stack.prefix(variant),
        }
        sim = ShopSimulator(SimulationConfig(users=users, days=days, seed=seed))
        events = [e for e in sim.events() if isinstance(e, dict)]
        total = stack.produce(
            names["input_topic"], [(str(e["user_id"]).encode(), encode_event(e)) for e in events]
        )
        extra: dict[str, object] = {"batch_max_records": 500, "poll_timeout_ms": 100}
        if variant == "static":
            extra["kafka_group_instance_id"] = "bench-0"
        env = stack.scorer_env(names, **extra)
        group, topic = names["kafka_group_id"], names["input_topic"]
        log_path = stack.log_dir / f"{variant}.log"

        first = stack.start(stack.scorer_argv(), env, variant)
        while stack.committed(group, topic) < total / 3:
            if first.poll() is not None:
                raise RuntimeError(f"scorer exited; see {log_path}")
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        stack.procs.remove(first)
        before = stack.committed(group, topic)
        joins = log_path.read_text().count("assigned partitions [")
        started = time.monotonic()
        second = stack.start(stack.scorer_argv(), env, variant)
        assigned_s = commit_s = None
        while commit_s is None and time.monotonic() - started < 180:
            if second.poll() is not None:
                raise RuntimeError(f"scorer exited; see {log_path}")
            now = time.monotonic() - started
            if assigned_s is None and log_path.read_text().count("assigned partitions [") > joins:
                assigned_s = now
            if stack.committed(group, topic) > before:
                commit_s = now
            time.sleep(0.05)
        return {"variant": variant, "assigned_s": assigned_s, "first_commit_s": commit_s}
    finally:
        stack.cleanup()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=2, help="kills per variant")
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--days", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    ensure_stack()
    results = []
    for run in range(args.runs):
        for variant in ("dynamic", "static"):
            res = one_run(variant, args.users, args.days, args.seed + run)
            results.append(res)
            log(
                f"{variant:8s} restart → partitions assigned {res['assigned_s']:.1f}s, "
                f"first commit {res['first_commit_s']:.1f}s"
            )
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "restart.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
