"""The input's key contract (issue 10, item 2): a record is keyed by its event's user_id.

A record with a null or another key reaches whatever partition its producer picked, so one
user's events could be on two partitions: a redelivery of one of them was not recognised
(the state knew a single partition's position), and two processes could update one user.

- ``dead_letter`` (default): a ``key_mismatch`` dead letter naming both keys; never applied.
- ``rekey``: a copy keyed by the user id, produced to the input topic; the copies (which a
  crash may produce twice) are applied exactly once.
- A state recognises a redelivery on any partition its records came from.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamscore import key_contract
from streamscore.adapters.kafka import rekeyed_from
from streamscore.adapters.memory import ListSink
from streamscore.config import load_settings
from streamscore.core.events import Event, decode_event
from streamscore.core.records import TOPIC_DLQ, TOPIC_EVENTS
from streamscore.core.state import UserState
from streamscore.core.values import Output
from streamscore.errors import DeadLetterLimitExceeded
from streamscore.guards import DeadLetterGuard
from streamscore.key_contract import mismatch
from streamscore.ports import SourceRecord
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event
from tests.statecheck import memory_pipeline, state_diffs

NOW = 1_767_225_600_000 + 400 * 86_400_000


def _shop() -> list[tuple[str, bytes]]:
    out = []
    for e in ShopSimulator(SimulationConfig(users=30, days=20, seed=7)).events():
        assert isinstance(e, dict)
        out.append((str(e["user_id"]), encode_event(e)))
    return out


def _home(uid: str) -> int:
    return sum(uid.encode()) % 3


def _keyed_right(events: list[tuple[str, bytes]]) -> list[SourceRecord]:
    """Every record keyed by its user id, on its user's partition."""
    offsets = [0, 0, 0]
    out = []
    for uid, value in events:
        p = _home(uid)
        out.append(SourceRecord(TOPIC_EVENTS, p, offsets[p], value, key=uid.encode()))
        offsets[p] += 1
    return out


def _keyed_badly(events: list[tuple[str, bytes]]) -> list[SourceRecord]:
    """Every third record with a null key and every fifth with another user's, spread over
    the partitions as a round-robin producer would."""
    out = []
    for i, (uid, value) in enumerate(events):
        key: bytes | None = uid.encode()
        if i % 3 == 0:
            key = None
        elif i % 5 == 0:
            key = b"not-" + uid.encode()
        p = _home(uid) if key == uid.encode() else i % 3
        out.append(SourceRecord(TOPIC_EVENTS, p, i, value, key=key))
    return out


class _Sink(ListSink):
    """A list sink that keeps the outputs themselves too (raw bytes and headers)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Output] = []

    def flush(self) -> None:
        self.sent += self.pending
        super().flush()


def _run(records: list[SourceRecord], **settings: Any) -> tuple[dict[str, UserState], _Sink]:
    pipeline, store, _ = memory_pipeline(
        load_settings(metrics_port=0, **settings), records, keyed=True, clock=lambda: NOW
    )
    sink = pipeline.sink = _Sink()
    pipeline.run_until_exhausted()
    return {u: UserState.from_bytes(u, raw) for u, raw in store.states.items()}, sink


def decode(raw: bytes) -> Event:
    return decode_event(raw, now_ms=NOW, limits=load_settings().event_limits())


def _event(uid: str) -> tuple[bytes, Event]:
    raw = orjson.dumps({"event_id": "e1", "user_id": uid, "type": "page_view", "ts": NOW})
    return raw, decode(raw)


@pytest.mark.parametrize(("key", "shown"), [(None, "null"), (b"u9", "b'u9'")])
def test_a_record_not_keyed_by_its_user_id_breaks_the_contract(
    key: bytes | None, shown: str
) -> None:
    raw, event = _event("u1")
    why = mismatch(SourceRecord(TOPIC_EVENTS, 0, 0, raw, key=key), event)
    assert why is not None and why.error_type == "key_mismatch"
    assert f"record key is {shown} but its user_id is 'u1'" in str(why)
    assert "STREAMSCORE_ON_KEY_MISMATCH=rekey" in str(why)
    assert mismatch(SourceRecord(TOPIC_EVENTS, 0, 0, raw, key=b"u1"), event) is None


def test_badly_keyed_records_are_dead_lettered_and_never_applied() -> None:
    events = _shop()
    records = _keyed_badly(events)
    states, sink = _run(records)
    bad = [
        r for r in records if r.key is None or r.key != orjson.loads(r.value)["user_id"].encode()
    ]
    letters = sink.records[TOPIC_DLQ]
    assert {r["error_type"] for r in letters} == {"key_mismatch"}
    assert sorted((r["source"]["partition"], r["source"]["offset"]) for r in letters) == sorted(  # type: ignore[index]
        (r.partition, r.offset) for r in bad
    )
    assert sum(s.features.events for s in states.values()) == len(records) - len(bad)


def test_mostly_badly_keyed_input_stops_with_advice_on_keys() -> None:
    events = _shop()[:400]
    records = [SourceRecord(TOPIC_EVENTS, 0, i, v, key=None) for i, (_, v) in enumerate(events)]
    pipeline, _, _ = memory_pipeline(
        load_settings(metrics_port=0),
        records,
        keyed=True,
        clock=lambda: NOW,
        dlq_guard=DeadLetterGuard(0.95, 200),
    )
    with pytest.raises(DeadLetterLimitExceeded, match="not keyed by their user_id"):
        pipeline.run_until_exhausted()


def _as_rekeyed(events: list[tuple[str, bytes]], repeat_after: int) -> list[SourceRecord]:
    """The input topic of a badly keyed producer and a scorer that re-keys: each badly keyed
    record, its copy on the user's partition right after it (produced in the same batch), and
    the copy once more ``repeat_after`` records later (a crash after the flush, before the
    commit, sends a batch's copies again). Offsets count every record, so they rise on every
    partition."""
    out: list[SourceRecord] = []
    again: dict[int, SourceRecord] = {}

    def add(
        p: int, value: bytes, key: bytes | None, origin: tuple[int, int] | None = None
    ) -> SourceRecord:
        rec = SourceRecord(TOPIC_EVENTS, p, len(out), value, key=key, origin=origin)
        out.append(rec)
        return rec

    for i, (uid, value) in enumerate(events):
        if (repeat := again.pop(i, None)) is not None:
            add(repeat.partition, repeat.value, repeat.key, repeat.origin)
        if i % 3 and i % 5:
            add(_home(uid), value, uid.encode())
            continue
        bad = add(i % 3, value, None if i % 3 == 0 else b"not-" + uid.encode())
        raw, event = bad.value, decode(bad.value)
        copy = key_contract.rekeyed_copy(bad, event)
        origin = rekeyed_from(copy.headers)
        assert copy.raw == raw and origin == (bad.partition, bad.offset)
        again[i + repeat_after] = add(_home(uid), raw, uid.encode(), origin)
    return out


def test_rekeyed_copies_are_applied_once_even_when_a_crash_sent_them_twice() -> None:
    events = _shop()
    topic = _as_rekeyed(events, repeat_after=50)
    got, sink = _run(topic, on_key_mismatch="rekey")
    # The scorer re-keys exactly the badly keyed records, naming each one's position.
    bad = [(r.partition, r.offset) for r in topic if r.key is None or r.key.startswith(b"not-")]
    copies = [o for o in sink.sent if o.topic == TOPIC_EVENTS]
    assert sorted(rekeyed_from(c.headers) or (-1, -1) for c in copies) == sorted(bad)
    assert TOPIC_DLQ not in sink.records
    # Each event applied once, as if every record had been keyed rightly.
    want, _ = _run(_keyed_right(events))
    assert sum(s.features.events for s in got.values()) == len(events)
    assert got.keys() == want.keys()
    for uid in want:
        assert _only_positions(got[uid], want[uid]), (uid, state_diffs(got[uid], want[uid]))


def _only_positions(got: UserState, want: UserState) -> bool:
    """Two states of one user that differ only where their records sat in the input."""
    skip = ("partition:", "offset:", "offsets_elsewhere:", "rekeyed:")
    return all(d.startswith(skip) for d in state_diffs(got, want))


def test_a_redelivery_on_any_partition_is_recognised() -> None:
    s = UserState("u1")
    s.mark(0, 40, "a")
    s.mark(1, 7, "b")  # the same user's record on another partition
    for i in range(20):
        s.mark(1, 8 + i, f"c{i}")  # the id ring forgets "a"
    assert s.seen(0, 40, "a"), "a redelivery of partition 0 after records of partition 1"
    assert s.seen(1, 7, "b")
    assert not s.seen(0, 41, "d")
    again = UserState.from_bytes("u1", s.to_bytes())
    assert again.seen(0, 40, "a") and again.offsets_elsewhere == {0: 40}
    s.mark(2, 3, "r", origin=(0, 99))
    assert UserState.from_bytes("u1", s.to_bytes()).seen(2, 4, "r2", (0, 99))
