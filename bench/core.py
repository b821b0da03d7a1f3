"""``python -m bench core``: the pipeline without Kafka or Redis.

The same ``Pipeline`` as ``streamscore run`` over the same events, with the in-memory state
store (which keeps the same serialized bytes as Redis, so decode/encode of states is
included) and a sink that serializes every output as ``KafkaSink`` does (``orjson.dumps``)
and drops it. Kafka records are pre-built ``SourceRecord``s split over 4 partitions with
Kafka's partitioner, so watermarks and due queues behave as in the service.

Per-stage times come from ``BatchStats.seconds``; then the same run again under pyinstrument.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import orjson

from bench.common import DatasetSpec, kafka_partition, locality, log
from bench.profiles import from_pyinstrument, render, summarize
from streamscore.adapters.memory import MemoryStateStore
from streamscore.config import load_settings
from streamscore.core.values import Output
from streamscore.ports import CommitStatus, RebalanceHook, SourceHealth, SourceRecord
from streamscore.runtime import Pipeline
from streamscore.wiring import build_pipeline, in_process_scorer

STAGES = ("poll_decode", "load", "score", "produce", "save", "commit", "total")
PARTITIONS = 4


class RecordsSource:
    """A finite source over pre-built records, in producer order, with no bookkeeping.

    Not the memory twin (``ListSource``): that one keeps what Kafka keeps (positions, the
    group's commits, records until committed) and hands out partition after partition, as
    Kafka's fetcher does. Here a batch interleaves the partitions in the order the records
    were produced, the workload every earlier ``bench core`` figure measured, and the source
    costs nothing, so the figures are the pipeline's.
    """

    def __init__(self, records: Sequence[SourceRecord], topic: str) -> None:
        self.topic = topic
        self._records = records
        self._pos = 0
        self.owned = set(range(PARTITIONS))

    def poll(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        batch = list(self._records[self._pos : self._pos + max_records])
        self._pos += len(batch)
        return batch

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        return None

    def commit_status(self) -> CommitStatus:
        return CommitStatus(pending={}, failed=0)

    def lag(self) -> dict[int, int]:
        return {}

    def health(self) -> SourceHealth:
        return SourceHealth(connected=True, last_poll_ms=None)

    def exhausted(self) -> bool:
        return self._pos >= len(self._records)

    def caught_up(self, partitions: Collection[int]) -> set[int]:
        return set(partitions) if self.exhausted() else set()

    def on_rebalance(self, assigned: RebalanceHook, revoked: RebalanceHook) -> None:
        assigned(set(self.owned))

    def close(self) -> None:
        return None


class SerializingSink:
    """Encodes every output like ``KafkaSink.send`` and drops the bytes."""

    def __init__(self) -> None:
        self.records = 0
        self.bytes = 0

    def send(self, outputs: Iterable[Output]) -> None:
        for o in outputs:
            key = o.key.encode() if o.key else None
            value = orjson.dumps(o.value)
            self.records += 1
            self.bytes += len(value) + (len(key) if key else 0)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


def source_records(data: Sequence[tuple[bytes, bytes]], topic: str) -> list[SourceRecord]:
    """The records as Kafka would hand them over: per-partition offsets, producer order kept."""
    offsets = [0] * PARTITIONS
    out = []
    for key, value in data:
        p = kafka_partition(key, PARTITIONS)
        out.append(SourceRecord(topic, p, offsets[p], value, None))
        offsets[p] += 1
    return out


def run_core(
    records: Sequence[SourceRecord],
    batch: int,
    profiler: Any = None,
    keep: list[Pipeline] | None = None,
) -> dict[str, Any]:
    """One pass over the records; per-stage microseconds per event."""
    settings = load_settings(batch_max_records=batch, metrics_port=0)
    sink = SerializingSink()
    scorer = in_process_scorer(settings.scoring())[0]
    source = RecordsSource(records, "bench")
    pipeline = build_pipeline(settings, source, MemoryStateStore(), sink, scorer)
    totals = dict.fromkeys(STAGES, 0.0)
    events = users = due_users = batches = 0
    if profiler is not None:
        profiler.start()
    cpu_started = time.process_time()
    started = time.perf_counter()
    while not pipeline.source.exhausted():
        stats = pipeline.run_once()
        batches += 1
        events += stats.events
        users += stats.users
        due_users += stats.due_users
        for stage, seconds in stats.seconds.items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    if profiler is not None:
        profiler.stop()
    n = len(records)
    if keep is not None:
        keep.append(pipeline)
    counters = pipeline.scorer.counters
    models = pipeline.scorer.lineage.models
    return {
        "batch_max_records": batch,
        "records": n,
        "events": events,
        "seconds": round(wall, 3),
        "events_per_s": round(n / wall, 1),
        "cpu_us_per_event": round(cpu / n * 1e6, 2),
        "events_per_cpu_s": round(n / cpu, 1),
        "us_per_event": {k: round(v / n * 1e6, 2) for k, v in totals.items()},
        "batches": batches,
        "users_per_batch": round(users / batches, 1),
        "due_users_per_batch": round(due_users / batches, 1),
        "outputs": sink.records,
        "output_bytes_per_event": round(sink.bytes / n, 1),
        "scorer_counters": asdict(counters),
        "labels_learnt": {"churn": models.churn_learnt, "value": models.value_learnt},
        # The work is scores (one per event batch of a user and one per silence rescored),
        # snapshots and labels, not events: the cost per score is what a sparse user base,
        # with many silent users per event, pays.
        "scores_per_event": round(counters.scores / n, 3),
        "cpu_us_per_score": round(cpu / counters.scores * 1e6, 2) if counters.scores else None,
    }


def _per_call(fn: Callable[[Any], object], items: Sequence[Any]) -> float:
    """CPU microseconds per call of ``fn`` over ``items`` (best of 3 passes)."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - started)
    return round(best / len(items) * 1e6, 2)


def micro(records: Sequence[SourceRecord], pipeline: Pipeline) -> dict[str, float]:
    """What the hot path's pieces cost one at a time, on real events and states (µs/call).

    ``pipeline`` has run over the data set, so its states have history and its models have
    learnt (predict goes through river, not the warm-up heuristic).
    """
    from streamscore.core import outputs
    from streamscore.core.events import EventLimits, decode_event
    from streamscore.core.features import derive
    from streamscore.core.inputs import model_inputs
    from streamscore.core.records import record_id
    from streamscore.core.state import UserState
    from streamscore.core.timeutil import DAY_MS, iso

    store = pipeline.store
    assert isinstance(store, MemoryStateStore)
    scorer = pipeline.scorer
    raws = [r.value for r in records[:20_000]]
    limits = EventLimits()
    now = int(time.time() * 1000)
    blobs = list(store.states.items())[:3000]
    states = [UserState.from_bytes(u, b) for u, b in blobs]
    times = [s.features.last_seen_ms + DAY_MS for s in states]
    purchase_activity = scorer.config.purchase_activity
    inputs = [
        model_inputs(s.features, t, purchase_activity) for s, t in zip(states, times, strict=True)
    ]
    evals = [(s, scorer.evaluate(s, t), t) for s, t in zip(states, times, strict=True)]
    version = scorer.lineage.models.version
    scored = [
        outputs.score_record(
            scorer.config, s.user_id, ev, t, now, trigger="event", key="k", model_version=version
        )
        for s, ev, t in evals
    ]
    out = {
        "decode_event (orjson + pydantic + checks)": _per_call(
            lambda raw: decode_event(raw, now_ms=now, limits=limits), raws
        ),
        "orjson.loads alone": _per_call(orjson.loads, raws),
        "UserState.from_bytes": _per_call(lambda ub: UserState.from_bytes(*ub), blobs),
        "UserState.to_bytes": _per_call(lambda s: s.to_bytes(), states),
        "derive (features as of t)": _per_call(
            lambda st: derive(st[0].features, st[1]), list(zip(states, times, strict=True))
        ),
        "Models.predict (BTYD baseline and both corrections)": _per_call(
            scorer.lineage.models.predict, inputs
        ),
        "Scorer.evaluate (derive + predict + segment)": _per_call(
            lambda st: scorer.evaluate(st[0], st[1]), list(zip(states, times, strict=True))
        ),
        "Scorer.due_ms": _per_call(scorer.due_ms, states),
        "iso (one timestamp)": _per_call(iso, times),
        "record_id (one output id)": _per_call(
            lambda s: record_id("score", s.user_id, "event", "k"), states
        ),
        "orjson.dumps (one score record)": _per_call(orjson.dumps, scored),
    }
    mean_snapshots = sum(len(s.snapshots) for s in states) / len(states)
    mean_bytes = sum(len(b) for _, b in blobs) / len(blobs)
    log(
        f"core: the hot path piece by piece (µs per call; states hold {mean_snapshots:.1f} "
        f"snapshots and {mean_bytes:.0f} bytes on average)"
    )
    for name, us in out.items():
        print(f"      {us:7.2f} µs  {name}")
    out["mean_snapshots_per_state"] = round(mean_snapshots, 2)
    out["mean_state_bytes"] = round(mean_bytes, 1)
    return out


def gc_what_if(records: Sequence[SourceRecord], batch: int) -> dict[str, Any]:
    """The same pass with a higher generation-0 threshold of the cyclic GC.

    A batch allocates thousands of short-lived objects (events, dicts, outputs) that all
    live until the batch ends; with the default threshold (700) they trigger collections,
    and survivors push older generations into full collections. A service can raise the
    threshold (and ``gc.freeze()`` what it built at start-up) in two lines.
    """
    before = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    try:
        result = run_core(records, batch)
    finally:
        gc.set_threshold(*before)
    log(
        f"core, what if gc.set_threshold(50_000, 20, 100): "
        f"{result['events_per_s']:,.0f} events/s, {result['cpu_us_per_event']:.1f} µs CPU/event"
    )
    return result


def _print_stages(result: dict[str, Any]) -> None:
    us = result["us_per_event"]
    total = us["total"] or 1.0
    log(
        f"core, batches of {result['batch_max_records']}: {result['events_per_s']:,.0f} events/s "
        f"({us['total']:.1f} µs/event wall, {result['cpu_us_per_event']:.1f} µs CPU/event; "
        f"{result['users_per_batch']:.0f} users + {result['due_users_per_batch']:.0f} due users "
        f"per batch; {result['scores_per_event']:.2f} scores per event, "
        f"{result['cpu_us_per_score']} µs CPU per score)"
    )
    for stage in STAGES[:-1]:
        print(f"      {stage:<12} {us[stage]:7.2f} µs/event  {us[stage] / total * 100:5.1f}%")


def core(
    spec: DatasetSpec,
    data: Sequence[tuple[bytes, bytes]],
    *,
    batches: Sequence[int] = (2000, 200),
    profile: bool = True,
    repeat: int = 2,
) -> dict[str, Any]:
    """Timed runs at each batch size (the least disturbed of ``repeat``), then a profiled run.

    Other processes on a 2-core machine slow the wall clock down, not the CPU time: each
    result keeps its CPU microseconds per event next to the wall-clock rate.
    """
    records = source_records(data, "bench")
    # The harness's own 150k records would otherwise be traversed by every full collection,
    # a cost the service does not have.
    gc.collect()
    gc.freeze()
    out: dict[str, Any] = {"dataset": asdict(spec) | {"records": len(records)}, "runs": []}
    run_core(records[: min(len(records), 20_000)], batches[0])  # warm caches and imports
    pipelines: list[Pipeline] = []
    for batch in batches:
        tries = [run_core(records, batch, keep=pipelines) for _ in range(repeat)]
        result = min(tries, key=lambda r: r["seconds"])
        result["repeats_events_per_s"] = [r["events_per_s"] for r in tries]
        result["events_per_user_per_batch"] = round(locality(data, batch), 2)
        _print_stages(result)
        out["runs"].append(result)
    out["gc_what_if"] = gc_what_if(records, batches[0])
    base = out["runs"][0]["cpu_us_per_event"]
    what_if = out["gc_what_if"]["cpu_us_per_event"]
    out["gc_what_if"]["cpu_saving"] = round(1 - what_if / base, 3)
    log(f"core: the GC threshold changes the CPU per event by {what_if / base - 1:+.0%}")
    out["micro_us"] = micro(records, pipelines[0])
    del pipelines
    gc.unfreeze()
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        log(f"core: profiling a pass with batches of {batches[0]} (pyinstrument)")
        profiled = run_core(records, batches[0], profiler)
        summary = summarize(from_pyinstrument(profiler.last_session))
        summary["events_per_s_under_profiler"] = profiled["events_per_s"]
        out["profile"] = summary
        print(render(summary, ("self", "src", "inclusive")))
    return out
