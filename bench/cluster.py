"""The Redis Cluster a benchmark runs against: ``BENCH_REDIS_CLUSTER`` (a
``redis+cluster://`` URL), else the local stack's (``scripts/stack up --with-redis-cluster``)
when it runs, else a private 3-master cluster on free loopback ports, started for the run and
stopped after it. Keys of the run's prefixes are deleted at the end either way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from bench.common import local_stack, log
from devstack import RedisCluster, free_cluster_ports
from streamscore.adapters.redis_cluster import parse_cluster_url


class BenchCluster:
    """Where the cluster is (``url``), its node pids (for CPU accounting) and cleanup."""

    def __init__(self, work_dir: Path) -> None:
        self._own: RedisCluster | None = None
        self._nodes: RedisCluster | None = None
        given = os.environ.get("BENCH_REDIS_CLUSTER")
        if given:
            self.url = given
            return
        shared = local_stack().cluster
        if all(shared.running()) and shared.ok():
            self._nodes = shared
            log(f"redis cluster: the stack's, {shared.seeds}")
        else:
            self._own = self._nodes = RedisCluster(work_dir / "redis-cluster", free_cluster_ports())
            self._own.start()
            log(f"redis cluster: a private one for this run, {self._own.seeds}")
        self.url = self._nodes.url

    def pids(self) -> dict[str, int]:
        """``redis-cluster-<port>``: pid of each node this run can see."""
        if self._nodes is None:
            return {}
        return {
            f"redis-cluster-{n.port}": pid
            for n, pid in zip(self._nodes.nodes, self._nodes.running(), strict=True)
            if pid is not None
        }

    def cleanup(self, prefixes: Iterable[str]) -> int:
        """Delete the keys of these prefixes; stop a private cluster. Keys deleted."""
        from redis.cluster import ClusterNode
        from redis.cluster import RedisCluster as Client

        deleted = 0
        seeds = [ClusterNode(h, p) for h, p in parse_cluster_url(self.url).seeds]
        client = Client(startup_nodes=seeds)
        try:
            for prefix in prefixes:
                for key in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
                    deleted += int(client.delete(key))
        finally:
            client.close()
            if self._own is not None:
                self._own.stop()
        return deleted
