"""Driving ``streamscore run`` as a real process, and checking what it left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from devstack import GroupProgress, read_topic
from streamscore.adapters.kafka import rekeyed_from
from streamscore.adapters.pseudonymous import maybe_pseudonymous
from streamscore.adapters.redis_store import RedisStateStore
from streamscore.config import Settings, load_settings
from streamscore.core.records import TOPIC_DLQ
from streamscore.core.trainer import Trainer
from streamscore.model_checkpoints import Head, Published
from streamscore.ports import SourceRecord
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event
from tests.statecheck import StoreView, settled, store_view

from .conftest import BOOTSTRAP, REDIS_URL, SHARED

# A member that got partitions logs "assigned partitions [0, 1]"; an empty "[]" is no join.
ASSIGNED = re.compile(r"assigned partitions \[\d")


def settings_for(names: dict[str, str], **extra: object) -> Settings:
    """Settings of a test's scorer: its own topics, group and key prefix."""
    values = {"kafka_bootstrap_servers": BOOTSTRAP, "redis_url": REDIS_URL, "metrics_port": 0}
    return load_settings(**{**values, **names, **extra})


def env_for(names: Mapping[str, object], **extra: object) -> dict[str, str]:
    """A scorer subprocess's environment: the shared stack, its names, test-friendly timings."""
    values: dict[str, object] = {
        "kafka_bootstrap_servers": BOOTSTRAP,
        "redis_url": REDIS_URL,
        "metrics_port": 0,
        "batch_max_records": 500,
        "poll_timeout_ms": 100,
        "checkpoint_key": "integration-test-key",
        "checkpoint_interval_seconds": 2,
        # Wall-clock idleness would move watermarks past what the input says, so a run's
        # state would depend on its timing; the idle-partition test turns it on.
        "idle_partition_seconds": 0,
        **names,
        **extra,
    }
    return scorer_env(**values)


def scorer_env(**values: object) -> dict[str, str]:
    """This process's environment without STREAMSCORE_* variables, plus ``values`` as them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    env.update({f"STREAMSCORE_{k.upper()}": str(v) for k, v in values.items()})
    return env


def start_scorer(
    env: dict[str, str], log_path: Path, command: str = "run"
) -> subprocess.Popen[bytes]:
    """Start ``streamscore run`` (or ``command``) as a child process, logging to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streamscore.cli", command], env=env, stdout=log, stderr=log
        )


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    """SIGTERM and wait: the graceful path. A scorer that ignores it is killed, then failed."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL: a crash."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def tail(path: Path, chars: int = 4000) -> str:
    """The end of a log file, for failure messages."""
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} missing)"


def wait_for(
    what: str,
    condition: Callable[[], bool],
    timeout_s: float,
    procs: Mapping[Path, subprocess.Popen[bytes]] | None = None,
    interval_s: float = 0.05,
) -> None:
    """Poll ``condition`` until true; fail early, with the log, when a process of ``procs``
    (log path → process) exits, and with every log when time runs out."""
    procs = procs or {}
    deadline = time.monotonic() + timeout_s
    while True:
        for log, p in procs.items():
            if p.poll() is not None:
                raise AssertionError(
                    f"{p.args!r} exited ({p.returncode}) waiting for {what}:\n{tail(log)}"
                )
        if condition():
            return
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {log.name}\n{tail(log)}" for log in procs)
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{logs}")
        time.sleep(interval_s)


def joined(log: Path, before: int = 0) -> bool:
    """True when the log shows more than ``before`` non-empty partition assignments."""
    return len(ASSIGNED.findall(log.read_text(errors="replace"))) > before


def wait_until_committed(
    group: str,
    topic: str,
    procs: Mapping[Path, subprocess.Popen[bytes]],
    timeout_s: float = 120.0,
    client: Mapping[str, Any] = SHARED,
) -> None:
    """Block until the group has committed every record, failing early if a scorer died."""
    progress = GroupProgress(client, group, topic)
    try:
        wait_for(f"{group} to commit all of {topic}", lambda: progress.fraction() >= 1.0,
                 timeout_s, procs)  # fmt: skip
    finally:
        progress.close()


def redis_view(settings: Settings, users: set[str], partitions: int = 4) -> StoreView:
    """What the scorers left in the Redis the settings point at (through the pseudonymous
    wrapper when the settings have a ``pseudonym_key``)."""
    store = maybe_pseudonymous(RedisStateStore.from_settings(settings), settings)
    try:
        return store_view(store, users, range(partitions))
    finally:
        store.close()


def wait_until_settled(
    settings: Settings,
    procs: Mapping[Path, subprocess.Popen[bytes]],
    timeout_s: float = 60.0,
    partitions: int = 4,
) -> None:
    """Block until no user is due behind a saved watermark (silences and horizons done)."""
    store = maybe_pseudonymous(RedisStateStore.from_settings(settings), settings)
    try:
        wait_for("the due queues to drain", lambda: settled(store, range(partitions)),
                 timeout_s, procs)  # fmt: skip
    finally:
        store.close()


def simulated_events(users: int, days: float, seed: int = 11) -> list[tuple[str, bytes]]:
    """A simulated shop's events, as (user id, encoded event), in the simulator's order."""
    sim = ShopSimulator(SimulationConfig(users=users, days=days, seed=seed))
    return [(str(e["user_id"]), encode_event(e)) for e in sim.events() if isinstance(e, dict)]


def input_records(topic: str, client: Mapping[str, Any] = SHARED) -> list[SourceRecord]:
    """The input topic as it is on the broker: each record with its partition and offset."""
    return [
        SourceRecord(
            m.topic, m.partition, m.offset, m.value, m.timestamp, m.key, rekeyed_from(m.headers)
        )
        for m in read_topic(client, topic)
    ]


def scrape(port: int, metric: str) -> dict[str, float]:
    """Samples of one metric from a Prometheus endpoint on 127.0.0.1: {label text: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(metric + "{") or line.startswith(metric + " "):
            name, _, value = line.rpartition(" ")
            out[name[len(metric) :]] = float(value)
    return out


def last_positions(
    records: list[SourceRecord], dead: Collection[tuple[int, int]] = ()
) -> dict[str, tuple[int, int]]:
    """Each user's last record on the broker that their state applies, (partition, offset):
    keyed by their user id (the others are dead-lettered or re-keyed), not at a position in
    ``dead`` (dead-lettered, late for instance), and not a second re-keyed copy of a record
    (records are in offset order per partition, and a copy follows its original's)."""
    import orjson

    out: dict[str, tuple[int, int]] = {}
    origins: set[tuple[int, int]] = set()
    for r in records:
        try:
            uid = str(orjson.loads(r.value)["user_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue  # not an event: dead-lettered, no state
        if r.origin is not None:
            if r.origin in origins:
                continue
            origins.add(r.origin)
        if r.key == uid.encode() and (r.partition, r.offset) not in dead:
            out[uid] = max(out.get(uid, (r.partition, -1)), (r.partition, r.offset))
    return out


def assert_same_as_uninterrupted(
    names: Mapping[str, str],
    *,
    client: Mapping[str, Any] = SHARED,
    redis_url: str = REDIS_URL,
    semantics: Mapping[str, object] | None = None,
    pseudonym_key: str | None = None,
) -> StoreView:
    """The whole state the scorers left in Redis equals an uninterrupted run's over the same
    partitioned input (``tests/statecheck.py``; ``semantics``: the scorers' settings that
    change what an input means, such as on_key_mismatch), and every user's
    position is their last record on the broker that keys them rightly. Returns what was in
    Redis."""
    from devstack import consume
    from tests.statecheck import assert_same_state, reference_run

    records = input_records(names["input_topic"], client)
    reference = load_settings(metrics_port=0, **(semantics or {}))
    want, sink = reference_run(reference, records, 4, keyed=True)
    secret = {"pseudonym_key": pseudonym_key} if pseudonym_key else {}
    settings = load_settings(
        redis_url=redis_url, redis_key_prefix=names["redis_key_prefix"], **secret
    )
    got = redis_view(settings, set(want.states))
    assert_same_state(
        got,
        want,
        scores=consume(client, names["scores_topic"]),
        alerts=consume(client, names["alerts_topic"]),
    )
    positions = {u: (s.partition, s.offset) for u, s in got.states.items()}
    letters = sink.records.get(TOPIC_DLQ, [])
    dead = {_source(letter) for letter in letters}
    on_broker = last_positions(records, dead)
    assert positions == {u: on_broker[u] for u in positions}
    return got


def published_lineage(settings: Settings) -> tuple[Head | None, Published | None]:
    """The head and the verified latest model version the trainer published (settings name
    the Redis prefix and the key)."""
    from streamscore.model_checkpoints import LineageStore

    store = RedisStateStore.from_settings(settings)
    try:
        lineage = LineageStore(settings, store)
        return lineage.head(), lineage.load()
    finally:
        store.close()


def reference_lineage(topic: str, client: Mapping[str, Any] = SHARED) -> Trainer:
    """What one uninterrupted in-memory run over the same partitioned input learnt."""
    from tests.statecheck import memory_pipeline, run_to_the_end

    pipeline, store, _ = memory_pipeline(
        load_settings(metrics_port=0), input_records(topic, client)
    )
    run_to_the_end(pipeline, store, 4)
    trainer = pipeline.scorer.lineage
    assert isinstance(trainer, Trainer)
    return trainer


def wait_until_published_all(
    settings: Settings,
    training: GroupProgress,
    procs: Mapping[Path, subprocess.Popen[bytes]],
    timeout_s: float,
) -> None:
    """Until the lineage's latest published version reflects every record of
    training-examples (``training``: progress on that topic)."""
    wait_for(
        "a published version reflecting all of training-examples",
        lambda: (
            (h := published_lineage(settings)[0]) is not None and h.offset == training.ends()[0]
        ),
        timeout_s,
        procs,
        interval_s=0.2,
    )


def assert_learnt_once(settings: Settings, names: Mapping[str, str]) -> Published:
    """The published lineage learnt each label the scorers resolved exactly once: as many as
    an uninterrupted run resolves, each distinct label id of training-examples once, and it
    reflects the whole topic. Returns the version."""
    import orjson

    _, published = published_lineage(settings)
    assert published is not None, "no model version was published"
    want = reference_lineage(names["input_topic"]).models
    got = published.models
    learnt, resolved = (got.churn_learnt, got.value_learnt), (want.churn_learnt, want.value_learnt)
    assert learnt == resolved, f"(churn, value) labels learnt {learnt}, resolved {resolved}"
    records = [orjson.loads(m.value) for m in read_topic(SHARED, names["training_topic"])]
    labels = {r["id"] for r in records if r["type"] == "label"}
    assert len(labels) == got.churn_learnt + got.value_learnt
    assert published.next_offset == len(records)
    assert all("user_id" not in r for r in records)
    repeats = sum(r["type"] == "label" for r in records) - len(labels)
    print(f"{len(records)} training records, {repeats} repeated labels dropped; "
          f"lineage version {published.version}")  # fmt: skip
    return published


def _source(letter: Mapping[str, Any]) -> tuple[int, int]:
    """A dead letter's source position."""
    return int(letter["source"]["partition"]), int(letter["source"]["offset"])
