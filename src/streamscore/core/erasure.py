"""Forgetting a user: what an erasure request means, and the marks that keep it forgotten.

An erasure deletes the user's state (features, pending training snapshots, alert memory)
and their due-queue entry, retracts their records from the user-keyed output topics with a
null-value tombstone, and confirms on ``erasure-confirmations``. Events of the user at or
before the erasure's time must never bring the state back, however late they arrive: an
**erasure mark** (a fingerprint of the user id and that time, never the id itself) is kept
per partition until the partition's watermark is past the erasure time plus the allowed
lateness plus a margin. By then any such event is behind the watermark by more than the
lateness; the mark also keeps them out of the dead-letter topic while it lives.

Pure: the runtime's ``erasures.py`` does the reading, storing and sending.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from streamscore.core.records import (
    TOPIC_CONFIRMATIONS,
    USER_KEYED_TOPICS,
    ErasureRequest,
    record_id,
)
from streamscore.core.timeutil import iso, parse_rfc3339
from streamscore.core.values import Output
from streamscore.errors import InvalidEvent

FINGERPRINT_BYTES = 16
MAX_REQUEST_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Erasure:
    """One decoded erasure request."""

    request_id: str
    user_id: str
    ts_ms: int  # events of the user at or before it are dropped


def decode_erasure(raw: bytes, key: bytes | None) -> Erasure:
    """An ``Erasure`` from a ``user-erasures`` record, or ``InvalidEvent`` saying why not.

    The record's key must be the user id it names: the topic is partitioned like the input,
    so the scorer that owns the user's partition is the one that reads the request.
    """
    if len(raw) > MAX_REQUEST_BYTES:
        raise InvalidEvent("too_large", f"erasure request is {len(raw)} bytes, over 4096")
    try:
        req = ErasureRequest.model_validate_json(raw)
        ts = parse_rfc3339(req.requested_at)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        what = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in errors)
        raise InvalidEvent("invalid_erasure", f"not an erasure request: {what}") from None
    except ValueError as exc:
        raise InvalidEvent("invalid_erasure", f"requested_at: {exc}") from None
    if key is not None and key != req.user_id.encode():
        raise InvalidEvent(
            "key_mismatch",
            "an erasure request must be keyed by the user id it names (streamscore forget "
            "does so), or the scorer that owns the user may never read it",
        )
    return Erasure(req.request_id, req.user_id, ts)


def encode_request(user_id: str, request_id: str, ts_ms: int) -> bytes:
    """The value ``streamscore forget`` publishes."""
    return orjson.dumps({"request_id": request_id, "user_id": user_id, "requested_at": iso(ts_ms)})


def fingerprint(user_id: str, key: bytes | None = None) -> str:
    """A fixed-size stand-in for a user id in stored marks: keyed (HMAC-SHA256) when a
    pseudonymisation key is set, an unkeyed BLAKE2b otherwise. Never the id itself."""
    data = user_id.encode()
    if key:
        return hmac.new(key, data, hashlib.sha256).hexdigest()[: FINGERPRINT_BYTES * 2]
    digest = hashlib.blake2b(data, digest_size=FINGERPRINT_BYTES, person=b"ss-erase")
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Mark:
    """A stored erasure mark: the erasure time, and the event time it may be dropped after."""

    ts_ms: int
    keep_until_ms: int

    def encode(self) -> bytes:
        return f"{self.ts_ms}:{self.keep_until_ms}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> Mark:
        ts, _, until = raw.decode().partition(":")
        return cls(int(ts), int(until))


class ErasureMarks:
    """The erasure marks of the partitions a process owns, checked against every event.

    Cheap when empty (the usual case): no fingerprint is computed.
    """

    def __init__(self, keep_ms: int, key: bytes | None = None) -> None:
        self.keep_ms = keep_ms  # allowed lateness plus the margin
        self.key = key
        self._marks: dict[int, dict[str, Mark]] = {}
        self._by_fp: dict[str, int] = {}  # fingerprint -> latest erasure time, any partition

    def __len__(self) -> int:
        return len(self._by_fp)

    def mark_for(self, erasure: Erasure) -> tuple[str, Mark]:
        """The fingerprint and mark an erasure leaves behind."""
        fp = fingerprint(erasure.user_id, self.key)
        return fp, Mark(erasure.ts_ms, erasure.ts_ms + self.keep_ms)

    def add(self, partition: int, fp: str, mark: Mark) -> None:
        """Keep a mark (the later erasure wins when a user is erased twice)."""
        marks = self._marks.setdefault(partition, {})
        old = marks.get(fp)
        if old is None or mark.ts_ms > old.ts_ms:
            marks[fp] = mark
        self._reindex()

    def load(self, partition: int, stored: Mapping[str, bytes]) -> None:
        """The marks a partition's previous owner saved."""
        self._marks[partition] = {fp: Mark.decode(raw) for fp, raw in stored.items()}
        self._reindex()

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Partitions another process now owns (their marks are saved)."""
        for p in partitions:
            self._marks.pop(p, None)
        self._reindex()

    def _reindex(self) -> None:
        self._by_fp = {}
        for marks in self._marks.values():
            for fp, m in marks.items():
                self._by_fp[fp] = max(m.ts_ms, self._by_fp.get(fp, m.ts_ms))

    def blocks(self, user_id: str, ts_ms: int) -> bool:
        """True for an event of an erased user at or before their erasure time."""
        if not self._by_fp:
            return False
        erased = self._by_fp.get(fingerprint(user_id, self.key))
        return erased is not None and ts_ms <= erased

    def expired(self, watermarks: Mapping[int, int]) -> dict[int, list[str]]:
        """Marks whose partition's watermark is past their keep time; removed from here."""
        out: dict[int, list[str]] = {}
        for p, marks in self._marks.items():
            wm = watermarks.get(p, 0)
            gone = [fp for fp, m in marks.items() if wm > m.keep_until_ms]
            for fp in gone:
                del marks[fp]
            if gone:
                out[p] = gone
        if out:
            self._reindex()
        return out


def retractions(user_id: str, topics: Iterable[str] = USER_KEYED_TOPICS) -> list[Output]:
    """A null-value tombstone for the user on each user-keyed output topic, so consumers of
    compacted topics drop every record of theirs."""
    return [Output(topic, user_id, None) for topic in topics]


def confirmation(
    erasure: Erasure,
    *,
    now_ms: int,
    state_found: bool,
    pending_snapshots: int,
    tombstones: Iterable[str] = USER_KEYED_TOPICS,
) -> Output:
    """The ``erasure-confirmations`` record; its id depends on the request only, so a
    confirmation repeated after a crash is recognisably the same."""
    return Output(
        TOPIC_CONFIRMATIONS,
        erasure.user_id,
        {
            "id": record_id("erasure", erasure.request_id, erasure.user_id),
            "request_id": erasure.request_id,
            "user_id": erasure.user_id,
            "requested_at": iso(erasure.ts_ms),
            "erased_at": iso(now_ms),
            "state_found": state_found,
            "pending_snapshots": pending_snapshots,
            "tombstones": list(tombstones),
        },
    )
