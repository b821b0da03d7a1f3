"""``python -m bench sparse``: a wide, sparse user base through ``streamscore run`` (issue 13).

    .venv/bin/python -m bench sparse                                # 1,000,000 users, 12 months
    .venv/bin/python -m bench sparse --users 20000 --months 3       # about a minute

Produces the sparse shop of ``bench/sparse_shop.py`` (about one event per user per month, in
event-time order, keyed by user id) into a fresh topic, then runs one ``streamscore run``
(``bench.workers counted``: the service unchanged, counting Redis round trips and scores by
trigger) on fresh output topics, a fresh consumer group and a fresh Redis key prefix until it
has committed every event, and reports:

- events/s and CPU µs per event over the committed window (as ``bench full`` measures them);
- scores per event, split into event scores and silence rescorings (silent users rescored
  when a silence point or horizon falls due), rescorings/s and CPU µs per score;
- peak RSS of the scorer (VmHWM), the user keys in Redis at the end, and Redis bytes per user:
  the growth of ``used_memory`` over the run ÷ users with state (the shared server's other
  clients add to it), and ``MEMORY USAGE`` of a sample of user keys plus every other key of
  the prefix (due queues, watermarks, blobs) ÷ users.

Everything it created (topics, groups, key prefix) is deleted at the end. Figures only.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from bench.common import (
    RESULTS_DIR,
    Stack,
    code_version,
    dump_json,
    log,
    machine_facts,
    percentile,
    wait_quiet,
)
from bench.sparse_shop import SparseSpec, sparse_events
from streamscore.simulator import encode_event

USER_SAMPLE = 5000  # user keys whose MEMORY USAGE is measured


class Tally:
    """Counts what goes by (events, types, distinct users) and logs progress while producing."""

    def __init__(self, spec: SparseSpec) -> None:
        self.spec = spec
        self.events = 0
        self.types: Counter[str] = Counter()
        self._seen = bytearray(spec.users)
        self.first_ms = 0
        self.last_ms = 0

    @property
    def users(self) -> int:
        return len(self._seen) - self._seen.count(0)

    def records(self) -> Iterator[tuple[bytes, bytes]]:
        expected = self.spec.expected_events
        started = last = time.monotonic()
        for event in sparse_events(self.spec):
            uid = str(event["user_id"])
            self._seen[int(uid[1:])] = 1
            self.types[str(event["type"])] += 1
            self.events += 1
            self.last_ms = int(event["ts"])  # type: ignore[call-overload]
            self.first_ms = self.first_ms or self.last_ms
            yield uid.encode(), encode_event(event)
            if self.events % 10_000 == 0 and (now := time.monotonic()) - last >= 5:
                last = now
                rate = self.events / (now - started)
                log(
                    f"producing: {self.events:,} of ~{expected:,} events "
                    f"({self.events / expected:.0%}, {rate:,.0f}/s, "
                    f"~{(expected - self.events) / rate:,.0f}s left)"
                )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench sparse", description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=1_000_000, help="customers of the shop")
    p.add_argument("--months", type=float, default=12.0, help="months of event time")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--partitions", type=int, default=4, help="partitions of the input topic")
    p.add_argument(
        "--timeout-hours", type=float, default=8.0, help="give up consuming after this long"
    )
    p.add_argument("--out", default=None, help="JSON result path (default bench/results/...)")
    return p


def redis_figures(stack: Stack, prefix: str, sample: int = USER_SAMPLE) -> dict[str, Any]:
    """User keys under ``prefix``, and ``MEMORY USAGE`` of a sample of them and of every
    other key (due queues, watermarks, blobs), one SCAN over the prefix."""
    user_mark = f"{prefix}:u:".encode()
    users = 0
    sampled: list[bytes] = []
    others: list[bytes] = []
    for key in stack.redis.scan_iter(match=f"{prefix}:*", count=5000):
        if key.startswith(user_mark):
            users += 1
            if len(sampled) < sample:  # SCAN walks the hash table: an unordered sample
                sampled.append(key)
        else:
            others.append(key)

    def usage(keys: list[bytes]) -> list[int]:
        with stack.redis.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.memory_usage(k, samples=0)
            return [int(s or 0) for s in pipe.execute()]

    sizes = sorted(usage(sampled))
    other_bytes = sum(usage(others))
    mean = sum(sizes) / len(sizes) if sizes else 0.0
    return {
        "user_keys": users,
        "other_keys": len(others),
        "user_key_sample": len(sizes),
        "user_key_bytes_mean": round(mean, 1),
        "user_key_bytes_p50": percentile(sizes, 50),
        "user_key_bytes_p90": percentile(sizes, 90),
        "user_key_bytes_max": sizes[-1] if sizes else 0,
        "other_keys_bytes": other_bytes,
        "memory_usage_bytes_per_user": round(mean + other_bytes / users, 1) if users else None,
    }


def _used_memory(stack: Stack) -> int:
    return int(stack.redis.info("memory")["used_memory"])


def _produce(stack: Stack, spec: SparseSpec, partitions: int) -> tuple[str, Tally]:
    topic = stack.create_topic(stack.name("events"), partitions)
    tally = Tally(spec)
    log(
        f"generating and producing ~{spec.expected_events:,} events of {spec.users:,} users "
        f"over {spec.months:g} months (seed {spec.seed}) to {topic}"
    )
    stack.produce(topic, tally.records(), label=f"{topic} ({partitions} partitions)")
    return topic, tally


def _consume(stack: Stack, topic: str, total: int, timeout_s: float) -> dict[str, Any]:
    """One ``streamscore run`` over the topic until it has committed ``total`` events."""
    from bench.stack_runs import _output_names, _scorer_names, outputs_per_event, watch

    label = "sparse"
    names, prefix = _scorer_names(stack, label, topic)
    env = stack.scorer_env(names)
    stats_file = stack.log_dir / f"{label}-stats.json"
    env.update(BENCH_STATS_FILE=str(stats_file), BENCH_COUNT_SCORES="1")
    quiet = wait_quiet()
    used_before = _used_memory(stack)
    log(f"{label}: streamscore run over {total:,} events (log {stack.log_dir}/{label}-0.log)")
    proc = stack.start([sys.executable, "-m", "bench.workers", "counted"], env, f"{label}-0")
    try:
        result = watch(stack, [proc], names["kafka_group_id"], topic, total,
                       timeout_s=timeout_s, label=label)  # fmt: skip
    finally:
        code = stack.stop(proc, timeout_s=120)
    result["exit_code"] = code
    result["other_load_before"] = quiet
    result["load_average_at_end"] = os.getloadavg()
    result["outputs_per_event"] = round(
        outputs_per_event(stack, _output_names(names), result["events_committed"]), 4
    )
    if stats_file.exists():
        result["process"] = orjson.loads(stats_file.read_bytes())
    log(f"{label}: measuring Redis under {prefix}")
    redis = redis_figures(stack, prefix)
    grown = _used_memory(stack) - used_before
    redis["used_memory_growth_bytes"] = grown
    users = redis["user_keys"]
    redis["used_memory_growth_per_user"] = round(grown / users, 1) if users else None
    result["redis"] = redis
    return result


def derived(run: dict[str, Any]) -> dict[str, Any]:
    """Scores per event and per second, and CPU per score, from the run's counts.

    Counts cover the process's life and the rates its committed window: rescorings/s is the
    window's events/s × silence rescorings per event over the whole run.
    """
    scores = (run.get("process") or {}).get("scores") or {}
    events = run["events_committed"]
    total = sum(scores.values())
    silence = scores.get("silence", 0)
    if not events or not total:
        return {}
    per_event = total / events
    rate = run["events_per_s"]
    cpu = run["cpu_us_per_event"]
    metrics = run["process"].get("metrics", {})
    quarters = by_quarter(run.get("series") or [])
    due = metrics.get("streamscore_due_users_loaded_total")
    return {
        "scores": total,
        "scores_by_trigger": scores,
        "scores_per_event": round(per_event, 3),
        "rescorings_per_event": round(silence / events, 3),
        "rescorings_per_s": round(rate * silence / events, 1),
        "scores_per_s": round(rate * per_event, 1),
        "cpu_us_per_score": round(cpu / per_event, 1) if cpu else None,
        "due_users_loaded_per_event": round(due / events, 3) if due is not None else None,
        "events_per_s_by_quarter": quarters,
    }


def by_quarter(series: list[tuple[float, int]]) -> list[float]:
    """events/s in each quarter of the committed window (event time runs with the offsets,
    so this is the rate in each quarter of the shop's months)."""
    if len(series) < 5:
        return []
    n0 = series[0][1]
    t1, n1 = series[-1]
    marks = [next((t, n) for t, n in series if n >= n0 + (n1 - n0) * q / 4) for q in range(5)]
    marks[-1] = (t1, n1)
    return [
        round((b[1] - a[1]) / (b[0] - a[0]), 1) if b[0] > a[0] else 0.0
        for a, b in itertools.pairwise(marks)
    ]


def summary_lines(result: dict[str, Any]) -> list[str]:
    run, d, r = result["run"], result["derived"], result["run"]["redis"]
    return [
        f"sparse shop: {result['dataset']['events']:,} events of "
        f"{result['dataset']['users_with_events']:,} users over {result['spec']['months']:g} "
        f"months ({result['dataset']['events_per_user_per_month']:.3f} per user per month)",
        f"events/s            {run['events_per_s']:>12,.0f}   over {run['window_s']:,.0f}s",
        f"rescorings/s        {d.get('rescorings_per_s', 0):>12,.0f}   "
        f"({d.get('rescorings_per_event')} per event; {d.get('scores_per_event')} scores "
        f"per event in all)",
        f"CPU µs per event    {run['cpu_us_per_event']:>12}",
        f"CPU µs per score    {d.get('cpu_us_per_score')!s:>12}",
        f"peak RSS            {run['peak_rss_mib']:>10} MiB",
        f"user keys           {r['user_keys']:>12,}",
        f"Redis B per user    {r['used_memory_growth_per_user']!s:>12}   (used_memory growth); "
        f"{r['memory_usage_bytes_per_user']} (MEMORY USAGE: user keys "
        f"{r['user_key_bytes_mean']:.0f} mean of {r['user_key_sample']:,}, p90 "
        f"{r['user_key_bytes_p90']}, plus {r['other_keys']} other keys)",
        f"events/s by quarter {d.get('events_per_s_by_quarter')}",
        f"machine             {run['machine']['other_busy_cores']} cores busy elsewhere "
        f"during the run; load average {_load(result['machine']['load_average_at_start'])} "
        f"at start, {_load(run['load_average_at_end'])} at the end",
    ]


def _load(averages: tuple[float, float, float]) -> str:
    return " ".join(f"{a:.2f}" for a in averages)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    spec = SparseSpec(users=args.users, months=args.months, seed=args.seed)
    if spec.end_ms > time.time() * 1000:
        raise SystemExit(
            f"--months {args.months:g} from 2024-01-01 reaches into the future, and "
            "streamscore dead-letters future events; use fewer months"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result: dict[str, Any] = {
        "command": "sparse",
        "argv": ["python", "-m", "bench", "sparse", *argv],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "spec": {k: getattr(spec, k) for k in SparseSpec.__dataclass_fields__},
        "machine": machine_facts(),
        "code": code_version(),
    }
    started = time.monotonic()
    stack = Stack(tag=f"sparse{os.urandom(4).hex()}")
    log(f"sparse run {stack.tag}: logs in {stack.log_dir}")
    try:
        topic, tally = _produce(stack, spec, args.partitions)
        span_months = (tally.last_ms - tally.first_ms) / (spec.end_ms - spec.start_ms) * spec.months
        result["dataset"] = {
            "events": tally.events,
            "users_with_events": tally.users,
            "types": dict(tally.types),
            "events_per_user_per_month": tally.events / spec.users / spec.months,
            "event_time_months": round(span_months, 3),
            "produced_s": round(time.monotonic() - started, 1),
        }
        run = _consume(stack, topic, tally.events, args.timeout_hours * 3600)
        result["run"] = run
        result["derived"] = derived(run)
    finally:
        stack.cleanup()
    result["seconds"] = round(time.monotonic() - started, 1)
    path = Path(args.out or RESULTS_DIR / f"bench-sparse-{stamp}.json")
    dump_json(path, result)
    print()
    for line in summary_lines(result):
        print(line)
    log(f"done in {result['seconds']:.0f}s; results in {path}")
    return 0
