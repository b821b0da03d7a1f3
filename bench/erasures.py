"""What reading the erasure topic costs a scorer that has nothing to erase (issue 15).

    .venv/bin/python -m bench.erasures [--runs 2 --users 600 --days 60]

Needs the local stack. Per run and variant, on fresh topics: produce a simulated shop,
start ``streamscore run``, and measure wall time from start to the last offset commit and
the scorer's CPU seconds by then. ``off``: no erasure topic (the scorer warns and reads
none); ``on``: ``user-erasures`` and ``erasure-confirmations`` exist, so every batch also
asks the erasure reader for requests. Figures only (printed, and written to
bench/results/erasures.json).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.common import RESULTS_DIR, Stack, cpu_seconds, dump_json, ensure_stack, log
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event


def one_run(variant: str, records: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """One scorer over ``records``; its time and CPU to the last commit."""
    stack = Stack()
    try:
        names: dict[str, str] = {
            "input_topic": stack.create_topic(stack.name("events"), 4),
            **stack.output_topics(variant),
            "kafka_group_id": stack.group(variant),
            "redis_key_prefix": stack.prefix(variant),
            "erasures_topic": stack.name(f"{variant}-erasures"),
            "confirmations_topic": stack.name(f"{variant}-confirmations"),
        }
        if variant == "on":
            stack.create_topic(names["erasures_topic"], 4)
            stack.create_topic(names["confirmations_topic"], 4)
        total = stack.produce(names["input_topic"], records)
        env = stack.scorer_env(names, batch_max_records=500, poll_timeout_ms=100)
        started = time.monotonic()
        proc = stack.start(stack.scorer_argv(), env, variant)
        group, topic = names["kafka_group_id"], names["input_topic"]
        while stack.committed(group, topic) < total:
            if proc.poll() is not None:
                raise RuntimeError(f"scorer exited; see {stack.log_dir}/{variant}.log")
            time.sleep(0.05)
        seconds = time.monotonic() - started
        cpu = cpu_seconds(proc.pid)
        stack.stop(proc)
        return {"variant": variant, "events": total, "seconds": seconds, "cpu_seconds": cpu}
    finally:
        stack.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--days", type=float, default=60.0)
    args = parser.parse_args()
    ensure_stack()
    sim = ShopSimulator(SimulationConfig(users=args.users, days=args.days, seed=3))
    records = [
        (str(e["user_id"]).encode(), encode_event(e)) for e in sim.events() if isinstance(e, dict)
    ]
    results = []
    for run in range(args.runs):
        for variant in ("off", "on"):
            r = one_run(variant, records)
            results.append(r)
            log(
                f"run {run + 1} {variant:>3}: {r['events']:,} events in {r['seconds']:.1f}s "
                f"({r['events'] / r['seconds']:,.0f}/s), scorer CPU {r['cpu_seconds']:.1f}s"
            )
    dump_json(RESULTS_DIR / "erasures.json", results)


if __name__ == "__main__":
    main()
