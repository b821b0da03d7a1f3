"""A rolling upgrade on the real stack: this version and the next in one consumer group.

The next version is this tree's ``streamscore run`` with the next state format
(``newer_scorer.py``): a compatible addition (a new field older readers carry), or an
incompatible change (its states need a reader of the next format). Input arrives in four
chunks, each fully committed before the group's membership changes, so every handover is one
a rolling upgrade makes: the new version joins, leaves again (a failed canary), joins for
good, the old stops.

Compatible: both versions read each other's states, the old one carries the new field
through its own writes, and the end state is an uninterrupted replay's. Incompatible: the
old version refuses the new one's states without crashing or committing, says why, and the
upgrade completes once the new version has its partitions.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import redis

from devstack import GroupProgress, consume, produce
from streamscore.config import load_settings
from streamscore.core import state as state_module
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event
from tests.statecheck import assert_same_state, reference_run

from .conftest import REDIS_URL, SHARED
from .helpers import (
    env_for,
    input_records,
    joined,
    redis_view,
    settings_for,
    start_scorer,
    stop,
    tail,
    wait_for,
    wait_until_settled,
)
from .newer_scorer import NEW_FIELD, NEXT, become_next

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def start_newer(env: dict[str, str], log: Path, *, incompatible: bool) -> subprocess.Popen[bytes]:
    """The simulated next version, as a process of its own."""
    args = [sys.executable, "-m", "tests.integration.newer_scorer"]
    if incompatible:
        args.append("--incompatible")
    with log.open("ab") as fp:
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=fp, stderr=fp)


def stored(names: dict[str, str]) -> dict[str, dict[str, object]]:
    """Every user state under the test's prefix, as raw JSON."""
    r = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(r.scan_iter(match=f"{names['redis_key_prefix']}:u:*", count=1000))
        values = [r.hget(k, "s") for k in keys]
    finally:
        r.close()
    out = {}
    for key, value in zip(keys, values, strict=True):
        assert value is not None
        out[key.decode().split("{")[1].rstrip("}")] = orjson.loads(value)
    return out


@contextmanager
def reading_as_next(incompatible: bool) -> Iterator[None]:
    """This process reads (and writes) states as the simulated next version does."""
    saved = (state_module.STATE_FORMAT, state_module.MIN_READER, dict(state_module.UPGRADES))
    become_next(incompatible=incompatible)
    try:
        yield
    finally:
        state_module.STATE_FORMAT, state_module.MIN_READER = saved[0], saved[1]
        state_module.UPGRADES.clear()
        state_module.UPGRADES.update(saved[2])


def _events() -> list[tuple[str, bytes]]:
    sim = ShopSimulator(SimulationConfig(users=200, days=45, seed=11))
    return [(str(e["user_id"]), encode_event(e)) for e in sim.events() if isinstance(e, dict)]


class Upgrade:
    """Four chunks of one simulated shop, the scorers reading them, and their progress."""

    def __init__(self, names: dict[str, str], tmp_path: Path, *, incompatible: bool) -> None:
        self.names, self.tmp, self.incompatible = names, tmp_path, incompatible
        self.events = _events()
        self.users = {u for u, _ in self.events}
        n = len(self.events)
        self.chunks = [self.events[i * n // 4 : (i + 1) * n // 4] for i in range(4)]
        self.sent = 0
        self.env = env_for(names, batch_max_records=200, session_timeout_ms=6000)
        self.logs = {who: tmp_path / f"{who}.log" for who in ("old", "new", "new2")}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

        self.progress = GroupProgress(SHARED, names["kafka_group_id"], names["input_topic"])

    def send(self, i: int) -> None:
        produce(SHARED, self.names["input_topic"], [(u.encode(), v) for u, v in self.chunks[i]])
        self.sent += len(self.chunks[i])

    def committed(self) -> int:
        """Records the group has committed (of the ``sent`` produced so far)."""
        return round(self.progress.fraction() * self.sent)

    def all_committed(self) -> bool:
        return self.committed() == self.sent

    def running(self) -> dict[Path, subprocess.Popen[bytes]]:
        return {self.logs[w]: p for w, p in self.procs.items() if p.poll() is None}

    def wait(self, what: str, condition: Callable[[], bool], timeout_s: float = 90) -> None:
        wait_for(what, condition, timeout_s, self.running(), interval_s=0.2)

    def start_new(self, who: str) -> None:
        """The new version joins the group, and gets partitions."""
        self.procs[who] = start_newer(self.env, self.logs[who], incompatible=self.incompatible)
        log = self.logs[who]
        self.wait(f"{who} gets partitions", lambda: joined(log))

    def stop(self, who: str) -> None:
        assert stop(self.procs[who]) == 0, tail(self.logs[who])

    def canary(self, old_env: dict[str, str]) -> None:
        """The old version reads chunk 1, the new one joins for chunk 2 and leaves again."""
        self.procs["old"] = start_scorer(old_env, self.logs["old"])
        self.send(0)
        self.wait("the old version reads chunk 1", self.all_committed)
        self.start_new("new")
        self.send(1)
        self.wait("both read chunk 2", self.all_committed)
        self.stop("new")  # the canary goes: the old version takes its partitions back

    def finish(self, who: str) -> None:
        """The last chunk, read to its end (due users settled) by the new version alone."""
        self.send(3)
        self.wait("the new version reads chunk 4", self.all_committed)
        wait_until_settled(settings_for(self.names), self.running())
        self.stop(who)

    def assert_same_as_uninterrupted(self) -> None:
        """The facts in Redis are an uninterrupted run's (carried fields aside), and the
        model outputs are what the scorers' own records said."""
        want, _ = reference_run(
            load_settings(metrics_port=0), input_records(self.names["input_topic"]), 4
        )
        got = redis_view(settings_for(self.names), set(want.states))
        for state in got.states.values():
            state.carried = {}  # the new field: checked on the raw states
        assert_same_state(
            got,
            want,
            scores=consume(SHARED, self.names["scores_topic"]),
            alerts=consume(SHARED, self.names["alerts_topic"]),
        )
        assert sum(s.features.events for s in got.states.values()) == len(self.events)

    def close(self) -> None:
        for p in self.running().values():
            stop(p)
        self.progress.close()


@pytest.fixture
def upgrade(names: dict[str, str], tmp_path: Path) -> Iterator[Callable[[bool], Upgrade]]:
    """Makes the upgrade of a test; stops whatever it left running."""
    made: list[Upgrade] = []

    def make(incompatible: bool) -> Upgrade:
        made.append(Upgrade(names, tmp_path, incompatible=incompatible))
        return made[-1]

    yield make
    for up in made:
        up.close()


def test_a_compatible_upgrade_keeps_both_versions_reading_each_other(
    upgrade: Callable[[bool], Upgrade],
) -> None:
    """Each version reads the other's states; the old one carries the new field."""
    up = upgrade(False)
    up.canary(up.env)
    up.send(2)
    up.wait("the old version reads chunk 3", up.all_committed)
    after_canary = stored(up.names)
    up.start_new("new2")
    up.stop("old")
    up.finish("new2")
    logs = "".join(log.read_text() for log in up.logs.values())
    assert "Traceback" not in logs and "needs a reader" not in logs, logs[-4000:]

    # After the canary left, the old version rewrote the states the new one had written:
    # in its own format, carrying the new field (none lost it: the new one never wrote it away).
    carried = [u for u, d in after_canary.items() if d["v"] == NEXT - 1 and NEW_FIELD in d]
    assert carried, "no state the old version wrote after the new one: the handover was missed"
    raw = stored(up.names)
    assert set(raw) == up.users
    versions = {u: (d["v"], NEW_FIELD in d) for u, d in raw.items()}
    assert (NEXT, True) in versions.values(), "no state written by the new version"
    assert (NEXT, False) not in versions.values(), "the new version lost its own field"
    assert all(NEW_FIELD in raw[u] for u in carried), "a field carried by the old was lost"
    assert all(d[NEW_FIELD] == f"added by v{NEXT}" for d in raw.values() if NEW_FIELD in d)
    # Read as this version reads them: the state of an uninterrupted run.
    up.assert_same_as_uninterrupted()


def test_an_incompatible_upgrade_holds_the_old_version_back_without_crashing_it(
    upgrade: Callable[[bool], Upgrade],
) -> None:
    """The old version refuses the new one's states, stays up, commits nothing of them."""
    up = upgrade(True)
    # A short poll interval: stuck on a refused batch, it leaves the group within 10 s.
    up.canary({**up.env, "STREAMSCORE_MAX_POLL_INTERVAL_MS": "10000"})
    before = up.committed()
    up.send(2)
    old_log = up.logs["old"]
    up.wait(
        "the old version refuses the new one's states, again and again",
        lambda: old_log.read_text().count(f"needs a reader of v{NEXT}") >= 4,
    )
    assert up.procs["old"].poll() is None, tail(old_log)
    assert not up.all_committed(), "the old version committed a batch it could not read"
    assert up.committed() >= before
    up.procs["new2"] = start_newer(up.env, up.logs["new2"], incompatible=True)
    up.wait("the new version takes over", up.all_committed, timeout_s=120)
    up.stop("old")
    up.finish("new2")
    text = old_log.read_text()
    assert "load states failed (user state of" in text
    assert "finish the rolling upgrade" in text
    assert "Traceback" not in text
    with reading_as_next(incompatible=True):
        up.assert_same_as_uninterrupted()
