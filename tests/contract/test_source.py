"""The ``Source`` contract, run against every source: memory, files and Kafka.

What the runtime relies on (``ports.Source``): a rebalance is applied inside a poll, before
the records it brings; what is committed is exactly what was asked, for owned partitions
only; a source opened again in the same group starts at the last commit; a revoked partition
is neither read nor committed, and when it comes back it is read again from its commit; lag,
commit status and health tell the truth. Kafka runs on a fresh topic and group of the test
broker (and fails, not skips, under ``STREAMSCORE_STACK=1`` when there is none).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from streamscore.ports import Source, SourceRecord

from .conftest import SourceHarness, event_value

DEADLINE_S = 45.0


class Reader:
    """Polls a source, keeping its records and the rebalances in the order they happened."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.timeline: list[tuple[str, object]] = []
        self.records: list[SourceRecord] = []
        source.on_rebalance(self._assigned, self._revoked)

    def _assigned(self, partitions: set[int]) -> None:
        self.timeline.append(("assigned", set(partitions)))

    def _revoked(self, partitions: set[int]) -> None:
        self.timeline.append(("revoked", set(partitions)))

    def events(self, kind: str) -> list[set[int]]:
        return [p for k, p in self.timeline if k == kind]  # type: ignore[misc]

    def owned(self) -> set[int]:
        owned: set[int] = set()
        for kind, parts in self.timeline:
            if kind == "assigned":
                owned |= parts  # type: ignore[operator]
            elif kind == "revoked":
                owned -= parts  # type: ignore[operator]
        return owned

    def poll(self, max_records: int = 100) -> list[SourceRecord]:
        got = self.source.poll(max_records, 0.1)
        for rec in got:
            self.timeline.append(("record", rec))
        self.records += got
        return got

    def poll_until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not condition():
            assert time.monotonic() < deadline, f"{what}: not within {DEADLINE_S}s; {self}"
            self.poll()

    def __repr__(self) -> str:
        rebalances = [(k, p) for k, p in self.timeline if k != "record"]
        counts = {p: len(self.offsets(p)) for p in sorted({r.partition for r in self.records})}
        return f"rebalances {rebalances}, records read per partition {counts}"

    def offsets(self, partition: int, since: int = 0) -> list[int]:
        return [r.offset for r in self.records[since:] if r.partition == partition]


def _all(h: SourceHarness) -> range:
    return range(h.partitions)


def test_assignment_is_applied_inside_a_poll_before_its_records(
    source_harness: SourceHarness,
) -> None:
    h = source_harness
    h.produce(dict.fromkeys(_all(h), 5))
    r = Reader(h.open())
    assert r.timeline == [], "a rebalance was applied outside poll"
    r.poll_until(lambda: len(r.records) == 5 * h.partitions, "reading every record")
    assert r.owned() == set(_all(h))
    owned: set[int] = set()
    for kind, item in r.timeline:
        if kind == "assigned":
            owned |= item  # type: ignore[operator]
        else:
            assert isinstance(item, SourceRecord) and item.partition in owned
    for p in _all(h):
        assert r.offsets(p) == [0, 1, 2, 3, 4]
        assert [x.value for x in r.records if x.partition == p] == [
            event_value(p, o) for o in range(5)
        ]


def test_what_is_committed_is_exactly_what_was_asked(source_harness: SourceHarness) -> None:
    h = source_harness
    h.produce(dict.fromkeys(_all(h), 6))
    r = Reader(h.open())
    r.poll_until(lambda: len(r.records) == 6 * h.partitions, "reading every record")
    asked = {p: 4 - p for p in _all(h)}
    r.source.commit(asked)
    r.poll_until(lambda: not r.source.commit_status().pending, "the commit confirmed")
    assert h.committed() == asked
    assert r.source.commit_status().failed == 0


def test_a_source_opened_again_resumes_at_the_last_commit(source_harness: SourceHarness) -> None:
    h = source_harness
    h.produce(dict.fromkeys(_all(h), 6))
    first = Reader(h.open())
    first.poll_until(lambda: len(first.records) == 6 * h.partitions, "reading every record")
    first.source.commit({p: 2 + p for p in _all(h)})
    first.poll_until(lambda: not first.source.commit_status().pending, "the commit confirmed")
    first.source.close()

    again = Reader(h.open())
    want = {p: list(range(2 + p, 6)) for p in _all(h)}
    total = sum(len(v) for v in want.values())
    again.poll_until(lambda: len(again.records) >= total, "reading from the commit")
    for _ in range(3):
        again.poll()  # and nothing more
    assert {p: again.offsets(p) for p in _all(h)} == want


def test_a_revoked_partition_is_neither_read_nor_committed_and_returns_from_its_commit(
    source_harness: SourceHarness,
) -> None:
    h = source_harness
    h.produce(dict.fromkeys(_all(h), 4))
    r = Reader(h.open())
    r.poll_until(lambda: len(r.records) == 4 * h.partitions, "reading every record")
    r.source.commit(dict.fromkeys(_all(h), 1))
    r.poll_until(lambda: not r.source.commit_status().pending, "the first commit confirmed")

    h.take_away(r.source)
    r.poll_until(lambda: bool(r.events("revoked")), "a revocation")
    moved = set().union(*r.events("revoked"))
    kept = set(_all(h)) - moved
    assert moved and r.owned() == kept, r
    since = len(r.records)
    if h.produces_after_open:
        h.produce(dict.fromkeys(_all(h), 3))
        r.poll_until(
            lambda: all(len(r.offsets(p, since)) == 3 for p in kept), "the kept partitions' news"
        )
    assert not [x for x in r.records[since:] if x.partition in moved], "read a revoked partition"

    read_up_to = {p: max(r.offsets(p)) + 1 for p in _all(h)}
    r.source.commit(read_up_to)
    r.poll_until(lambda: not r.source.commit_status().pending, "the second commit confirmed")
    committed = h.committed()
    assert {p: committed.get(p) for p in moved} == dict.fromkeys(moved, 1), (committed, r)
    assert {p: committed[p] for p in kept} == {p: read_up_to[p] for p in kept}, (committed, r)

    h.give_back(r.source)
    back, since = len(r.events("assigned")), len(r.records)
    r.poll_until(lambda: len(r.events("assigned")) > back, "the partitions coming back")
    assert set().union(*r.events("assigned")[back:]) >= moved, r
    ends = {p: h.next[p] for p in moved}  # type: ignore[attr-defined]
    r.poll_until(
        lambda: all(len(r.offsets(p, since)) >= ends[p] - 1 for p in moved), "re-reading them"
    )
    for p in moved:
        assert r.offsets(p, since) == list(range(1, ends[p])), f"not re-read from 1: {r}"


def test_lag_health_and_commit_status_tell_the_truth(source_harness: SourceHarness) -> None:
    h = source_harness
    h.produce(dict.fromkeys(_all(h), 10))
    total = 10 * h.partitions
    r = Reader(h.open())
    assert r.source.health().last_poll_ms is None
    before = time.time_ns() // 1_000_000
    r.poll_until(lambda: bool(r.records), "a first record")
    after = time.time_ns() // 1_000_000
    health = r.source.health()
    assert health.connected
    assert health.last_poll_ms is not None and before <= health.last_poll_ms <= after
    lag = r.source.lag()
    assert set(lag) <= r.owned()
    if h.exact_lag and r.owned() == set(_all(h)):
        assert sum(lag.values()) == total - len(r.records)
    assert sum(lag.values()) <= total - len(r.records)
    r.poll_until(lambda: len(r.records) == total, "reading every record")
    r.poll_until(lambda: set(r.source.lag()) == set(_all(h)), "lag of every partition")
    assert r.source.lag() == dict.fromkeys(_all(h), 0)
    status = r.source.commit_status()
    assert (dict(status.pending), status.failed) == ({}, 0)
    r.source.commit({0: 3})
    if h.name == "kafka":
        assert r.source.commit_status().pending == {0: 3}, "unconfirmed commits show as pending"
    r.poll_until(lambda: not r.source.commit_status().pending, "the commit confirmed")
    r.source.close()
    assert not r.source.health().connected


def test_a_source_read_to_its_end_is_caught_up(source_harness: SourceHarness) -> None:
    h = source_harness
    h.produce(dict.fromkeys(_all(h), 3))
    r = Reader(h.open())
    r.poll_until(lambda: len(r.records) == 3 * h.partitions, "reading every record")
    r.poll_until(lambda: r.source.caught_up(set(_all(h))) == set(_all(h)), "caught up")
    assert r.source.caught_up({99}) == set(), "a partition it does not own"
    assert r.source.exhausted() is h.finite
