"""Everything streamscore remembers about one user, and its compact stored form.

The state carries its own position in the input (partition, last applied offset) and a ring
of recent event ids: that is what makes a replayed or duplicated event a no-op, whatever the
consumer committed before it died.

Stored size matters (Redis memory is the bill for millions of users), so the stored form is
positional JSON with two binary parts, base64-encoded:

- the id ring keeps 48-bit hashes of the last ``RECENT_IDS`` event ids (a false "duplicate"
  needs a hash collision among 16 ids: about 1 in 10^13 per event);
- pending snapshots pack their model inputs as float16 (inputs are log-scaled, so 3 decimal
  digits are plenty to learn from) and predictions as float32.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamscore.core.alerts import AlertState
from streamscore.core.features import UserFeatures
from streamscore.core.inputs import CHURN_INPUTS, FEATURE_SCHEMA, VALUE_INPUTS

STATE_VERSION = 2
RECENT_IDS = 16
ID_HASH_CHARS = 8  # base64 of a 6-byte (48-bit) hash

_N_CHURN = len(CHURN_INPUTS)
_N_VALUE = len(VALUE_INPUTS)
_F32_MAX = 3.0e38  # saturate rather than fail to pack an absurd sum
_HEAD = struct.Struct("<qffffB")  # t_ms, churn_p, value_p, naive value, spend, flags
_INPUTS = struct.Struct(f"<{_N_CHURN + _N_VALUE}e")
SNAPSHOT_SIZE = _HEAD.size + _INPUTS.size


@functools.lru_cache(maxsize=8192)
def id_hash(event_id: str) -> str:
    """The 8-character fingerprint of an event id kept in the duplicate ring."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=6).digest()
    return base64.b64encode(digest).decode()


class Snapshot:
    """A training example waiting for its label: inputs and the prediction made at ``t_ms``.

    A loaded snapshot keeps its model inputs packed until something reads them. Most batches
    only look at ``t_ms`` and the label fields (activity marks it returned, the watermark
    checks its horizon) and save it again unchanged: decoding and re-encoding ~30 float16
    inputs per snapshot was the largest cost of loading and saving a state.
    """

    __slots__ = (
        "_churn_x",
        "_packed_x",
        "_value_x",
        "churn_learnt",
        "churn_p",
        "naive_value",
        "returned",
        "spend",
        "t_ms",
        "value_learnt",
        "value_p",
    )

    def __init__(  # noqa: PLR0917 - the positional order of the dataclass it replaced
        self,
        t_ms: int,
        churn_x: list[float],
        value_x: list[float],
        churn_p: float,
        value_p: float,
        naive_value: float,
        returned: bool = False,  # activity after t (past the grace period) within the horizon
        spend: float = 0.0,
        churn_learnt: bool = False,
        value_learnt: bool = False,
    ) -> None:
        self.t_ms = t_ms
        self.churn_p = churn_p
        self.value_p = value_p
        self.naive_value = naive_value
        self.returned = returned
        self.spend = spend
        self.churn_learnt = churn_learnt
        self.value_learnt = value_learnt
        self._churn_x: list[float] | None = churn_x
        self._value_x: list[float] | None = value_x
        self._packed_x: bytes | None = None

    @property
    def churn_x(self) -> list[float]:
        """The churn model's inputs at ``t_ms``."""
        if self._churn_x is None:
            return self._unpack_inputs()[0]
        return self._churn_x

    @property
    def value_x(self) -> list[float]:
        """The value model's inputs at ``t_ms``."""
        if self._value_x is None:
            return self._unpack_inputs()[1]
        return self._value_x

    def _unpack_inputs(self) -> tuple[list[float], list[float]]:
        assert self._packed_x is not None
        xs = _INPUTS.unpack(self._packed_x)
        self._churn_x, self._value_x = list(xs[:_N_CHURN]), list(xs[_N_CHURN:])
        return self._churn_x, self._value_x

    @property
    def done(self) -> bool:
        """Both labels learnt: the snapshot can go."""
        return self.churn_learnt and self.value_learnt

    def _key(self) -> tuple[object, ...]:
        return (
            self.t_ms,
            self.churn_x,
            self.value_x,
            self.churn_p,
            self.value_p,
            self.naive_value,
            self.returned,
            self.spend,
            self.churn_learnt,
            self.value_learnt,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaced

    def __repr__(self) -> str:
        return f"Snapshot{self._key()!r}"

    def pack(self) -> bytes:
        """Fixed-size binary form."""
        flags = self.returned | self.churn_learnt << 1 | self.value_learnt << 2
        head = _HEAD.pack(
            self.t_ms,
            self.churn_p,
            min(self.value_p, _F32_MAX),
            min(self.naive_value, _F32_MAX),
            min(self.spend, _F32_MAX),
            flags,
        )
        if self._packed_x is not None:
            return head + self._packed_x
        return head + _INPUTS.pack(*self.churn_x, *self.value_x)

    @classmethod
    def unpack(cls, raw: bytes, offset: int = 0) -> Snapshot:
        """Inverse of ``pack``, reading ``raw`` from ``offset``; inputs stay packed."""
        t_ms, churn_p, value_p, naive, spend, flags = _HEAD.unpack_from(raw, offset)
        snap = cls.__new__(cls)
        snap.t_ms = t_ms
        snap.churn_p = churn_p
        snap.value_p = value_p
        snap.naive_value = naive
        snap.returned = bool(flags & 1)
        snap.spend = spend
        snap.churn_learnt = bool(flags & 2)
        snap.value_learnt = bool(flags & 4)
        snap._churn_x = snap._value_x = None
        start = offset + _HEAD.size
        snap._packed_x = raw[start : start + _INPUTS.size]
        return snap


def _pack_snapshots(snaps: list[Snapshot]) -> str:
    return base64.b64encode(b"".join(s.pack() for s in snaps)).decode()


def _unpack_snapshots(text: str) -> list[Snapshot]:
    raw = base64.b64decode(text)
    return [Snapshot.unpack(raw, i) for i in range(0, len(raw), SNAPSHOT_SIZE)]


@dataclass(slots=True)
class UserState:
    """One user's features, pending labels, alert memory, segment and input position."""

    user_id: str
    partition: int = -1
    offset: int = -1
    recent_ids: list[str] = field(default_factory=list)  # id_hash of recent event ids
    features: UserFeatures = field(default_factory=UserFeatures)
    snapshots: list[Snapshot] = field(default_factory=list)
    last_snapshot_ms: int = 0
    alert: AlertState = field(default_factory=AlertState)
    segment: str | None = None
    lifecycle: str | None = None
    reactivated_ms: int = 0
    rescore_step: int = 0
    last_score: tuple[float, float] = (0.0, 0.0)

    def seen(self, partition: int, offset: int, event_id: str) -> bool:
        """True when this event was already applied: replayed offset or duplicate id."""
        if partition == self.partition and offset <= self.offset:
            return True
        return id_hash(event_id) in self.recent_ids

    def mark(self, partition: int, offset: int, event_id: str) -> None:
        """Remember an applied event's position and id."""
        self.offset = max(self.offset, offset) if partition == self.partition else offset
        self.partition = partition
        self.recent_ids.append(id_hash(event_id))
        if len(self.recent_ids) > RECENT_IDS:
            del self.recent_ids[0]

    def to_bytes(self) -> bytes:
        """Serialize for the state store."""
        return orjson.dumps(
            [
                STATE_VERSION,
                FEATURE_SCHEMA,
                self.partition,
                self.offset,
                "".join(self.recent_ids),
                self.features.to_list(),
                _pack_snapshots(self.snapshots),
                self.last_snapshot_ms,
                self.alert.active,
                self.alert.last_alert_ms,
                self.segment,
                self.lifecycle,
                self.reactivated_ms,
                self.rescore_step,
                round(self.last_score[0], 6),
                round(self.last_score[1], 2),
            ]
        )

    @classmethod
    def from_bytes(cls, user_id: str, raw: bytes) -> UserState:
        """Deserialize; snapshots made for another feature schema are dropped, not misread."""
        d: list[Any] = orjson.loads(raw)
        if d[0] != STATE_VERSION:
            raise ValueError(f"user state of {user_id!r} has unknown version {d[0]!r}")
        ids = d[4]
        return cls(
            user_id=user_id,
            partition=d[2],
            offset=d[3],
            recent_ids=[ids[i : i + ID_HASH_CHARS] for i in range(0, len(ids), ID_HASH_CHARS)],
            features=UserFeatures.from_list(d[5]),
            snapshots=_unpack_snapshots(d[6]) if d[1] == FEATURE_SCHEMA else [],
            last_snapshot_ms=d[7],
            alert=AlertState(active=d[8], last_alert_ms=d[9]),
            segment=d[10],
            lifecycle=d[11],
            reactivated_ms=d[12],
            rescore_step=d[13],
            last_score=(d[14], d[15]),
        )
