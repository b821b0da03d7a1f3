"""Erasure on memory adapters: the request's meaning, the marks, and the pipeline end to end
(deletion, tombstones, confirmation, late events, a crash between deleting and confirming)."""

from __future__ import annotations

from typing import Any

import pytest

from streamscore.adapters.memory import (
    ListErasureSource,
    ListSink,
    ListSource,
    MemoryGroup,
    MemoryStateStore,
)
from streamscore.adapters.pseudonymous import PseudonymousStore
from streamscore.config import load_settings
from streamscore.core.erasure import (
    ErasureMarks,
    Mark,
    decode_erasure,
    encode_request,
    fingerprint,
)
from streamscore.core.pseudonym import Pseudonyms
from streamscore.core.records import (
    TOPIC_CONFIRMATIONS,
    TOPIC_DLQ,
    TOPIC_EVENTS,
    TOPIC_SCORES,
    USER_KEYED_TOPICS,
    ErasureConfirmation,
)
from streamscore.core.state import UserState
from streamscore.core.timeutil import DAY_MS, MINUTE_MS
from streamscore.erasures import Erasures
from streamscore.errors import InvalidEvent
from streamscore.ports import SourceRecord
from streamscore.runtime import Pipeline
from streamscore.simulator import encode_event
from streamscore.wiring import in_process_scorer

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
LATENESS = 5 * MINUTE_MS  # the default allowed lateness
KEEP = LATENESS + DAY_MS
KEEP_1H = LATENESS + 3_600_000


def _event(user: str, n: int, ts: int, kind: str = "page_view", **extra: Any) -> bytes:
    return encode_event(
        {"event_id": f"{user}-{n}", "user_id": user, "type": kind, "ts": ts, **extra}
    )


# -- the request and the marks ------------------------------------------------------------------


def test_a_request_decodes_and_must_be_keyed_by_its_user() -> None:
    raw = encode_request("user-one", "r1", T0)
    e = decode_erasure(raw, b"user-one")
    assert (e.request_id, e.user_id, e.ts_ms) == ("r1", "user-one", T0)
    with pytest.raises(InvalidEvent) as bad_key:
        decode_erasure(raw, b"user-two")
    assert bad_key.value.error_type == "key_mismatch"
    for bad in (b"{}", b"not json", b'{"request_id":"r","user_id":"u","requested_at":"today"}'):
        with pytest.raises(InvalidEvent) as exc:
            decode_erasure(bad, None)
        assert exc.value.error_type == "invalid_erasure"


def test_fingerprints_hide_the_id_and_depend_on_the_key() -> None:
    plain, keyed = fingerprint("alice@example.com"), fingerprint("alice@example.com", b"k" * 32)
    assert "alice" not in plain and "alice" not in keyed
    assert plain != keyed != fingerprint("alice@example.com", b"j" * 32)
    assert len(plain) == len(keyed) == 32


def test_marks_block_older_events_until_the_watermark_leaves_them_behind() -> None:
    marks = ErasureMarks(KEEP)
    assert not marks.blocks("user-one", T0)
    marks.add(0, fingerprint("user-one"), Mark(T0, T0 + KEEP))
    assert marks.blocks("user-one", T0) and marks.blocks("user-one", T0 - DAY_MS)
    assert not marks.blocks("user-one", T0 + 1)  # activity after the erasure is new
    assert not marks.blocks("user-two", T0)
    assert marks.expired({0: T0 + KEEP}) == {}
    assert marks.expired({0: T0 + KEEP + 1}) == {0: [fingerprint("user-one")]}
    assert not marks.blocks("user-one", T0)


# -- the pipeline -------------------------------------------------------------------------------


KEY = b"a pseudonym key of 32 bytes, ok."


@pytest.fixture(params=["plain", "pseudonymous"])
def mode(request: pytest.FixtureRequest) -> str:
    """Every pipeline test runs with ids in the store, and with tokens only."""
    return str(request.param)


class _Shop:
    """A pipeline on memory adapters with a user-erasures topic, restartable on one store."""

    def __init__(self, mode: str, store: MemoryStateStore | None = None, **settings: Any) -> None:
        self.settings = load_settings(metrics_port=0, **settings)
        self.inner = store or MemoryStateStore()
        self.pseudonyms = Pseudonyms(KEY) if mode == "pseudonymous" else None
        self.store: MemoryStateStore | PseudonymousStore = (
            self.inner
            if self.pseudonyms is None
            else PseudonymousStore(self.inner, self.pseudonyms)
        )
        self.requests = ListErasureSource(partitions=1)
        self.group = MemoryGroup()
        self.log: list[SourceRecord] = []  # the input topic, as produced
        self.start()

    def start(self) -> None:
        """A new process on the same store, topics and consumer group."""
        self.source = ListSource(list(self.log), partitions=[0], group=self.group, endless=True)
        self.sink = ListSink()
        self.erasures = Erasures(
            self.requests,
            self.store,
            keep_ms=round(
                (self.settings.allowed_lateness_seconds + self.settings.erasure_margin_seconds)
                * 1000
            ),
            key=KEY if self.pseudonyms else None,
        )
        self.pipeline = Pipeline(
            self.source,
            self.store,
            self.sink,
            in_process_scorer(self.settings.scoring())[0],
            limits=self.settings.event_limits(),
            poll_timeout_s=0.0,
            clock=lambda: T0 + 400 * DAY_MS,
            erasures=self.erasures,
        )

    def send(self, user: str, ts: int, kind: str = "page_view", **extra: Any) -> None:
        n = len(self.log)
        self.log.append(SourceRecord(TOPIC_EVENTS, 0, n, _event(user, n, ts, kind, **extra)))
        self.source.produce(0, self.log[-1].value)

    def forget(self, user: str, ts: int, request: str = "r1") -> None:
        self.requests.produce(0, user, encode_request(user, request, ts))

    def run(self) -> None:
        self.pipeline.run_once()

    def state(self, user: str) -> UserState | None:
        raw = self.store.load([user]).get(user)
        return None if raw is None else UserState.from_bytes(user, raw)

    def stored_id(self, user: str) -> str:
        return user if self.pseudonyms is None else self.pseudonyms.token(user)

    def queued(self, user: str) -> bool:
        return self.stored_id(user) in self.inner._due.get(0, {})

    def raw_ids_in_store(self, users: list[str]) -> list[str]:
        """Users whose id shows anywhere in the store underneath."""
        inner = self.inner
        blobs = [*inner.states, *inner.states.values()]
        blobs += [u for due in inner._due.values() for u in due]
        blobs += [fp for marks in inner._marks.values() for fp in marks]
        return [u for u in users if any(u.encode() in (b if isinstance(b, bytes) else b.encode())
                                        for b in blobs)]  # fmt: skip


def _history(shop: _Shop) -> None:
    """Two users buy and browse for three weeks; user-one has pending snapshots by the end."""
    for day in range(21):
        ts = T0 + day * DAY_MS
        if day % 3 == 0:
            shop.send("user-one", ts, "purchase", amount=20.0)
        else:
            shop.send("user-one", ts)
        shop.send("user-two", ts + 1000)
    shop.run()


def test_forget_deletes_state_and_due_entry_retracts_outputs_and_confirms(mode: str) -> None:
    shop = _Shop(mode)
    _history(shop)
    before = shop.state("user-one")
    assert before is not None and before.snapshots and shop.queued("user-one")
    assert any(r["user_id"] == "user-one" for r in shop.sink.records[TOPIC_SCORES])
    erased_at = T0 + 21 * DAY_MS
    shop.forget("user-one", erased_at)
    shop.run()

    assert shop.state("user-one") is None
    assert not shop.queued("user-one")
    assert shop.raw_ids_in_store(["user-one"]) == []
    if shop.pseudonyms is not None:
        assert shop.raw_ids_in_store(["user-two"]) == []  # tokens and sealed ids only
    assert shop.state("user-two") is not None and shop.queued("user-two")  # nobody else is touched
    for topic in USER_KEYED_TOPICS:
        assert shop.sink.tombstones[topic] == ["user-one"]
    (confirmed,) = shop.sink.records[TOPIC_CONFIRMATIONS]
    record = ErasureConfirmation.model_validate(confirmed)
    assert record.user_id == "user-one" and record.request_id == "r1" and record.state_found
    assert record.pending_snapshots == len(before.snapshots)
    # Stored marks hold a fingerprint, never the id.
    offsets, marks = shop.store.erasure_log([0])
    assert offsets == {0: 1}
    assert list(marks[0]) == [fingerprint("user-one", KEY if shop.pseudonyms else None)]


def test_an_erased_users_older_events_never_bring_them_back(mode: str) -> None:
    shop = _Shop(mode)
    _history(shop)
    erased_at = T0 + 21 * DAY_MS
    shop.send("user-two", erased_at)  # the watermark is near the erasure time
    shop.forget("user-one", erased_at)
    shop.run()
    scores = len(shop.sink.records[TOPIC_SCORES])
    shop.send("user-one", erased_at - 2 * MINUTE_MS)  # inside the lateness: would be applied
    shop.send("user-one", erased_at - 30 * DAY_MS)  # behind the watermark: would be dead-lettered
    shop.run()
    assert shop.state("user-one") is None
    assert len(shop.sink.records[TOPIC_SCORES]) == scores
    assert TOPIC_DLQ not in shop.sink.records
    assert shop.erasures.dropped_events == 2
    # Activity after the erasure starts a new state with only itself in it.
    shop.send("user-one", erased_at + 1000)
    shop.run()
    fresh = shop.state("user-one")
    assert fresh is not None and fresh.features.events == 1


def test_a_user_erased_and_back_in_one_batch_starts_afresh(mode: str) -> None:
    shop = _Shop(mode)
    _history(shop)
    erased_at = T0 + 21 * DAY_MS
    shop.forget("user-one", erased_at)
    shop.send("user-one", erased_at - 1000)
    shop.send("user-one", erased_at + 1000)
    shop.run()
    fresh = shop.state("user-one")
    assert fresh is not None and fresh.features.events == 1
    assert fresh.features.first_seen_ms == erased_at + 1000


class _DiesOnSave(MemoryStateStore):
    """A store whose next save fails for good: the process dies after the deletion, before
    the batch's outputs (the confirmation) are known to be flushed."""

    die = False

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.die:
            self.die = False
            raise RuntimeError("killed")
        super().save(*args, **kwargs)


def test_a_crash_between_deleting_and_confirming_finishes_on_restart(mode: str) -> None:
    store = _DiesOnSave()
    shop = _Shop(mode, store)
    _history(shop)
    shop.forget("user-one", T0 + 21 * DAY_MS)
    store.die = True
    with pytest.raises(RuntimeError):
        shop.run()
    assert shop.state("user-one") is None  # deleted, but the request's offset was not saved
    assert store.erasure_log([0])[0] == {}
    shop.start()  # a restart: same store, same topics, a new process
    shop.run()
    (confirmed,) = shop.sink.records[TOPIC_CONFIRMATIONS]
    assert confirmed["user_id"] == "user-one" and confirmed["state_found"] is False
    assert store.erasure_log([0])[0] == {0: 1}
    shop.run()
    assert len(shop.sink.records[TOPIC_CONFIRMATIONS]) == 1  # done: not repeated


def test_marks_are_dropped_once_the_watermark_is_past_them(mode: str) -> None:
    shop = _Shop(mode, erasure_margin_seconds=3600)
    _history(shop)
    erased_at = T0 + 21 * DAY_MS
    shop.forget("user-one", erased_at)
    shop.run()
    assert shop.store.erasure_log([0])[1]
    shop.send("user-two", erased_at + KEEP_1H + LATENESS + MINUTE_MS)  # past the keep time
    shop.run()
    shop.run()
    assert shop.store.erasure_log([0])[1] == {}
    assert len(shop.erasures.marks) == 0


def test_an_invalid_request_is_dead_lettered_and_passed(mode: str) -> None:
    shop = _Shop(mode)
    _history(shop)
    shop.requests.produce(0, "user-one", b'{"user_id": "user-one"}')
    shop.forget("user-one", T0 + 21 * DAY_MS, request="r2")
    shop.run()
    (letter,) = shop.sink.records[TOPIC_DLQ]
    assert letter["error_type"] == "invalid_erasure"
    assert letter["source"]["topic"] == "user-erasures"
    assert shop.state("user-one") is None
    assert shop.store.erasure_log([0])[0] == {0: 2}


def test_silent_users_are_rescored_under_their_real_id(mode: str) -> None:
    shop = _Shop(mode)
    _history(shop)
    quiet_from = len(shop.sink.records[TOPIC_SCORES])
    shop.send("user-three", T0 + 60 * DAY_MS)  # the watermark moves 39 days past u1's and u2's last
    shop.run()
    rescored = shop.sink.records[TOPIC_SCORES][quiet_from:]
    silent = {r["user_id"] for r in rescored if r["trigger"] == "silence"}
    assert silent == {"user-one", "user-two"}
    assert shop.state("user-one") is not None and shop.queued("user-one")
    if shop.pseudonyms is not None:
        assert shop.raw_ids_in_store(["user-one", "user-two", "user-three"]) == []


def test_pseudonyms_are_keyed_and_sealed_ids_open_only_with_their_key() -> None:
    p, other = Pseudonyms(KEY), Pseudonyms(b"another key, also 32 bytes long.")
    assert p.token("alice") == p.token("alice") != other.token("alice")
    assert "alice" not in p.token("alice") and len(p.token("alice")) == 32
    for uid in ("alice", "用户-7", "x" * 128):
        sealed = p.seal(uid)
        assert uid.encode() not in sealed and p.open(sealed) == uid
        with pytest.raises(ValueError):
            other.open(sealed)
        with pytest.raises(ValueError):
            p.open(sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with pytest.raises(ValueError):
        Pseudonyms(b"short")
