"""The Kafka source's commit path during a rebalance, on the real broker.

A consumer that is mid-batch when another member joins cannot commit until it polls again
and rejoins. The source must neither block nor retry in a loop there (the rejoin only happens
in ``poll``), and must not drop the offsets either: they go out after the next poll for the
partitions it still owns. A scorer that lost this ran on without committing anything.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient

from devstack import GroupProgress, create_topics, delete_topics, produce
from streamscore.adapters.kafka import KafkaSource
from streamscore.ports import SourceRecord

from .conftest import BOOTSTRAP, SHARED
from .helpers import settings_for

pytestmark = pytest.mark.integration


@pytest.fixture
def two_partition_topic(names: dict[str, str]) -> Iterator[str]:
    topic = names["input_topic"] + "-2p"
    create_topics(SHARED, {topic: 2})
    try:
        yield topic
    finally:
        delete_topics(SHARED, [topic])


def _group_state(group: str) -> str:
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    try:
        return str(admin.describe_groups([group])[group].get("group_state", ""))
    finally:
        admin.close()


def _poll_until(source: KafkaSource, cond: object, timeout_s: float) -> list[SourceRecord]:
    got: list[SourceRecord] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got += source.poll(500, 0.2)
        if callable(cond) and cond(got):
            return got
    raise AssertionError(f"condition not met in {timeout_s}s; owned={source.owned}")


def test_commit_during_a_rebalance_is_deferred_not_lost(
    names: dict[str, str], two_partition_topic: str
) -> None:
    topic, group = two_partition_topic, names["kafka_group_id"]
    produce(SHARED, topic, [(f"u{i}".encode(), b"{}") for i in range(40)])
    settings = settings_for(names, session_timeout_ms=10_000)
    first = KafkaSource(settings, topic=topic, group_id=group)
    second: KafkaSource | None = None
    stop = threading.Event()
    poller: threading.Thread | None = None
    try:
        records = _poll_until(first, lambda got: len(got) == 40, 60)
        assert first.owned == {0, 1}
        saved = {r.partition: r.offset + 1 for r in records}

        # A second member joins while the first is "busy" (not polling): the group waits for
        # the first to rejoin, and any commit it sends meanwhile is refused.
        second = KafkaSource(settings, topic=topic, group_id=group)
        joined = second

        def keep_polling() -> None:
            while not stop.is_set():
                joined.poll(500, 0.2)

        poller = threading.Thread(target=keep_polling, daemon=True)
        poller.start()
        deadline = time.monotonic() + 30
        while "Rebalance" not in _group_state(group):
            assert time.monotonic() < deadline, _group_state(group)
            time.sleep(0.1)

        # As in the scorer: a short poll starts the rejoin and returns, the batch is
        # processed, then its offsets are committed while the client is mid-rebalance. The
        # refusal is answered asynchronously, in a later poll or commit.
        while not first.commit_status().failed:
            first.poll(500, 0.01)
            started = time.monotonic()
            first.commit(saved)  # must neither raise nor wait for the rebalance
            assert time.monotonic() - started < 5
            assert time.monotonic() < deadline, "the commit was never refused"
        # The poll that brought the refusal may also have finished the rebalance: offsets of
        # partitions that moved are dropped (their new owner commits), the others kept.
        kept_offsets = {p: o for p, o in saved.items() if p in first.owned}
        assert first.uncommitted == kept_offsets, "refused offsets must be kept, not dropped"

        # The next polls rejoin; the offsets of the partitions still owned then go out.
        _poll_until(first, lambda _: not first.uncommitted and len(first.owned) == 1, 60)
        kept = next(iter(first.owned))
        progress = GroupProgress(SHARED, group, topic)
        try:
            committed = progress.committed()
        finally:
            progress.close()
        assert committed.get(kept) == saved[kept], committed
    finally:
        stop.set()
        if poller is not None:
            poller.join(10)
        first.close()
        if second is not None:
            second.close()


def test_static_membership_reaches_the_broker_and_a_duplicate_id_is_a_clear_error(
    names: dict[str, str],
) -> None:
    """kafka_group_instance_id makes the consumer a static member (KIP-345): the broker knows
    it by that id, which is what lets a restarted process take its partitions back at once
    (bench/restart.py times it). Two live processes with one id fence each other: the older
    one stops with an error naming the setting instead of retrying for ever."""
    from streamscore.errors import ConfigError

    settings = settings_for(names, kafka_group_instance_id="scorer-0", session_timeout_ms=6000)
    first = KafkaSource(settings)
    second: KafkaSource | None = None
    try:
        _poll_until(first, lambda _: bool(first.owned), 30)
        admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        try:
            group = admin.describe_groups([names["kafka_group_id"]])[names["kafka_group_id"]]
        finally:
            admin.close()
        assert [m["group_instance_id"] for m in group["members"]] == ["scorer-0"]
        second = KafkaSource(settings)  # same id: the broker fences the first
        _poll_until(second, lambda _: bool(second.owned), 30)
        deadline = time.monotonic() + 30
        with pytest.raises(ConfigError) as info:
            while time.monotonic() < deadline:
                first.poll(100, 0.2)
                first.commit(dict.fromkeys(first.owned, 0))
        assert "STREAMSCORE_KAFKA_GROUP_INSTANCE_ID" in str(info.value)
    finally:
        if second is not None:
            second.close()
        first.close()
