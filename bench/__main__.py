"""``python -m bench {all,core,bare,full,naive,latency,batch-cost,scaling,quality,
lineage-quality,sparse}``.

``quality`` (no servers) replays real and simulated purchase logs through ``streamscore
replay`` at monthly cutoffs and compares the scores with buy-till-you-die baselines; its own
options: ``python -m bench quality --help`` (``bench/quality.py``). ``lineage-quality``
compares the model quality of 1, 2 and 3 processes on a paced stream, several runs each
(``bench/lineage_quality.py``, ``--help``). ``sparse`` replays a wide, sparse user base
(default 1,000,000 users, about one event each per month, 12 months) through ``streamscore
run`` (``bench/sparse.py``, ``--help``).

Everything but ``core`` runs against the local stack (``scripts/stack up``): Kafka on
127.0.0.1:9092 and Redis on :6379 (``BENCH_KAFKA`` / ``BENCH_REDIS`` to change); ``full
--redis-cluster`` also runs the full scorer on a Redis Cluster (``bench/cluster.py``). Each run uses
its own topics, consumer groups and Redis key prefix and deletes them at the end. Results go
to ``bench/results/bench-<time>.json`` and a Markdown summary beside it.

These are figures, never assertions: nothing here fails because a number is low.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    DatasetSpec,
    Stack,
    code_version,
    dump_json,
    ensure_stack,
    log,
    machine_facts,
    make_dataset,
)
from bench.report import markdown, profiles_text

COMMANDS = ("all", "core", "bare", "full", "naive", "latency", "batch-cost", "scaling")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=COMMANDS, help="what to measure (all: everything)")
    p.add_argument("--events", type=int, default=150_000, help="events in the data set")
    p.add_argument("--users", type=int, default=5000, help="users of the simulated shop")
    p.add_argument("--days", type=float, default=90.0, help="days the shop is simulated for")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--rate", type=int, default=5000, help="offered events/s for latency")
    p.add_argument("--latency-seconds", type=float, default=20.0, help="paced load duration")
    p.add_argument(
        "--latency-warmup", type=int, default=20_000, help="events processed before the paced load"
    )
    p.add_argument(
        "--latency-runs",
        type=int,
        default=1,
        help="latency: measure the full scorer this many times (bare and anatomy once)",
    )
    p.add_argument(
        "--latency-only-full",
        action="store_true",
        help="latency: skip the bare loop and the in-process anatomy",
    )
    p.add_argument(
        "--flat-out",
        action="store_true",
        help="latency: also run `full` (no profile) and print CPU per event at the rate ÷ flat out",
    )
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="latency: a setting of the measured scorer (batch_linger_ms=0); repeatable",
    )
    p.add_argument(
        "--naive-seconds", type=float, default=45.0, help="time cap of the naive variant"
    )
    p.add_argument("--no-profile", action="store_true", help="skip the profiled runs")
    p.add_argument(
        "--redis-cluster",
        action="store_true",
        help="full: run again on a 3-master Redis Cluster (BENCH_REDIS_CLUSTER, else the "
        "stack's, else a private one), same data",
    )
    p.add_argument(
        "--equal-outputs",
        type=float,
        default=None,
        help="with bare: also run the loop producing this many records per event (the full "
        "scorer's ratio; `all` measures it)",
    )
    p.add_argument("--out", default=None, help="JSON result path (default bench/results/...)")
    return p


def _latency(args: argparse.Namespace, ctx: Any, results: dict[str, Any]) -> None:
    """The latency runs at ``--rate``; with ``--flat-out``, CPU per event against ``full``."""
    from bench import stack_runs as sr

    settings = dict(item.split("=", 1) for item in args.setting)

    def measure(kind: str, run: int = 0) -> dict[str, Any]:
        return sr.run_latency(
            ctx,
            kind=kind,
            rate=args.rate,
            seconds=args.latency_seconds,
            warmup=args.latency_warmup,
            settings=settings if kind == "full" else None,
            run=run,
        )

    if args.flat_out and "full" not in results:
        results["full"] = sr.run_scorer(ctx, label="full")
    latency: dict[str, Any] = {} if args.latency_only_full else {"bare": measure("bare")}
    runs = [measure("full", i) for i in range(args.latency_runs)]
    latency["full"] = runs[0]
    results["latency"] = latency
    if len(runs) > 1:
        results["latency_full_runs"] = runs
    if not args.latency_only_full:
        results["anatomy"] = sr.run_anatomy(
            ctx,
            rate=args.rate,
            seconds=min(args.latency_seconds, 15.0),
            warmup=args.latency_warmup,
        )
    flat = (results.get("full") or {}).get("cpu_us_per_event")
    if flat:
        results["low_rate_cpu_ratio"] = [round(r["cpu_us_per_event"] / flat, 2) for r in runs]
        log(
            f"CPU per event at {args.rate:,}/s ÷ flat out ({flat} µs): "
            + ", ".join(f"{x:.2f}" for x in results["low_rate_cpu_ratio"])
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["quality"]:
        from bench import quality

        return quality.main(argv[1:])
    if argv[:1] == ["lineage-quality"]:
        from bench import lineage_quality

        return lineage_quality.main(argv[1:])
    if argv[:1] == ["sparse"]:
        from bench import sparse

        return sparse.main(argv[1:])
    args = _parser().parse_args(argv)
    spec = DatasetSpec(users=args.users, days=args.days, seed=args.seed, events=args.events)
    cmd = args.command
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, Any] = {
        "command": cmd,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_facts(),
        "code": code_version(),
    }
    started = time.monotonic()
    log(
        f"generating the data set: {spec.events:,} events of {spec.users:,} users "
        f"over {spec.days:g} days"
    )
    data = make_dataset(spec)
    if cmd in {"all", "core"}:
        from bench.core import core

        results["core"] = core(spec, data, profile=not args.no_profile)
    if cmd != "core":
        from bench import stack_runs as sr

        ensure_stack()  # scripts/stack up, through devstack
        stack = Stack()
        log(f"stack run {stack.tag}: logs in {stack.log_dir}")
        ctx = sr.Context(stack, spec, data)
        results["dataset"] = sr.dataset_facts(ctx)
        try:
            if cmd in {"all", "bare"}:
                results["bare"] = sr.run_bare(ctx)
            if cmd in {"all", "full"}:
                results["full"] = sr.run_scorer(ctx, label="full", measure_redis=True)
                if args.redis_cluster:
                    results["full_cluster"] = sr.run_on_cluster(ctx)
                if not args.no_profile:
                    results["profile"] = sr.profile_scorer(ctx)
            if cmd == "all" or (cmd == "bare" and args.equal_outputs):
                # The bare loop again, producing as many records per event as the scorer
                # (measured by the full run, or --equal-outputs): the fair denominator.
                ratio = (results.get("full") or {}).get("outputs_per_event", args.equal_outputs)
                if ratio:
                    results["bare_equal"] = sr.run_bare(
                        ctx, label="bare-equal", outputs_per_event=ratio
                    )
            if cmd in {"all", "naive"}:
                naive = sr.run_scorer(ctx, label="naive", naive=True, timeout_s=args.naive_seconds)
                full = results.get("full")
                if full:
                    same = sr.same_prefix_rate(full["series"], naive["events_committed"])
                    naive["full_same_events_per_s"] = round(same, 1) if same else None
                    naive.update(sr.round_trip_cost(full, naive))
                results["naive"] = naive
            if cmd in {"all", "latency"}:
                _latency(args, ctx, results)
            if cmd == "batch-cost":
                from bench.batch_cost import run_batch_cost

                results["batch_cost"] = run_batch_cost(ctx)
            if cmd in {"all", "scaling"}:
                results["scaling"] = sr.run_scaling(ctx)
        finally:
            stack.cleanup()
    results["seconds"] = round(time.monotonic() - started, 1)
    path = args.out or str(RESULTS_DIR / f"bench-{cmd}-{stamp}.json")
    dump_json(Path(path), results)
    md = markdown(results)
    prof = profiles_text(results)
    with open(path.removesuffix(".json") + ".md", "w") as fp:
        fp.write(md + "\n\n```\n" + prof + "\n```\n" if prof else md + "\n")
    print()
    print(md)
    log(f"done in {results['seconds']:.0f}s; results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
