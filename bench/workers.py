"""Processes the benchmarks start: ``python -m bench.workers bare|naive``.

``bare`` is the client's limit: the same consumer and producer settings as streamscore's
``KafkaSource``/``KafkaSink``, polling the same batches, producing each record's bytes
unchanged to one output topic, flushing and committing per batch. No decoding, no state.

``counted`` is ``streamscore run`` unchanged but for a counter of Redis round trips (requests
written to a Redis socket: one per command, one per pipeline and node), by store call; the
counts go to ``BENCH_STATS_FILE`` at exit, with the process's own counters (events, due users
loaded, labels resolved, outputs by topic). The counter costs a Python call per round trip.
With ``BENCH_COUNT_SCORES=1`` it also counts scores by trigger (``event``: a user's own
events; ``silence``: a silent user rescored), for one more Python call per score.

``naive`` is ``streamscore run`` itself (the same ``run_service``, scorer and Kafka adapters)
with one change: its Redis state store goes user by user. Every user of a batch costs one
round trip to load and one to save, instead of one pipelined round trip for the whole batch;
the due-user query and the watermarks stay one round trip per batch, and offsets are still
committed once per batch. The number of round trips is written to ``BENCH_STATS_FILE`` at exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Collection, Mapping
from types import FrameType
from typing import Any

import orjson


def bare(args: argparse.Namespace) -> int:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
    from kafka.structs import OffsetAndMetadata

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    servers = args.bootstrap.split(",")
    consumer = KafkaConsumer(
        group_id=args.group,
        bootstrap_servers=servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=args.batch,
        fetch_max_bytes=16 * 1024 * 1024,
        partition_assignment_strategy=(CooperativeStickyAssignor,),
    )
    producer = KafkaProducer(
        bootstrap_servers=servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        batch_size=256 * 1024,
        max_in_flight_requests_per_connection=5,
    )
    consumer.subscribe([args.input])
    out = args.output
    records = 0
    # Outputs owed: each input adds ``outputs_per_event`` and a record is sent per whole one,
    # so the loop produces as many records per event as the scorer it is compared with.
    owed = 0.0
    ratio = args.outputs_per_event
    try:
        while not stop.is_set():
            batches = consumer.poll(timeout_ms=200, max_records=args.batch)
            if not batches:
                continue
            offsets = {}
            for tp, messages in batches.items():
                for m in messages:
                    owed += ratio
                    if owed >= 1.0:
                        owed -= 1.0
                        producer.send(out, key=m.key, value=m.value)
                offsets[TopicPartition(tp.topic, tp.partition)] = OffsetAndMetadata(
                    messages[-1].offset + 1, "", -1
                )
                records += len(messages)
            producer.flush()
            consumer.commit(offsets)
    finally:
        producer.close()
        consumer.close(autocommit=False)
    print(f"bare loop: {records} records", file=sys.stderr)
    return 0


class NaiveStore:
    """A ``RedisStateStore`` whose ``load`` and ``save`` go one user (one round trip) at a time."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.round_trips = {"load": 0, "save": 0, "due": 0, "watermarks": 0}
        self.users_loaded = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def load(self, user_ids: Collection[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for u in user_ids:
            out.update(self.inner.load([u]))
            self.round_trips["load"] += 1
        self.users_loaded += len(user_ids)
        return out

    def save(
        self,
        states: Mapping[str, bytes],
        due: Mapping[int, Mapping[str, int | None]],
        watermarks: Mapping[int, int],
    ) -> None:
        per_user: dict[str, dict[int, dict[str, int | None]]] = {}
        for partition, entries in due.items():
            for u, at in entries.items():
                per_user.setdefault(u, {}).setdefault(partition, {})[u] = at
        for u in dict.fromkeys([*states, *per_user]):
            blob = {u: states[u]} if u in states else {}
            self.inner.save(blob, per_user.get(u, {}), {})
            self.round_trips["save"] += 1
        if watermarks:
            self.inner.save({}, {}, watermarks)
            self.round_trips["watermarks"] += 1

    def due(self, up_to: Mapping[int, int], limit: int) -> dict[int, list[str]]:
        self.round_trips["due"] += 1
        return self.inner.due(up_to, limit)


def naive(args: argparse.Namespace) -> int:
    from streamscore import cli, service
    from streamscore.adapters.redis_store import RedisStateStore

    stores: list[NaiveStore] = []

    class NaiveRedis:
        @staticmethod
        def from_settings(settings: Any) -> NaiveStore:
            store = NaiveStore(RedisStateStore.from_settings(settings))
            stores.append(store)
            return store

    service.RedisStateStore = NaiveRedis  # type: ignore[assignment,misc]
    try:
        return cli.main(["run"])
    finally:
        path = os.environ.get("BENCH_STATS_FILE")
        if path and stores:
            s = stores[0]
            data = {"round_trips": s.round_trips, "users_loaded": s.users_loaded}
            with open(path, "wb") as fp:
                fp.write(orjson.dumps(data))


def counted(args: argparse.Namespace) -> int:
    """``streamscore run``, counting Redis round trips per store call."""
    from redis.connection import AbstractConnection

    from streamscore import cli
    from streamscore.adapters.redis_store import RedisStateStore

    trips: dict[str, int] = {}
    step = ["start"]  # the store call under way (the loop is one thread)
    send = AbstractConnection.send_packed_command

    def counting(conn: AbstractConnection, command: Any, check_health: bool = True) -> None:
        trips[step[0]] = trips.get(step[0], 0) + 1
        send(conn, command, check_health)

    def attributed(name: str) -> Any:
        method = getattr(RedisStateStore, name)

        def call(self: Any, *a: Any, **kw: Any) -> Any:
            outer, step[0] = step[0], name
            try:
                return method(self, *a, **kw)
            finally:
                step[0] = outer

        return call

    AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    for name in ("load", "save", "due", "watermarks", "get_blob", "put_blob"):
        setattr(RedisStateStore, name, attributed(name))
    scores: dict[str, int] = {}
    if os.environ.get("BENCH_COUNT_SCORES") == "1":
        _count_scores(scores)
    try:
        return cli.main(["run"])
    finally:
        path = os.environ.get("BENCH_STATS_FILE")
        if path:
            stats = {"round_trips": trips, "scores": scores, "metrics": _own_counters()}
            with open(path, "wb") as fp:
                fp.write(orjson.dumps(stats))


def _count_scores(by_trigger: dict[str, int]) -> None:
    """Count the scorer's scores by trigger, in ``by_trigger``."""
    from streamscore.core.scorer import Scorer

    score = Scorer._score

    def counting(self: Any, *a: Any, trigger: str, **kw: Any) -> Any:
        by_trigger[trigger] = by_trigger.get(trigger, 0) + 1
        return score(self, *a, trigger=trigger, **kw)

    Scorer._score = counting  # type: ignore[method-assign]


def _own_counters() -> dict[str, float]:
    """This process's streamscore counters (``name{label=value}``: total)."""
    from streamscore.metrics import REGISTRY

    out: dict[str, float] = {}
    for family in REGISTRY.collect():
        if family.type != "counter" or family.name == "streamscore_segment_changes":
            continue  # segment moves by pair: their total is outputs_total{topic=segment-...}
        for sample in family.samples:
            if sample.name.endswith("_total"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def produce(args: argparse.Namespace) -> int:
    """Paced production of a slice of the benchmark data set (outside the measured process)."""
    from bench.common import DatasetSpec, make_dataset
    from bench.stack_runs import produce_paced

    spec = DatasetSpec(users=args.users, days=args.days, seed=args.seed, events=args.events)
    data = make_dataset(spec)[args.skip : args.skip + args.count]
    print("ready", flush=True)
    sys.stdin.readline()  # go
    took = produce_paced(args.topic, data, args.rate)
    print(orjson.dumps({"records": len(data), "seconds": took}).decode(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.workers")
    sub = p.add_subparsers(dest="kind", required=True)
    b = sub.add_parser("bare", help="consume → produce the same bytes → flush → commit")
    b.add_argument("--bootstrap", default="127.0.0.1:9092")
    b.add_argument("--input", required=True)
    b.add_argument("--output", required=True)
    b.add_argument("--group", required=True)
    b.add_argument("--batch", type=int, default=2000)
    b.add_argument(
        "--outputs-per-event",
        type=float,
        default=1.0,
        help="records produced per record consumed (1: each input copied; the scorer's ratio "
        "for a loop with the same output volume)",
    )
    sub.add_parser("naive", help="streamscore run with a user-by-user Redis store (env config)")
    sub.add_parser("counted", help="streamscore run, counting Redis round trips (env config)")
    pr = sub.add_parser("produce", help="a slice of the data set at a fixed rate")
    pr.add_argument("--topic", required=True)
    pr.add_argument("--rate", type=int, required=True)
    pr.add_argument("--skip", type=int, default=0)
    pr.add_argument("--count", type=int, required=True)
    pr.add_argument("--users", type=int, required=True)
    pr.add_argument("--days", type=float, required=True)
    pr.add_argument("--seed", type=int, required=True)
    pr.add_argument("--events", type=int, required=True)
    args = p.parse_args(argv)
    kinds = {"bare": bare, "naive": naive, "counted": counted, "produce": produce}
    return kinds[args.kind](args)


if __name__ == "__main__":
    sys.exit(main())
