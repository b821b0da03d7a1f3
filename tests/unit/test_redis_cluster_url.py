"""``redis_url`` for a Redis Cluster: ``redis+cluster://host:port,host:port`` (no servers)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from streamscore.adapters.redis_cluster import ClusterUrl, is_cluster_url, parse_cluster_url
from streamscore.adapters.redis_connect import redact_url, target
from streamscore.config import Settings
from streamscore.errors import ConfigError


def test_seeds_tls_and_credentials_come_from_the_url() -> None:
    url = parse_cluster_url("redis+cluster://10.0.0.1:7001,10.0.0.2:7002, redis-c.internal")
    assert url == ClusterUrl(
        seeds=(("10.0.0.1", 7001), ("10.0.0.2", 7002), ("redis-c.internal", 6379)), tls=False
    )
    assert url.shown == "10.0.0.1:7001,10.0.0.2:7002,redis-c.internal:6379"
    tls = parse_cluster_url("rediss+cluster://app:s%40cret@[::1]:7001,h:7002/0")
    assert tls.tls and tls.username == "app" and tls.password == "s@cret"
    assert tls.seeds == (("::1", 7001), ("h", 7002))
    assert tls.shown == "[::1]:7001,h:7002"
    assert parse_cluster_url("REDIS+CLUSTER://h:1/").seeds == (("h", 1),)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://", "no seed node"),
        ("redis+cluster://h:1/3", "only database 0"),
        ("redis+cluster://h:x", "not a number"),
        ("redis+cluster://h:70000", "out of range"),
        ("redis+cluster://:1", "has no host"),
        ("redis+cluster://h:1?ssl=true", "no query string"),
        ("redis://h:1", "starts with redis+cluster://"),
    ],
)
def test_a_wrong_cluster_url_says_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_cluster_url(url)


def test_the_url_picks_the_kind_and_messages_name_the_seeds() -> None:
    assert is_cluster_url("rediss+cluster://h:1") and not is_cluster_url("rediss://h:1")
    one = target("redis://:pw@127.0.0.1:6379/0")
    assert (one.kind, one.where, one.tls) == ("Redis", "redis://:***@127.0.0.1:6379/0", False)
    many = target("rediss+cluster://app:pw@h1:7001,h2:7002")
    assert (many.kind, many.where, many.tls) == (
        "Redis Cluster",
        "seed nodes h1:7001,h2:7002",
        True,
    )
    assert redact_url("redis+cluster://app:pw@h1:7001,h2:7002") == (
        "redis+cluster://app:***@h1:7001,h2:7002"
    )
    shown = re.escape("STREAMSCORE_REDIS_URL redis+cluster://:***@h:1/2: ")
    with pytest.raises(ConfigError, match=shown + ".*only database 0"):
        target("redis+cluster://:pw@h:1/2")


def test_tls_files_need_a_tls_url_of_either_kind(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    Settings(redis_url="rediss+cluster://h:7001,h:7002", redis_ssl_ca_certs=ca)
    with pytest.raises(ValidationError, match=r"rediss\+cluster://"):
        Settings(redis_url="redis+cluster://h:7001", redis_ssl_ca_certs=ca)


def test_wait_replicas_is_not_negative() -> None:
    assert Settings().redis_wait_replicas == 0
    with pytest.raises(ValidationError):
        Settings(redis_wait_replicas=-1)
