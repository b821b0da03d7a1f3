"""Benchmarks against the real local stack: bare loop, full scorer, naive variant, latency, scaling.

How throughput is measured (the same for every variant): the events are produced into the
input topic *before* the consumer starts. While it runs, the benchmark polls the group's
committed offsets (OffsetFetch, every ~25 ms) and reads ``/proc/<pid>/stat`` of the consumer
process(es), of the Kafka broker and of Redis. The rate is

    (events committed at the end − events committed at the first commit)
    ÷ (time all events were committed − time of the first commit),

so process start-up and the first batch are left out; with several processes the window
starts once every process owns partitions (group Stable, every member assigned). CPU per
event is the consumer processes' CPU seconds over that window ÷ events in it.
"""

from __future__ import annotations

import bisect
import gc
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
from kafka import KafkaProducer

from bench.common import (
    BOOTSTRAP,
    CHECKPOINT_KEY,
    REDIS_URL,
    ROOT,
    DatasetSpec,
    Stack,
    cpu_seconds,
    kafka_partition,
    locality,
    log,
    machine_jiffies,
    percentile,
    stack_pids,
    status_kib,
    wait_quiet,
)
from bench.profiles import from_pyspy_raw, render, summarize

POLL_INTERVAL_S = 0.025


@dataclass
class Context:
    """The stack of this run, the data set, and the input topics made from it (lazily)."""

    stack: Stack
    spec: DatasetSpec
    data: list[tuple[bytes, bytes]]
    inputs: dict[int, str] = field(default_factory=dict)

    def input_topic(self, partitions: int) -> str:
        """A topic holding the whole data set, keyed by user, with this many partitions."""
        if partitions not in self.inputs:
            topic = self.stack.create_topic(self.stack.name(f"events-p{partitions}"), partitions)
            self.stack.produce(topic, self.data, label=f"input topic ({partitions} partitions)")
            self.inputs[partitions] = topic
        return self.inputs[partitions]

    def partition_shares(self, partitions: int) -> list[float]:
        counts = [0] * partitions
        for key, _ in self.data:
            counts[kafka_partition(key, partitions)] += 1
        return [round(c / len(self.data), 4) for c in counts]


# -- watching a consumer group work through a topic ------------------------------------------


def _snapshot(pids: Sequence[int], infra: dict[str, int]) -> dict[str, Any]:
    busy, total = machine_jiffies()
    return {
        "t": time.monotonic(),
        "cpu": {pid: cpu_seconds(pid) for pid in pids},
        "infra": {name: cpu_seconds(pid) for name, pid in infra.items()},
        "self": time.process_time(),
        "busy": busy,
        "jiffies": total,
    }


def watch(
    stack: Stack,
    procs: Sequence[subprocess.Popen[bytes]],
    group: str,
    topic: str,
    total: int,
    *,
    timeout_s: float,
    label: str,
    infra_pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Poll committed offsets until the group has committed ``total`` records (or time runs
    out); ``infra_pids`` are servers whose CPU counts too (the stack's Kafka and Redis do)."""
    infra = {**stack_pids(), **(infra_pids or {})}
    pids = [p.pid for p in procs]
    started = time.monotonic()
    first: dict[str, Any] | None = None
    first_committed = 0
    committed = 0
    series: list[tuple[float, int]] = []
    last_print = started
    while True:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(
                    f"{label}: process {p.pid} exited with code {p.returncode}; see {stack.log_dir}"
                )
        committed = stack.committed(group, topic)
        now = time.monotonic()
        if (
            first is None
            and committed > 0
            and (len(procs) == 1 or stack.members_with_partitions(group) >= len(procs))
        ):
            first = _snapshot(pids, infra)
            first_committed = committed
        if first is not None:
            series.append((round(now - first["t"], 3), committed))
        if committed >= total or now - started > timeout_s:
            break
        if now - last_print > 5:
            last_print = now
            log(f"{label}: {committed:,}/{total:,} committed")
        time.sleep(POLL_INTERVAL_S)
    end = _snapshot(pids, infra)
    rss = [status_kib(pid, "VmHWM") for pid in pids]
    if first is None:
        raise RuntimeError(f"{label}: nothing was committed within {timeout_s:.0f}s")
    window = end["t"] - first["t"]
    events = committed - first_committed
    cpu = sum(end["cpu"][pid] - first["cpu"][pid] for pid in pids)
    jiffies = end["jiffies"] - first["jiffies"]
    cores = jiffies / 100 / window if window else 0.0  # jiffies tick at USER_HZ=100 per core
    busy_cores = (end["busy"] - first["busy"]) / 100 / window if window else 0.0
    infra_cpu = {k: end["infra"].get(k, 0.0) - first["infra"].get(k, 0.0) for k in infra}
    ours = cpu + sum(infra_cpu.values()) + (end["self"] - first["self"])
    result = {
        "processes": len(procs),
        "complete": committed >= total,
        "events_total": total,
        "events_committed": committed,
        "startup_s": round(first["t"] - started, 2),
        "window_s": round(window, 3),
        "window_events": events,
        "events_per_s": round(events / window, 1) if window else 0.0,
        "cpu_s_per_event": cpu / events if events else None,
        "cpu_us_per_event": round(cpu / events * 1e6, 1) if events else None,
        "cpu_cores_used": round(cpu / window, 2) if window else None,
        "cpu_lifetime_s": round(sum(end["cpu"].values()), 2),
        "peak_rss_mib": round(max(rss) / 1024, 1),
        "peak_rss_mib_each": [round(r / 1024, 1) for r in rss],
        "infra_cpu_us_per_event": {
            k: round(v / events * 1e6, 1) if events else None for k, v in infra_cpu.items()
        },
        "machine": {
            "cores": round(cores, 2),
            "busy_cores": round(busy_cores, 2),
            "other_busy_cores": round(max(busy_cores - ours / window, 0.0), 2) if window else None,
        },
        "series": series[:: max(1, len(series) // 200)],
    }
    log(
        f"{label}: {result['events_per_s']:,.0f} events/s over {events:,} events in "
        f"{window:.1f}s; {result['cpu_us_per_event']} µs CPU/event; "
        f"peak RSS {result['peak_rss_mib']} MiB; other load on the machine "
        f"{result['machine']['other_busy_cores']} cores"
    )
    return result


# -- the variants -------------------------------------------------------------------------------


def run_bare(
    ctx: Context, *, partitions: int = 4, label: str = "bare", outputs_per_event: float = 1.0
) -> dict[str, Any]:
    """(a) The kafka-python consume → produce loop with no work; ``outputs_per_event`` below
    1 produces as few records as the scorer does (its cost per event falls with them)."""
    stack = ctx.stack
    topic = ctx.input_topic(partitions)
    out = stack.create_topic(stack.name(f"{label}-out"), 4)
    group = stack.group(label)
    argv = [sys.executable, "-m", "bench.workers", "bare", "--bootstrap", BOOTSTRAP]
    argv += ["--input", topic, "--output", out, "--group", group, "--batch", "2000"]
    argv += ["--outputs-per-event", f"{outputs_per_event:.6f}"]
    quiet = wait_quiet()
    log(
        f"{label}: kafka-python consume → produce → commit, no work, "
        f"{outputs_per_event:.3f} outputs per event"
    )
    proc = stack.start(argv, stack.scorer_env({}), label)
    try:
        result = watch(stack, [proc], group, topic, len(ctx.data), timeout_s=300, label=label)
    finally:
        stack.stop(proc)
    result["other_load_before"] = quiet
    result["outputs_per_event"] = outputs_per_event
    return result


def outputs_per_event(stack: Stack, topics: list[str], events: int) -> float:
    """Records a scorer run wrote to its output topics, per input event."""
    written = sum(sum(stack.end_offsets(topic).values()) for topic in topics)
    return written / events if events else 0.0


def _output_names(names: dict[str, str]) -> list[str]:
    return [v for k, v in names.items() if k.endswith("_topic") and k != "input_topic"]


def _scorer_names(stack: Stack, label: str, topic: str) -> tuple[dict[str, str], str]:
    group = stack.group(label)
    stack.groups.append(f"{group}-trainer")  # the trainers' group (deleted with the run's)
    prefix = stack.prefix(label)
    names = {
        "input_topic": topic,
        **stack.output_topics(label),
        "kafka_group_id": group,
        "redis_key_prefix": prefix,
    }
    return names, prefix


def run_scorer(
    ctx: Context,
    *,
    label: str,
    partitions: int = 4,
    processes: int = 1,
    naive: bool = False,
    timeout_s: float = 600.0,
    measure_redis: bool = False,
    lineage: bool = False,
    redis_url: str = REDIS_URL,
    infra_pids: dict[str, int] | None = None,
    alongside: Sequence[Alongside] = (),
    topic: str | None = None,
    settings: dict[str, object] | None = None,
    quiet_wait_s: float | None = None,
) -> dict[str, Any]:
    """(b) ``streamscore run`` (or (c), the naive variant) over the whole data set, its Redis
    round trips counted (``bench.workers counted``), on the Redis (or cluster) of
    ``redis_url``; with ``lineage``, also the published model lineage once the trainer has
    learnt everything.

    By default the data set is all in ``topic`` before the processes start (a backlog);
    ``alongside`` are started once every process owns partitions and run until the group
    has committed everything (``PacedFeed`` in ``bench/lineage_quality.py`` produces the data
    set into ``topic`` meanwhile). ``settings``: more ``STREAMSCORE_*`` settings."""
    stack = ctx.stack
    topic = topic or ctx.input_topic(partitions)
    names, prefix = _scorer_names(stack, label, topic)
    env = stack.scorer_env(names, redis_url=redis_url, **(settings or {}))
    stats_file = stack.log_dir / f"{label}-stats.json"
    env["BENCH_STATS_FILE"] = str(stats_file)
    argv = [sys.executable, "-m", "bench.workers", "naive" if naive else "counted"]
    what = "naive scorer (user-by-user Redis)" if naive else "streamscore run"
    quiet = wait_quiet(quiet_wait_s)
    log(f"{label}: {processes} × {what} on {partitions} partitions")
    procs = [stack.start(argv, env, f"{label}-{i}") for i in range(processes)]
    try:
        if alongside:
            _wait_assigned(stack, procs, names["kafka_group_id"], label)
            for job in alongside:
                job.start(names)
        result = watch(
            stack, procs, names["kafka_group_id"], topic, len(ctx.data),
            timeout_s=timeout_s, label=label, infra_pids=infra_pids,
        )  # fmt: skip
        for job in alongside:
            result[job.key] = job.finish()
        if lineage:
            result["lineage"] = lineage_figures(stack, names, label)
    finally:
        for job in alongside:
            job.close()
        codes = [stack.stop(p) for p in procs]
    result["exit_codes"] = codes
    result["other_load_before"] = quiet
    result["partitions"] = partitions
    result["redis_url"] = redis_url
    if stats_file.exists():  # one process: its counts cover the whole run
        stats = orjson.loads(stats_file.read_bytes())
        trips = sum(stats["round_trips"].values())
        result["redis_round_trips"] = stats["round_trips"]
        result["redis_round_trips_per_event"] = round(trips / result["events_committed"], 4)
        log(f"{label}: {trips:,} Redis round trips, {trips / result['events_committed']:.4f} "
            f"per event: {stats['round_trips']}")  # fmt: skip
    if measure_redis:
        result["redis"] = redis_memory(stack, prefix, redis_url)
    if not naive:
        result["outputs_per_event"] = round(
            outputs_per_event(stack, _output_names(names), result["events_committed"]), 4
        )
    return result


class Alongside(Protocol):
    """What a scorer run does while its processes work: feed them, watch what they publish."""

    key: str  # where ``finish``'s figures go in the run's result

    def start(self, names: dict[str, str]) -> None:
        """Begin (``names``: the run's topics, group and key prefix)."""
        ...

    def finish(self) -> dict[str, Any]:
        """The group has committed everything: stop, and say what happened."""
        ...

    def close(self) -> None:
        """Stop, also when the run failed (idempotent)."""
        ...


def _wait_assigned(
    stack: Stack, procs: Sequence[subprocess.Popen[bytes]], group: str, label: str
) -> None:
    """Until every process owns input partitions (the group has settled)."""
    deadline = time.monotonic() + 120
    while stack.members_with_partitions(group) < len(procs):
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            raise RuntimeError(f"{label}: processes did not join the group; see {stack.log_dir}")
        time.sleep(0.1)


def run_on_cluster(ctx: Context, *, label: str = "full-cluster") -> dict[str, Any]:
    """(b) again, on a 3-master Redis Cluster (``bench/cluster.py`` says which)."""
    from bench.cluster import BenchCluster

    cluster = BenchCluster(ctx.stack.log_dir)
    try:
        return run_scorer(
            ctx, label=label, measure_redis=True, redis_url=cluster.url,
            infra_pids=cluster.pids(),
        )  # fmt: skip
    finally:
        deleted = cluster.cleanup(p for p in ctx.stack.prefixes if label in p)
        log(f"{label}: deleted {deleted:,} keys from the Redis Cluster")


def redis_memory(stack: Stack, prefix: str, redis_url: str = REDIS_URL) -> dict[str, Any]:
    """Bytes per user: ``RedisStateStore.bytes_per_user``, and on one Redis every key of the
    prefix (a cluster's keys are spread over its masters: only the sample there)."""
    from streamscore.adapters.redis_cluster import is_cluster_url
    from streamscore.adapters.redis_store import RedisStateStore
    from streamscore.config import Settings

    store = RedisStateStore.from_settings(Settings(redis_url=redis_url, redis_key_prefix=prefix))
    try:
        per_user = store.bytes_per_user(sample=2000)
    finally:
        store.close()
    out: dict[str, Any] = {"bytes_per_user": round(per_user, 1)}
    if is_cluster_url(redis_url):
        log(f"redis cluster: {per_user:.0f} bytes per user key (MEMORY USAGE of 2,000)")
        return out
    out.update({k: round(v, 1) for k, v in stack.redis_prefix_bytes(prefix).items()})
    log(
        f"redis: {out['bytes_per_user']:.0f} bytes per user key (MEMORY USAGE, "
        f"{out['users']:,} users); {out['all_keys_bytes_per_user']:.0f} bytes per user "
        f"with due queues and watermarks; per user key (all {out['users']:,}) mean "
        f"{out['user_key_bytes_mean']:.0f}, p50 {out['user_key_bytes_p50']:.0f}, "
        f"p90 {out['user_key_bytes_p90']:.0f}, max {out['user_key_bytes_max']:.0f} bytes"
    )
    return out


def profile_scorer(ctx: Context, *, partitions: int = 4, label: str = "profile") -> dict[str, Any]:
    """``streamscore run`` over the data set again, sampled by py-spy (all threads, on-CPU)."""
    stack = ctx.stack
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        log("py-spy is not installed (.venv/bin/pip install py-spy): no profile of the scorer")
        return {"error": "py-spy not installed"}
    topic = ctx.input_topic(partitions)
    names, _ = _scorer_names(stack, label, topic)
    wait_quiet()
    log(f"{label}: streamscore run under py-spy (200 Hz, every thread, on-CPU samples)")
    proc = stack.start(stack.scorer_argv(), stack.scorer_env(names), label)
    raw = stack.log_dir / f"{label}.pyspy.txt"
    time.sleep(0.3)
    spy_argv = [pyspy, "record", "-p", str(proc.pid), "-r", "200", "-f", "raw", "-F"]
    spy = subprocess.Popen(
        [*spy_argv, "--full-filenames", "--nonblocking", "-o", str(raw)],
        stdout=subprocess.DEVNULL,
        stderr=(stack.log_dir / f"{label}.pyspy.log").open("ab"),
    )
    try:
        result = watch(
            stack, [proc], names["kafka_group_id"], topic, len(ctx.data), timeout_s=600,
            label=label,
        )  # fmt: skip
    finally:
        stack.stop(proc)
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.terminate()
            spy.wait()
    if not raw.exists():
        return {"error": f"py-spy wrote nothing; see {stack.log_dir / (label + '.pyspy.log')}"}
    summary = summarize(from_pyspy_raw(raw))
    summary["events_per_s_under_profiler"] = result["events_per_s"]
    print(render(summary, ("self", "src", "inclusive")))
    return summary


# -- latency at a fixed offered rate -------------------------------------------------------------


def _iso_ms(text: str) -> int:
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def run_latency(
    ctx: Context,
    *,
    kind: str,
    rate: int,
    seconds: float,
    warmup: int = 20_000,
    partitions: int = 4,
    settings: dict[str, str] | None = None,
    run: int = 0,
) -> dict[str, Any]:
    """Event → output latency at ``rate`` events/s offered, Kafka timestamps on both sides.

    The warm-up (processed flat out before the paced load) brings the scorer to steady
    state: its users known, its models learning. With only 2,000 events, the first two
    seconds of the paced load ran at p99 110-145 ms and lifted the run's p99 from ~88 ms
    to 99-133 ms; that start-up transient is a figure of its own (``--latency-warmup``).

    The input's timestamp is the producer's (CreateTime, taken at ``send``); the output
    topics are created with ``message.timestamp.type=LogAppendTime``, so an output's
    timestamp is when the broker appended it: the latency covers producer batching, the
    consumer's fetch, the batch's work and the scorer's produce. Every input event is
    matched to the first ``trigger: event`` score of its user whose ``as_of`` (the event
    time of the user's last event in that batch) is at or after the event's own time;
    for the bare loop, an output is the input's bytes, so it matches itself.

    CPU per event is the process's CPU from the start of the paced load until all of it is
    committed, over the paced events; ``settings`` are extra scorer settings (an A/B run),
    ``run`` numbers repeated runs.
    """
    stack = ctx.stack
    label = f"latency-{kind}" + (f"-{run}" if run else "")  # its own topics and group
    need = warmup + int(rate * seconds)
    if need > len(ctx.data):
        raise ValueError(f"latency needs {need:,} events; the data set has {len(ctx.data):,}")
    topic = stack.create_topic(stack.name(f"{label}-in"), partitions)
    if kind == "bare":
        group = stack.group(label)
        out_topic = stack.create_topic(stack.name(f"{label}-out"), 4, log_append_time=True)
        argv = [sys.executable, "-m", "bench.workers", "bare", "--bootstrap", BOOTSTRAP]
        argv += ["--input", topic, "--output", out_topic, "--group", group, "--batch", "2000"]
        proc = stack.start(argv, stack.scorer_env({}), label)
    else:
        names, _ = _scorer_names(stack, label, topic)
        group, out_topic = names["kafka_group_id"], names["scores_topic"]
        env = stack.scorer_env(names, **(settings or {}))
        proc = stack.start(stack.scorer_argv(), env, label)
    quiet = wait_quiet()
    log(f"{label}: warm-up with {warmup:,} events, then {rate:,} events/s for {seconds:g}s")
    try:
        stack.produce(topic, ctx.data[:warmup], label=f"{label} warm-up")
        deadline = time.monotonic() + 120
        while stack.committed(group, topic) < warmup:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label}: the warm-up was not processed; see {stack.log_dir}")
            time.sleep(0.1)
        start_offsets = stack.end_offsets(topic)
        paced = ctx.data[warmup:need]
        cpu0, busy0, t0 = cpu_seconds(proc.pid), machine_jiffies()[0], time.monotonic()
        offered_s = produce_paced(topic, paced, rate)
        cpu1 = cpu_seconds(proc.pid)
        deadline = time.monotonic() + max(60.0, seconds * 3)
        while stack.committed(group, topic) < need and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{label}: process exited; see {stack.log_dir}")
            time.sleep(0.02)
        drained = stack.committed(group, topic)
        cpu2, busy2, t2 = cpu_seconds(proc.pid), machine_jiffies()[0], time.monotonic()
    finally:
        stack.stop(proc)
    inputs = stack.read_topic(topic, start_offsets)
    outputs = stack.read_topic(out_topic)
    pairs: list[tuple[int, int]] = []  # (input timestamp, latency)
    if kind == "bare":
        sent = {m.value: m.timestamp for m in outputs}
        pairs = [(m.timestamp, sent[m.value] - m.timestamp) for m in inputs if m.value in sent]
    else:
        by_user: dict[bytes, list[tuple[int, int]]] = {}
        for m in outputs:
            value = orjson.loads(m.value)
            if value.get("trigger") == "event":
                by_user.setdefault(m.key, []).append((_iso_ms(value["as_of"]), m.timestamp))
        for scores in by_user.values():
            scores.sort()
        for m in inputs:
            scores = by_user.get(m.key)
            if not scores:
                continue
            ts = orjson.loads(m.value)["ts"]
            i = bisect.bisect_left(scores, (ts, -1))
            if i < len(scores):
                pairs.append((m.timestamp, scores[i][1] - m.timestamp))
    lat = sorted(latency for _, latency in pairs)
    result = {
        "kind": kind,
        "offered_rate": rate,
        "achieved_offered_rate": round(len(paced) / offered_s, 1),
        "events": len(paced),
        "matched": len(lat),
        "all_committed": drained >= need,
        "scorer_cpu_cores_at_rate": round((cpu1 - cpu0) / offered_s, 2),
        "cpu_us_per_event": round((cpu2 - cpu0) / len(paced) * 1e6, 1),
        # Cores the rest of the machine kept busy meanwhile (this benchmark's producer, the
        # broker and Redis included).
        "other_busy_cores": round(max((busy2 - busy0) / 100 - (cpu2 - cpu0), 0) / (t2 - t0), 2),
        "settings": settings or {},
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else None,
        "mean_ms": round(sum(lat) / len(lat), 1) if lat else None,
        "other_load_before": quiet,
        "timeline": _timeline(pairs),
    }
    log(
        f"{label}: p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, p99 "
        f"{result['p99_ms']} ms, max {result['max_ms']} ms ({len(lat):,}/{len(paced):,} "
        f"matched; {result['achieved_offered_rate']:,.0f}/s offered; process used "
        f"{result['scorer_cpu_cores_at_rate']} cores, {result['cpu_us_per_event']} µs CPU/event; "
        f"{result['other_busy_cores']} cores busy elsewhere)"
    )
    return result


def _timeline(pairs: Sequence[tuple[int, int]], step_s: float = 1.0) -> list[dict[str, Any]]:
    """Latency percentiles per second of the paced load (is it steady, or does it build up?)."""
    if not pairs:
        return []
    start = min(t for t, _ in pairs)
    buckets: dict[int, list[int]] = {}
    for t, latency in pairs:
        buckets.setdefault(int((t - start) / 1000 / step_s), []).append(latency)
    out = []
    for k in sorted(buckets):
        values = sorted(buckets[k])
        out.append(
            {"s": k * step_s, "n": len(values), "p50": percentile(values, 50),
             "p99": percentile(values, 99)}
        )  # fmt: skip
    return out


def produce_paced(topic: str, records: Sequence[tuple[bytes, bytes]], rate: int) -> float:
    """Send at ``rate`` records/s in 5 ms steps; returns the seconds it took."""
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=5)
    step = max(1, rate // 200)
    started = time.perf_counter()
    try:
        for i in range(0, len(records), step):
            ahead = started + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            for key, value in records[i : i + step]:
                producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()
    return time.perf_counter() - started


# -- the anatomy of a batch at a fixed rate -------------------------------------------------------


class _GcPauses:
    """A ``gc.callbacks`` hook adding up the collector's pauses since ``taken_s`` was reset."""

    def __init__(self) -> None:
        self.taken_s = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.taken_s += time.perf_counter() - self._started


def run_anatomy(
    ctx: Context, *, rate: int, seconds: float, warmup: int = 20_000, partitions: int = 4
) -> dict[str, Any]:
    """The service's pipeline in this process, fed at ``rate`` events/s by a producer process.

    ``BatchStats`` of every batch tell where the time of a batch goes at that rate (poll
    includes waiting for records) and how old a batch's records are when it is committed.
    It is the same ``Pipeline`` that ``build_service`` wires, without the metrics and
    checkpoints of ``run_service``: a diagnostic for the latency figures, not one of them.
    """
    from streamscore.config import load_settings
    from streamscore.gc_freeze import freeze_startup_heap, thaw_heap
    from streamscore.service import build_service

    stack = ctx.stack
    label = "anatomy"
    count = int(rate * seconds)
    topic = stack.create_topic(stack.name(f"{label}-in"), partitions)
    names, _ = _scorer_names(stack, label, topic)
    # No trainer thread: a diagnostic of the scoring loop (it scores with fresh models).
    settings = load_settings(
        kafka_bootstrap_servers=BOOTSTRAP, redis_url=REDIS_URL, metrics_port=0,
        checkpoint_key=CHECKPOINT_KEY, run_trainer=False, **names,
    )  # fmt: skip
    pipeline = build_service(settings).pipeline
    source = pipeline.source
    freeze_startup_heap()  # as run_service does
    spec = ctx.spec
    argv = [sys.executable, "-m", "bench.workers", "produce", "--topic", topic]
    argv += ["--rate", str(rate), "--skip", str(warmup), "--count", str(count)]
    argv += ["--users", str(spec.users), "--days", str(spec.days), "--seed", str(spec.seed)]
    argv += ["--events", str(spec.events)]
    producer = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    quiet = wait_quiet()
    log(f"{label}: the pipeline in-process at {rate:,} events/s for {seconds:g}s")
    batches: list[dict[str, Any]] = []
    gc_pause = _GcPauses()
    gc.callbacks.append(gc_pause)
    try:
        assert producer.stdout is not None and producer.stdin is not None
        producer.stdout.readline()  # data set ready
        stack.produce(topic, ctx.data[:warmup], label=f"{label} warm-up")
        done = 0
        while done < warmup:
            done += pipeline.run_once().records
        producer.stdin.write(b"go\n")
        producer.stdin.flush()
        done = 0
        while done < count:
            gc_pause.taken_s = 0.0
            cpu0 = time.thread_time()
            stats = pipeline.run_once()
            cpu_ms = (time.thread_time() - cpu0) * 1000
            now = time.time() * 1000
            if not stats.records:
                if producer.poll() is not None and producer.returncode != 0:
                    raise RuntimeError(f"{label}: the producer failed")
                continue
            done += stats.records
            batches.append(
                {
                    "records": stats.records,
                    "users": stats.users,
                    "due_users": stats.due_users,
                    "ms": {
                        **{k: v * 1000 for k, v in stats.seconds.items()},
                        "cpu": cpu_ms,
                        "gc": gc_pause.taken_s * 1000,
                    },
                    "oldest_age_ms": now - min(stats.input_timestamps_ms),
                    "newest_age_ms": now - max(stats.input_timestamps_ms),
                }
            )
        producer.wait(timeout=60)
    finally:
        gc.callbacks.remove(gc_pause)
        thaw_heap()
        if producer.poll() is None:
            producer.kill()
            producer.wait()
        pipeline.sink.close()
        source.close()
        pipeline.store.close()
    steady = batches[len(batches) // 10 :] or batches  # skip the ramp-up
    n = len(steady)
    # cpu: this thread's CPU time in the batch (total − cpu is waiting: for I/O, or for a
    # core while other processes run); gc: the cyclic collector's pauses inside the batch.
    stages = ("poll_decode", "load", "score", "produce", "save", "commit", "total", "cpu", "gc")
    oldest = sorted(b["oldest_age_ms"] for b in steady)
    slow = sorted(steady, key=lambda b: b["ms"]["total"])[-max(1, n // 50) :]  # slowest 2%
    result = {
        "rate": rate,
        "other_load_before": quiet,
        "batches": n,
        "records_per_batch": round(sum(b["records"] for b in steady) / n, 1),
        "users_per_batch": round(sum(b["users"] for b in steady) / n, 1),
        "due_users_per_batch": round(sum(b["due_users"] for b in steady) / n, 1),
        "ms_per_batch": {s: round(sum(b["ms"][s] for b in steady) / n, 2) for s in stages},
        "slowest_2pct_batches": {
            "batches": len(slow),
            "records_per_batch": round(sum(b["records"] for b in slow) / len(slow), 1),
            "due_users_per_batch": round(sum(b["due_users"] for b in slow) / len(slow), 1),
            "ms_per_batch": {
                s: round(sum(b["ms"][s] for b in slow) / len(slow), 2) for s in stages
            },
            "max_ms": {s: round(max(b["ms"][s] for b in steady), 1) for s in stages},
        },
        "oldest_record_age_at_commit_ms": {
            "p50": round(percentile(oldest, 50), 1),
            "p99": round(percentile(oldest, 99), 1),
        },
    }
    ms = result["ms_per_batch"]
    log(
        f"{label}: {n} batches of {result['records_per_batch']:.0f} records; per batch "
        + ", ".join(f"{s} {ms[s]:.1f} ms" for s in stages)
        + f"; oldest record at commit p50 {result['oldest_record_age_at_commit_ms']['p50']} ms, "
        f"p99 {result['oldest_record_age_at_commit_ms']['p99']} ms"
    )
    slowest = result["slowest_2pct_batches"]
    sl = slowest["ms_per_batch"]
    log(
        f"{label}: the slowest 2% of batches ({slowest['records_per_batch']:.0f} records, "
        f"{slowest['due_users_per_batch']:.0f} due users): "
        + ", ".join(f"{s} {sl[s]:.1f} ms" for s in stages)
    )
    return result


# -- scaling ------------------------------------------------------------------------------------


def lineage_figures(
    stack: Stack, names: dict[str, str], label: str, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Once the trainer has published a version reflecting all of training-examples: that
    version's labels learnt and prequential quality (the one lineage of every process)."""
    from streamscore.adapters.redis_store import RedisStateStore
    from streamscore.config import load_settings
    from streamscore.model_checkpoints import LineageStore

    settings = load_settings(
        redis_url=REDIS_URL, redis_key_prefix=names["redis_key_prefix"],
        checkpoint_key=CHECKPOINT_KEY, metrics_port=0,
    )  # fmt: skip
    store = RedisStateStore.from_settings(settings)
    try:
        published = LineageStore(settings, store)
        t0 = time.monotonic()
        while True:
            end = stack.end_offsets(names["training_topic"]).get(0, 0)
            head = published.head()
            if head is not None and head.offset >= end:
                break
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"{label}: the trainer did not catch up in {timeout_s:.0f}s")
            time.sleep(0.2)
        # Read as the next trainer would resume it: its whole progressive validation.
        restored = published.restore()
    finally:
        store.close()
    assert restored is not None
    summary = restored.trainer.summary()
    churn = restored.trainer.quality.churn.report()
    out = {
        "version": restored.version,
        "training_records": end,
        "caught_up_after_s": round(time.monotonic() - t0, 2),
        "labels_learnt": summary["labels_learnt"],
        "labels_validated": summary["labels_validated"],
        "churn_auc": summary["churn_auc"],
        "churn_log_loss": churn["log_loss"],
        "churn_base_rate": churn["base_rate"],
        "churn_rolling_auc": summary["churn_rolling_auc"],
        "churn_rolling_log_loss": summary["churn_rolling_log_loss"],
        "value_rolling_mae": summary["value_rolling_mae"],
    }
    log(f"{label}: lineage version {out['version']} learnt {out['labels_learnt']} of "
        f"{end:,} training records; churn AUC {out['churn_auc']}, log loss "
        f"{out['churn_log_loss']} (all labels)")  # fmt: skip
    return out


def run_scaling(
    ctx: Context, partitions: Sequence[int] = (2, 4), processes: Sequence[int] = (1, 2, 4)
) -> dict[str, Any]:
    """1, 2 and 4 ``streamscore run`` processes in one group (never more than partitions),
    on 2- and 4-partition topics: events/s, and the quality of the one lineage they train."""
    out: dict[str, Any] = {}
    for p in partitions:
        runs = {}
        for n in (n for n in processes if n <= p):
            runs[n] = run_scorer(
                ctx, label=f"scale-p{p}-n{n}", partitions=p, processes=n, lineage=True
            )
        one, two = runs[1]["events_per_s"], runs[2]["events_per_s"]
        out[f"p{p}"] = {
            "partitions": p,
            "partition_shares": ctx.partition_shares(p),
            "one": runs[1],
            "two": runs[2],
            "runs": {str(n): run for n, run in runs.items()},
            "speedup": round(two / one, 2) if one else None,
            "speedups": {str(n): round(r["events_per_s"] / one, 2) if one else None
                         for n, r in runs.items()},
        }  # fmt: skip
        log(f"scaling on {p} partitions: " + ", ".join(
            f"{n} × {r['events_per_s']:,.0f}/s (churn AUC {r['lineage']['churn_auc']:.4f})"
            for n, r in runs.items()))  # fmt: skip
    return out


def same_prefix_rate(series: Sequence[tuple[float, int]], upto: int) -> float | None:
    """Rate of a run over its first ``upto`` committed events (from its committed series)."""
    if not series:
        return None
    t0, n0 = series[0]
    for t, n in series:
        if n >= upto and t > t0:
            return (n - n0) / (t - t0)
    return None


def round_trip_cost(full: dict[str, Any], naive: dict[str, Any]) -> dict[str, Any]:
    """Wall time one extra Redis round trip costs, and what 2 per event would sustain.

    Derived, not measured: (naive's seconds per event − full's) ÷ the extra round trips per
    event. A consumer that loads and saves state per event makes 2 round trips per event.
    """
    trips = naive.get("redis_round_trips_per_event")
    if not trips or not full["events_per_s"] or not naive["events_per_s"]:
        return {}
    extra = trips  # the full scorer makes 3 round trips per batch: ~0.002 per event
    per_trip_us = (1 / naive["events_per_s"] - 1 / full["events_per_s"]) * 1e6 / extra
    at_two = 1 / (1 / full["events_per_s"] + 2 * per_trip_us / 1e6)
    log(
        f"naive: one extra Redis round trip costs {per_trip_us:.0f} µs of wall time; at 2 round "
        f"trips per event (load + save per event) a process would sustain ≈ {at_two:,.0f}/s"
    )
    return {
        "us_per_extra_round_trip": round(per_trip_us, 1),
        "derived_events_per_s_at_2_round_trips_per_event": round(at_two, 1),
    }


def dataset_facts(ctx: Context) -> dict[str, Any]:
    return {
        **asdict(ctx.spec),
        "records": len(ctx.data),
        "mean_value_bytes": round(sum(len(v) for _, v in ctx.data) / len(ctx.data), 1),
        "distinct_users": len({k for k, _ in ctx.data}),
        "events_per_user_per_2000_batch": round(locality(ctx.data, 2000), 2),
        "events_per_user_per_200_batch": round(locality(ctx.data, 200), 2),
    }
