"""Shared plumbing of the benchmarks: the data set, the local stack, processes and /proc.

Every run gets its own tag: topics ``<tag>-...``, consumer groups ``<tag>-...`` and Redis key
prefixes ``<tag>-...``. ``Stack.cleanup`` deletes all of them (and stops any process the run
started), also when a benchmark fails half-way.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson
import redis
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from devstack import GroupProgress, LocalStack, StackConfig, produce, read_topic
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event

BOOTSTRAP = os.environ.get("BENCH_KAFKA", "127.0.0.1:9092")
CLIENT = {"bootstrap_servers": [BOOTSTRAP]}  # kafka-python options
REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
ROOT = BENCH_DIR.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
CHECKPOINT_KEY = "bench-checkpoint-key"

_T0 = time.monotonic()


def log(msg: str) -> None:
    """A progress line on stdout."""
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


# -- the data set ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """The simulated shop every benchmark replays (the first ``events`` events of it)."""

    users: int = 5000
    days: float = 90.0
    seed: int = 11
    events: int = 150_000


def make_dataset(spec: DatasetSpec) -> list[tuple[bytes, bytes]]:
    """(key, value) records in event-time order, encoded as the producers of the shop would."""
    sim = ShopSimulator(SimulationConfig(users=spec.users, days=spec.days, seed=spec.seed))
    out: list[tuple[bytes, bytes]] = []
    for event in sim.events():
        if len(out) >= spec.events:
            break
        if isinstance(event, dict):
            out.append((str(event["user_id"]).encode(), encode_event(event)))
    return out


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition kafka-python's default partitioner picks for a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def locality(records: Sequence[tuple[bytes, bytes]], batch: int) -> float:
    """Mean events per distinct user inside consecutive batches of ``batch`` records."""
    ratios = []
    for i in range(0, len(records), batch):
        chunk = records[i : i + batch]
        ratios.append(len(chunk) / len({k for k, _ in chunk}))
    return sum(ratios) / len(ratios) if ratios else 0.0


# -- /proc ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0.0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def status_kib(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` figure in KiB (VmHWM = peak RSS, VmRSS), 0 when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in first]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, already counted in user
    return total - idle, total


def local_stack() -> LocalStack:
    """The servers of ``scripts/stack`` (same ``STREAMSCORE_*`` settings)."""
    return LocalStack(StackConfig.from_env())


def ensure_stack() -> None:
    """Start the local stack through devstack unless BENCH_KAFKA/BENCH_REDIS point elsewhere
    (idempotent: a running stack is only checked)."""
    if "BENCH_KAFKA" not in os.environ and "BENCH_REDIS" not in os.environ:
        local_stack().up()


def stack_pids() -> dict[str, int]:
    """PIDs of the local Kafka broker and Redis server, found as scripts/stack finds them."""
    stack = local_stack()
    pids = {"kafka": stack.kafka.pid(), "redis": stack.redis.pid()}
    return {k: v for k, v in pids.items() if v is not None}


def other_load(seconds: float = 1.0) -> float:
    """Cores kept busy over ``seconds`` by processes other than Kafka, Redis and this one."""
    pids = stack_pids()
    busy0, _ = machine_jiffies()
    infra0 = sum(cpu_seconds(p) for p in pids.values())
    self0 = time.process_time()
    time.sleep(seconds)
    busy1, _ = machine_jiffies()
    infra = sum(cpu_seconds(p) for p in pids.values()) - infra0
    own = time.process_time() - self0
    return max((busy1 - busy0) / 100 - infra - own, 0.0) / seconds


QUIET_WAIT_S = float(os.environ.get("BENCH_QUIET_WAIT_S", "45"))


def wait_quiet(max_wait_s: float | None = None, threshold: float = 0.3) -> float:
    """Wait (a while) for other work on this machine to calm down; returns the load seen.

    Other processes on a 2-core machine take CPU from the processes being measured; every
    result also records how busy the machine was while it ran.
    """
    max_wait_s = QUIET_WAIT_S if max_wait_s is None else max_wait_s
    deadline = time.monotonic() + max_wait_s
    load = other_load()
    if load > threshold:
        log(f"other processes keep {load:.1f} cores busy; waiting up to {max_wait_s:.0f}s")
        while load > threshold and time.monotonic() < deadline:
            load = other_load()
        if load > threshold:
            log(f"still {load:.1f} cores busy elsewhere: measuring anyway (noted in the result)")
    return round(load, 2)


def per_call_us(fn: Callable[[Any], object], items: Sequence[Any], passes: int = 5) -> float:
    """CPU µs per call of ``fn`` over ``items``: the best of ``passes`` passes."""
    best = float("inf")
    for _ in range(passes):
        started = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - started)
    return best / len(items) * 1e6


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# -- the local stack --------------------------------------------------------------------------


class Stack:
    """Topics, groups, Redis prefixes and processes of one benchmark run, cleaned up at the end."""

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or f"bench{uuid.uuid4().hex[:8]}"
        self.admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, request_timeout_ms=30_000)
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.redis.ping()
        self.topics: list[str] = []
        self.groups: list[str] = []
        self.prefixes: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_dir = RESULTS_DIR / "logs" / self.tag
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._progress: dict[tuple[str, str], GroupProgress] = {}

    # names ----------------------------------------------------------------------------------

    def name(self, what: str) -> str:
        return f"{self.tag}-{what}"

    def group(self, what: str) -> str:
        g = self.name(what)
        self.groups.append(g)
        return g

    def prefix(self, what: str) -> str:
        p = self.name(what)
        self.prefixes.append(p)
        return p

    # topics ---------------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int, *, log_append_time: bool = False) -> str:
        configs = {"message.timestamp.type": "LogAppendTime"} if log_append_time else None
        self.admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs=configs)], wait_for_metadata=True
        )
        self.topics.append(name)
        return name

    def output_topics(self, what: str, partitions: int = 4) -> dict[str, str]:
        """The output topics of one scorer run (training-examples with its one partition);
        scores carry the broker's append time."""
        names = {
            "scores_topic": self.name(f"{what}-scores"),
            "alerts_topic": self.name(f"{what}-alerts"),
            "segments_topic": self.name(f"{what}-segments"),
            "dlq_topic": self.name(f"{what}-dlq"),
            "training_topic": self.name(f"{what}-training-examples"),
        }
        for key, topic in names.items():
            n = 1 if key == "training_topic" else partitions
            self.create_topic(topic, n, log_append_time=key == "scores_topic")
        return names

    def produce(
        self,
        topic: str,
        records: Iterable[tuple[bytes, bytes]],
        *,
        label: str = "",
    ) -> int:
        """Produce keyed records as fast as the client goes and wait for all of them."""
        started = time.perf_counter()
        n = produce(CLIENT, topic, records, linger_ms=20, batch_size=512 * 1024)
        took = time.perf_counter() - started
        log(f"produced {n:,} events to {label or topic} in {took:.1f}s ({n / took:,.0f}/s)")
        return n

    def _group(self, group: str, topic: str) -> GroupProgress:
        if (group, topic) not in self._progress:
            self._progress[group, topic] = GroupProgress(CLIENT, group, topic)
        return self._progress[group, topic]

    def end_offsets(self, topic: str) -> dict[int, int]:
        return self._group("", topic).ends()

    def committed(self, group: str, topic: str) -> int:
        """Records of ``topic`` the group has committed, over all partitions."""
        return self._group(group, topic).committed_records()

    def members_with_partitions(self, group: str) -> int:
        """Members of a stable group that own at least one partition."""
        try:
            info = self.admin.describe_groups([group]).get(group, {})
        except KafkaError:
            return 0
        if str(info.get("group_state", "")).lower() != "stable":
            return 0
        n = 0
        for member in info.get("members", []):
            assignment = member.get("member_assignment") or {}
            owned = assignment.get("assigned_partitions") or assignment.get("assignment") or []
            if any(parts for _, parts in _topic_parts(owned)):
                n += 1
        return n

    @staticmethod
    def read_topic(topic: str, start: dict[int, int] | None = None) -> list[Any]:
        """Every record of a topic (from ``start`` offsets per partition) up to its end now."""
        return read_topic(CLIENT, topic, start)

    # processes ------------------------------------------------------------------------------

    def scorer_env(self, names: dict[str, str], **extra: object) -> dict[str, str]:
        """Environment of a ``streamscore run`` process: its own topics, group and prefix."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
        values: dict[str, object] = {
            "kafka_bootstrap_servers": BOOTSTRAP,
            "redis_url": REDIS_URL,
            "metrics_port": 0,
            "checkpoint_key": CHECKPOINT_KEY,
            **names,
            **extra,
        }
        env.update({f"STREAMSCORE_{k.upper()}": str(v) for k, v in values.items()})
        return env

    def start(
        self, argv: Sequence[str], env: dict[str, str], log_name: str
    ) -> subprocess.Popen[bytes]:
        path = self.log_dir / f"{log_name}.log"
        with path.open("ab") as fp:
            proc = subprocess.Popen(list(argv), env=env, stdout=fp, stderr=fp, cwd=ROOT)
        self.procs.append(proc)
        return proc

    @staticmethod
    def scorer_argv() -> list[str]:
        return [sys.executable, "-m", "streamscore.cli", "run"]

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
        """SIGTERM (the graceful path), then SIGKILL if it does not stop in time."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log(f"process {proc.pid} ignored SIGTERM for {timeout_s:.0f}s; killing it")
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)
        return proc.returncode

    # redis ----------------------------------------------------------------------------------

    def redis_keys(self, prefix: str) -> list[bytes]:
        return list(self.redis.scan_iter(match=f"{prefix}:*", count=1000))

    def redis_prefix_bytes(self, prefix: str) -> dict[str, float]:
        """MEMORY USAGE of every key under a prefix: user states, due queues, watermarks."""
        keys = self.redis_keys(prefix)
        users = [k for k in keys if k.startswith(f"{prefix}:u:".encode())]
        others = [k for k in keys if not k.startswith(f"{prefix}:blob:".encode())]
        with self.redis.pipeline(transaction=False) as pipe:
            for k in others:
                pipe.memory_usage(k, samples=0)
            sizes = [s or 0 for s in pipe.execute()]
        total = float(sum(sizes))
        user_set = set(users)
        user_sizes = sorted(s for k, s in zip(others, sizes, strict=True) if k in user_set)
        return {
            "users": len(users),
            "all_keys_bytes": total,
            "all_keys_bytes_per_user": total / len(users) if users else 0.0,
            "user_key_bytes_mean": sum(user_sizes) / len(user_sizes) if user_sizes else 0.0,
            "user_key_bytes_p50": percentile(user_sizes, 50),
            "user_key_bytes_p90": percentile(user_sizes, 90),
            "user_key_bytes_max": user_sizes[-1] if user_sizes else 0,
        }

    # cleanup --------------------------------------------------------------------------------

    def cleanup(self) -> None:
        for proc in list(self.procs):
            try:
                self.stop(proc, timeout_s=20)
            except Exception as exc:
                log(f"could not stop process {proc.pid}: {exc}")
        for progress in self._progress.values():
            progress.close()
        if self.groups:
            try:
                self.admin.delete_groups(self.groups)
            except Exception as exc:
                log(f"could not delete consumer groups: {exc}")
        if self.topics:
            try:
                self.admin.delete_topics(self.topics)
            except Exception as exc:
                log(f"could not delete topics: {exc}")
        deleted = 0
        for prefix in self.prefixes:
            keys = self.redis_keys(prefix)
            for i in range(0, len(keys), 500):
                deleted += self.redis.delete(*keys[i : i + 500])
        self.admin.close()
        self.redis.close()
        log(
            f"cleaned up: {len(self.topics)} topics, {len(self.groups)} groups, "
            f"{deleted:,} Redis keys under {len(self.prefixes)} prefixes"
        )


def _topic_parts(owned: Any) -> list[tuple[str, list[int]]]:
    """Normalise the assignment shapes kafka-python's admin client decodes to."""
    out: list[tuple[str, list[int]]] = []
    if isinstance(owned, dict):
        owned = list(owned.items())
    for item in owned:
        if isinstance(item, dict):
            topic = item.get("topic") or item.get("name") or ""
            parts = item.get("partitions") or []
        else:
            topic, parts = item[0], item[1]
        out.append((str(topic), list(parts)))
    return out


def dump_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        orjson.dumps(
            data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS
        )
    )


def machine_facts() -> dict[str, Any]:
    """What a result was measured on: cores, load when it started, interpreter and clients."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
        "kafka_python": version("kafka-python"),
        "river": version("river"),
        "redis_py": version("redis"),
    }


def code_version() -> dict[str, Any]:
    """The commit measured, and whether src/ had uncommitted changes (editable install)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "commit": git("rev-parse", "HEAD"),
        "src_changes": git("status", "--porcelain", "src").splitlines(),
    }
