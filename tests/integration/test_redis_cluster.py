"""``streamscore run`` on a real Redis Cluster: three masters on loopback, the shared Kafka.

- a cluster client writes keys to all three masters (the ``redis_cluster`` fixture works);
- two scorers in one group on the cluster, one killed with SIGKILL mid-stream, its
  partitions taken over by the other, then restarted: they leave the whole state of an
  uninterrupted in-memory run over the same partitioned input (``tests/statecheck.py``),
  spread over the three masters;
- slots resharded between masters (``redis-cli --cluster reshard``) while the scorer works:
  it follows the redirects (the masters count the MOVED and ASK they answered) and ends
  with the same state;
- a master killed with SIGKILL mid-stream in a cluster with a replica per master and
  ``redis_wait_replicas=1``, then the scorer killed and restarted on the new master: it
  retries while the replica takes over, nothing committed is lost, nothing replayed is
  applied twice, and it ends with the same state.

The last two change the cluster's topology, so they run on private clusters.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from devstack import GroupProgress, RedisCluster, produce
from streamscore.config import load_settings
from tests.conftest import MakeCluster

from .conftest import SHARED
from .helpers import (
    ASSIGNED,
    assert_learnt_once,
    assert_same_as_uninterrupted,
    env_for,
    joined,
    kill,
    settings_for,
    simulated_events,
    start_scorer,
    stop,
    tail,
    wait_for,
    wait_until_committed,
    wait_until_published_all,
    wait_until_settled,
)

pytestmark = pytest.mark.integration
SLOTS_PER_MOVE = 400


def test_a_cluster_client_writes_keys_to_all_three_masters(redis_cluster: RedisCluster) -> None:
    assert redis_cluster.ok()
    prefix = f"ct{uuid.uuid4().hex[:8]}"
    keys = [f"{prefix}:u:{{user{i}}}" for i in range(300)]  # a hash tag per user, as the store
    client = redis_cluster.client()
    try:
        for i, key in enumerate(keys):
            client.set(key, str(i).encode())
        per_master = {}
        for host, port in redis_cluster.addresses:
            node = redis.Redis(host=host, port=port)
            try:
                per_master[port] = sorted(k.decode() for k in node.scan_iter(match=f"{prefix}:*"))
            finally:
                node.close()
        # Every key lives on exactly one master, and every master holds some.
        assert sorted(k for held in per_master.values() for k in held) == sorted(keys)
        assert all(per_master.values()), {p: len(k) for p, k in per_master.items()}
        assert [client.get(k) for k in keys] == [str(i).encode() for i in range(300)]
    finally:
        for key in keys:
            client.delete(key)
        client.close()


@pytest.fixture
def on_cluster(names: dict[str, str], redis_cluster: RedisCluster) -> Iterator[dict[str, str]]:
    """The test's names, its keys deleted from the shared cluster afterwards."""
    yield names
    redis_cluster.delete_keys(names["redis_key_prefix"])


Procs = dict[Path, "subprocess.Popen[bytes]"]
# What a test does while the scorer works: given the group's progress, the scorer (log path ->
# process) and a function that kills it with SIGKILL and starts it again in its place once
# its argument (a function) has returned.
During = Callable[[GroupProgress, Procs, Callable[[Callable[[], object]], None]], None]


def _run_to_the_end(
    names: dict[str, str],
    url: str,
    log: Path,
    *,
    during: During | None = None,
    **env: object,
) -> str:
    """Start a scorer on ``url``, let ``during`` act while it works, wait until it has
    committed and settled everything, stop it; its log (every process's, if restarted)."""
    group, topic = names["kafka_group_id"], names["input_topic"]
    # A static member on a short session: a restarted scorer gets its partitions back at once.
    scorer = env_for(
        names, redis_url=url, kafka_group_instance_id="scorer-0", session_timeout_ms=6000, **env
    )
    procs: Procs = {log: start_scorer(scorer, log)}

    def crash_and_restart(meanwhile: Callable[[], object]) -> None:
        kill(procs[log])
        meanwhile()
        procs[log] = start_scorer(scorer, log)

    progress = GroupProgress(SHARED, group, topic)
    try:
        if during is not None:
            during(progress, procs, crash_and_restart)
        wait_until_committed(group, topic, procs, timeout_s=240)
        settings = load_settings(redis_url=url, redis_key_prefix=names["redis_key_prefix"])
        wait_until_settled(settings, procs, timeout_s=120)
    finally:
        progress.close()
        code = stop(procs[log])
    text = log.read_text()
    assert code == 0, tail(log)
    assert "stopped cleanly" in text, tail(log)
    return text


def test_two_scorers_on_the_cluster_one_killed_and_restarted_match_one_run(
    on_cluster: dict[str, str], redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """Two scorers in one group share the partitions and the cluster; one is killed with
    SIGKILL at 30 % committed, the other takes its partitions over (picking up from the
    cluster what the dead one saved), then the dead one is started again and gets some back.
    The state is one uninterrupted run's, and the one model lineage learnt every label the
    two resolved exactly once."""
    names = on_cluster
    group, topic = names["kafka_group_id"], names["input_topic"]
    env = env_for(names, redis_url=redis_cluster.url, batch_max_records=200)
    env["STREAMSCORE_SESSION_TIMEOUT_MS"] = "6000"  # the dead member is noticed in 6 s
    logs = [tmp_path / f"scorer{i}.log" for i in range(2)]
    procs = {log: start_scorer(env, log) for log in logs}
    survivor, victim = logs
    progress = GroupProgress(SHARED, group, topic)
    training = GroupProgress(SHARED, f"{group}-trainer", names["training_topic"])
    try:
        wait_for("both scorers to get partitions", lambda: all(map(joined, logs)), 60, procs)
        events = simulated_events(users=150, days=40, seed=14)
        produce(SHARED, topic, [(u.encode(), v) for u, v in events])
        wait_for("30% committed", lambda: progress.fraction() >= 0.3, 90, procs, interval_s=0.01)
        kill(procs[victim])
        share_at_kill = progress.fraction()
        del procs[victim]
        before = len(ASSIGNED.findall(survivor.read_text()))
        wait_for("the survivor to take over", lambda: joined(survivor, before), 60, procs)
        share_at_takeover = progress.fraction()
        again = len(ASSIGNED.findall(victim.read_text()))
        procs[victim] = start_scorer(env, victim)
        wait_for("the restarted scorer to get partitions", lambda: joined(victim, again), 60, procs)
        wait_until_committed(group, topic, procs, timeout_s=240)
        settings = settings_for(
            names, redis_url=redis_cluster.url, checkpoint_key="integration-test-key"
        )
        wait_until_settled(settings, procs, timeout_s=120)
        # The one lineage (kept on the cluster too) has published a version of everything
        # the two scorers sent to training-examples, the killed one's labels included.
        wait_until_published_all(settings, training, procs, 90)
    finally:
        progress.close()
        training.close()
        codes = [stop(p) for p in procs.values()]
    assert codes == [0, 0], [tail(log) for log in logs]
    assert_learnt_once(settings, names)  # each resolved label learnt exactly once
    assert f"state store: Redis Cluster at seed nodes {redis_cluster.seeds}" in survivor.read_text()
    assert share_at_kill < 1.0 and share_at_takeover < 1.0, (share_at_kill, share_at_takeover)
    got = assert_same_as_uninterrupted(names, redis_url=redis_cluster.url)
    assert sum(s.features.events for s in got.states.values()) == len(events)
    held = _keys_per_master(redis_cluster, names["redis_key_prefix"])
    assert len(held) == 3 and all(held.values()), held  # the state is spread over the masters


def _keys_per_master(cluster: RedisCluster, prefix: str) -> dict[int, int]:
    out = {}
    for node in cluster.masters():
        client = node.client()
        try:
            out[node.port] = sum(1 for _ in client.scan_iter(match=f"{prefix}:*", count=1000))
        finally:
            client.close()
    return out


def _redirects(cluster: RedisCluster) -> dict[str, int]:
    """MOVED and ASK answers the masters gave since their stats were reset."""
    out = {"MOVED": 0, "ASK": 0}
    for node in cluster.masters():
        client = node.client()
        try:
            for name, value in client.info("errorstats").items():
                kind = name.removeprefix("errorstat_")
                if kind in out:
                    out[kind] += int(value["count"])
        finally:
            client.close()
    return out


def _reset_stats(cluster: RedisCluster) -> None:
    for node in cluster.masters():
        client = node.client()
        try:
            client.config_resetstat()
        finally:
            client.close()


@pytest.mark.slow
def test_slots_resharded_mid_stream(
    names: dict[str, str], make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """Slots moved from master to master, a few hundred at a time round the three, for as long as
    the scorer works through the input (at least once while it is mid-stream)."""
    cluster = make_cluster()
    events = simulated_events(users=150, days=40, seed=12)
    produce(SHARED, names["input_topic"], [(u.encode(), v) for u, v in events])
    moves: list[tuple[float, float]] = []  # committed share when each reshard began and ended

    def reshard_while_working(progress: GroupProgress, procs: Procs, _: object) -> None:
        wait_for("a tenth committed", lambda: progress.fraction() >= 0.1, 90, procs)
        _reset_stats(cluster)
        masters = cluster.masters()
        i = 0
        while progress.fraction() < 1.0 and all(p.poll() is None for p in procs.values()):
            began = progress.fraction()
            cluster.reshard(SLOTS_PER_MOVE, masters[i % 3], masters[(i + 1) % 3])
            moves.append((began, progress.fraction()))
            i += 1

    _run_to_the_end(
        names, cluster.url, tmp_path / "scorer.log", during=reshard_while_working,
        batch_max_records=100,
    )  # fmt: skip
    assert any(end < 1.0 for _, end in moves), moves  # a reshard ended mid-stream
    redirects = _redirects(cluster)
    assert redirects["MOVED"] > 0, redirects  # the scorer was told, and followed
    print(f"reshards (committed share before, after): {moves}; redirects answered {redirects}")
    assert_same_as_uninterrupted(names, redis_url=cluster.url)


@pytest.mark.slow
def test_a_master_killed_mid_stream_fails_over_and_loses_nothing(
    names: dict[str, str], make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """SIGKILL of a master at 30 % committed; its replica takes over after the node timeout;
    then SIGKILL of the scorer, restarted from its last commit; the killed node comes back as
    a replica. Saves wait for a replica (WAIT), so none that was committed can be lost with
    the master, and the replayed batches are recognised, so none is applied twice."""
    cluster = make_cluster(replicas=1, node_timeout_ms=1000)
    events = simulated_events(users=150, days=40, seed=13)
    produce(SHARED, names["input_topic"], [(u.encode(), v) for u, v in events])
    victim = cluster.masters()[0]
    seen: dict[str, object] = {}
    log = tmp_path / "scorer.log"

    def kill_a_master(
        progress: GroupProgress,
        procs: Procs,
        crash_and_restart: Callable[[Callable[[], object]], None],
    ) -> None:
        wait_for("30% committed", lambda: progress.fraction() >= 0.3, 90, procs, interval_s=0.01)
        victim.kill()
        seen["share_at_kill"] = progress.fraction()
        wait_for("a replica to take over", lambda: cluster.ok(running_only=True), 60, procs)
        seen["masters_after"] = sorted(n.port for n in cluster.masters())
        # The promoted master has no replica yet, so saves touching it fail their WAIT and are
        # retried while the other masters already hold their part. The scorer is killed then:
        # restarted from its last commit, it replays a batch whose states are saved (applied
        # twice unless recognised).
        wait_for("a save waiting for a replica", lambda: _waits(log) > 0, 60, procs)
        seen["share_at_crash"] = progress.fraction()

        def rejoin() -> None:  # back on its directory: the new master's replica
            victim.start()
            wait_for("the cluster whole again", cluster.replicas_in_sync, 60)

        crash_and_restart(rejoin)

    text = _run_to_the_end(
        names, cluster.url, log, during=kill_a_master, batch_max_records=200,
        redis_wait_replicas=1,
    )  # fmt: skip
    assert seen["share_at_kill"] < 1.0 and seen["share_at_crash"] < 1.0, seen  # type: ignore[operator]
    assert victim.port not in seen["masters_after"], seen  # type: ignore[operator]
    assert victim not in cluster.masters()  # it came back as a replica
    retried = [ln for ln in text.splitlines() if "retrying in" in ln and "Redis Cluster" in ln]
    assert retried, tail(log)
    print(f"failover: {len(retried)} retried steps, e.g. {retried[0][:400]}")
    assert_same_as_uninterrupted(names, redis_url=cluster.url)


def _waits(log: Path) -> int:
    """Saves the scorer retried because too few replicas acknowledged them (WAIT)."""
    return sum("replicas acknowledged" in ln for ln in log.read_text().splitlines())
