"""What a batch costs whatever its size: CPU per batch against records per batch.

At a moderate rate a batch holds what arrived while the previous one was processed, so
batches are small and whatever a batch costs regardless of its size (the producer's flush
and its new record batches, three or four Redis round trips, the offset commit, the
erasure read, the metrics) is shared by few events. ``batch_linger_ms`` lets a batch fill
for a bounded while; this measures what that buys, independently of how busy the machine is:
the pipeline of ``build_service`` in this process (no trainer thread, as in
``stack_runs.run_anatomy``) works through a backlog in batches of fixed sizes, taking turns,
and the process's CPU time (every thread: kafka-python's and redis-py's too) is fitted as

    CPU of a run = fixed × batches + per_event × events

by least squares over all runs. CPU time is the process's own, so other load on the
machine changes it little (wall time it changes a lot).
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import BOOTSTRAP, CHECKPOINT_KEY, REDIS_URL, log, wait_quiet

SIZES = (25, 50, 100, 200, 500, 2000)


def run_batch_cost(
    ctx: Any,
    *,
    sizes: tuple[int, ...] = SIZES,
    rounds: int = 3,
    events_per_run: int = 4000,
    warmup: int = 20_000,
    partitions: int = 4,
) -> dict[str, Any]:
    """CPU per batch and per event at each batch size, and the fitted fixed cost."""
    from bench.stack_runs import _scorer_names
    from streamscore.config import load_settings
    from streamscore.gc_freeze import freeze_startup_heap, thaw_heap
    from streamscore.service import build_service

    need = warmup + rounds * len(sizes) * events_per_run
    if need > len(ctx.data):
        raise ValueError(f"batch-cost needs {need:,} events; the data set has {len(ctx.data):,}")
    stack = ctx.stack
    label = "batch-cost"
    topic = stack.create_topic(stack.name(f"{label}-in"), partitions)
    stack.produce(topic, ctx.data[:need], label=f"{label} input")
    names, _ = _scorer_names(stack, label, topic)
    settings = load_settings(
        kafka_bootstrap_servers=BOOTSTRAP, redis_url=REDIS_URL, metrics_port=0,
        checkpoint_key=CHECKPOINT_KEY, run_trainer=False, batch_linger_ms=0, **names,
    )  # fmt: skip
    pipeline = build_service(settings).pipeline
    freeze_startup_heap()
    quiet = wait_quiet()
    log(f"{label}: batches of {', '.join(map(str, sizes))} records, {rounds} rounds")
    runs: list[dict[str, Any]] = []
    try:
        done = 0
        while done < warmup:
            done += pipeline.run_once().records
        for r in range(rounds):
            for size in sizes if r % 2 == 0 else tuple(reversed(sizes)):
                pipeline.batch_size = size
                events = batches = users = 0
                cpu0 = time.process_time()
                while events < events_per_run:
                    stats = pipeline.run_once()
                    if stats.records:
                        events += stats.records
                        batches += 1
                        users += stats.users
                cpu = time.process_time() - cpu0
                runs.append(
                    {"size": size, "batches": batches, "events": events, "users": users,
                     "cpu_s": round(cpu, 4)}
                )  # fmt: skip
    finally:
        thaw_heap()
        pipeline.sink.close()
        pipeline.source.close()
        pipeline.store.close()
    fixed, per_event = _fit(runs)
    by_size = {}
    for size in sizes:
        mine = [x for x in runs if x["size"] == size]
        ev = sum(x["events"] for x in mine)
        by_size[size] = {
            "records_per_batch": round(ev / sum(x["batches"] for x in mine), 1),
            "users_per_batch": round(
                sum(x["users"] for x in mine) / sum(x["batches"] for x in mine), 1
            ),
            "cpu_us_per_event": round(sum(x["cpu_s"] for x in mine) / ev * 1e6, 1),
        }
    result = {
        "other_load_before": quiet,
        "runs": runs,
        "by_size": by_size,
        "fixed_ms_per_batch": round(fixed * 1000, 2),
        "per_event_us": round(per_event * 1e6, 1),
    }
    log(
        f"{label}: CPU per event by batch size: "
        + ", ".join(f"{s}: {v['cpu_us_per_event']:.0f} µs" for s, v in by_size.items())
        + f"; fitted: {result['fixed_ms_per_batch']} ms per batch + "
        f"{result['per_event_us']} µs per event"
    )
    return result


def _fit(runs: list[dict[str, Any]]) -> tuple[float, float]:
    """Least squares of cpu = fixed × batches + per_event × events (no intercept)."""
    bb = sum(x["batches"] ** 2 for x in runs)
    be = sum(x["batches"] * x["events"] for x in runs)
    ee = sum(x["events"] ** 2 for x in runs)
    bc = sum(x["batches"] * x["cpu_s"] for x in runs)
    ec = sum(x["events"] * x["cpu_s"] for x in runs)
    det = bb * ee - be * be
    if not det:
        return 0.0, 0.0
    return (bc * ee - be * ec) / det, (bb * ec - be * bc) / det
