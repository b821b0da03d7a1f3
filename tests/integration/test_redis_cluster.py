"""The Redis Cluster of the dev stack (``redis_cluster`` fixture): three real masters on
loopback that a cluster client writes through, every slot served."""

from __future__ import annotations

import uuid

import pytest
import redis

from devstack import RedisCluster

pytestmark = pytest.mark.integration


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
