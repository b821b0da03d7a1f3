"""Everything streamscore remembers about one user, and its stored form (versioned, by name).

The state carries its own position in the input and a ring of recent event ids: that is
what makes a replayed or duplicated event a no-op, whatever the consumer committed before it
died. The position is the highest applied offset of every partition the user's records came
from (normally one: the user's own, ``partition``), and, for records the scorer re-keyed
onto the user's partition, the highest applied offset of each partition they were re-keyed
from (``rekeyed``): a redelivery on any partition, and a second copy of a re-keyed record,
are both recognised, however many records lie between them.

Stored form (state format v5): one JSON object with short keys (Redis memory is the bill),
fields at their default left out:

    v   format it was written with      r    oldest reader format that can read it (absent: v)
    p   partition  o  offset            ids  the id ring (8 characters per event id)
    oe  [[partition, offset], ...] of partitions other than ``p`` (v5)
    rk  [[partition, offset], ...] of the partitions re-keyed records came from (v5)
    f   the features' values, named by the format's layout (``features.STORED_FIELDS``)
    sn  the snapshot block, which names its layout and input set (``core/snapshots.py``)
    ls  last snapshot time   aa/at  alert armed / last alert time   sg/lc  segment / stage
    ra  reactivated at       rs     rescore step                    sc     last score
    ns  next training snapshot time (v4)

The features are the bulk of a state, so they are a list (no key per field: a third smaller
and six times faster to read) whose positions each format names: a reader resolves them by
name through the writer's layout, as Avro resolves a record through its writer's schema.

Rules that keep old and new versions working together:

- Fields are read by name: top-level ones by key, features through their layout. What a
  record lacks takes its default; what this version does not know (a newer writer's keys,
  or features appended after the ones it knows) is kept and written back unchanged.
- Adding a field is compatible: raise ``STATE_FORMAT`` (a new feature is appended to a new
  layout) and add an upgrade step that fills it in; keep ``MIN_READER``, since older
  readers carry the new field along. An upgrade step must keep a field that is already there
  (an older writer carried it back; it may be stale, never lost).
- Changing what a field means, moving or dropping a feature, the snapshot layout or the
  input set without an ``EARLIER_SCHEMAS`` entry is not compatible: raise ``MIN_READER``
  too. An older reader then refuses the state with ``NewerFormatError``, a transient error:
  its batch is retried and nothing committed until the rolling upgrade moves the partition
  to a new process (or the new version is rolled back).
- Every older format upgrades on load through ``UPGRADES`` (one small step per version,
  each tested on committed fixtures written by that version) and is written as the current
  one on save. A changed input set remaps stored snapshots by name (``core/inputs.py``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamscore.core.alerts import AlertState
from streamscore.core.features import STORED_FIELDS, UserFeatures
from streamscore.core.inputs import CURRENT_INPUTS, InputSchema, known_schema
from streamscore.core.snapshots import (
    Snapshot,
    SnapshotFormatError,
    UnknownInputSchemaError,
    block_from_v2,
    pack_block,
    unpack_block,
)
from streamscore.errors import NewerFormatError, StoredFormatError

STATE_FORMAT = 5  # what this version writes
# The oldest format whose reader can read what this version writes. v4 changed the snapshot
# layout and the model inputs, so a v3 reader cannot read it; v5 only added ``oe`` and
# ``rk``, which a v4 reader carries along.
MIN_READER = 4
RECENT_IDS = 16
ID_HASH_CHARS = 8  # base64 of a 6-byte (48-bit) hash
_STATE_KEYS = frozenset(
    {
        *("v", "r", "p", "o", "ids", "f", "sn", "ls", "aa", "at", "sg", "lc", "ra", "rs"),
        *("sc", "ns", "oe", "rk"),
    }
)


@functools.lru_cache(maxsize=8192)
def id_hash(event_id: str) -> str:
    """The 8-character fingerprint of an event id kept in the duplicate ring.

    48 bits: a false "duplicate" needs a hash collision among 16 ids, about 1 in 10^13.
    """
    digest = hashlib.blake2b(event_id.encode(), digest_size=6).digest()
    return base64.b64encode(digest).decode()


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
    next_snapshot_ms: int = 0  # 0: not on the snapshot grid yet (new, or upgraded from v3)
    # Highest applied offset of each partition other than ``partition`` the user's records
    # came from (v5): the topic grew, or records reached the user from another partition.
    offsets_elsewhere: dict[int, int] = field(default_factory=dict)
    # Highest applied offset, per partition of origin, of the records the scorer re-keyed
    # onto the user's partition (v5; see ``key_contract``).
    rekeyed: dict[int, int] = field(default_factory=dict)
    # Fields a newer writer stored that this version does not know: kept, written back.
    carried: dict[str, Any] = field(default_factory=dict)
    carried_features: list[Any] = field(default_factory=list)

    def seen(
        self, partition: int, offset: int, event_id: str, origin: tuple[int, int] | None = None
    ) -> bool:
        """True when this event was already applied: a replayed offset on any partition, a
        second copy of a re-keyed record (``origin``: where it was re-keyed from), or an id
        in the ring (a producer's retry)."""
        if offset <= self.applied_offset(partition):
            return True
        if self.copy_applied(origin):
            return True
        return id_hash(event_id) in self.recent_ids

    def copy_applied(self, origin: tuple[int, int] | None) -> bool:
        """True when a re-keyed copy of the record at ``origin`` was applied already."""
        return origin is not None and origin[1] <= self.rekeyed.get(origin[0], -1)

    def applied_offset(self, partition: int) -> int:
        """The highest offset of ``partition`` applied to this state (-1: none)."""
        if partition == self.partition:
            return self.offset
        return self.offsets_elsewhere.get(partition, -1)

    def mark(
        self, partition: int, offset: int, event_id: str, origin: tuple[int, int] | None = None
    ) -> None:
        """Remember an applied event's position (and origin) and id; the state's partition
        becomes the event's, the position on the previous one is kept."""
        if partition != self.partition:
            if self.partition >= 0:
                self.offsets_elsewhere[self.partition] = self.offset
            self.offset = self.offsets_elsewhere.pop(partition, -1)
            self.partition = partition
        self.offset = max(self.offset, offset)
        if origin is not None:
            self.rekeyed[origin[0]] = max(self.rekeyed.get(origin[0], -1), origin[1])
        self.recent_ids.append(id_hash(event_id))
        if len(self.recent_ids) > RECENT_IDS:
            del self.recent_ids[0]

    def to_bytes(self, inputs: InputSchema = CURRENT_INPUTS) -> bytes:
        """The stored form (state format ``STATE_FORMAT``); snapshots are for ``inputs``."""
        d: dict[str, Any] = {"v": STATE_FORMAT, "p": self.partition, "o": self.offset}
        if MIN_READER != STATE_FORMAT:
            d["r"] = MIN_READER
        if self.recent_ids:
            d["ids"] = "".join(self.recent_ids)
        if self.offsets_elsewhere:
            d["oe"] = sorted(self.offsets_elsewhere.items())
        if self.rekeyed:
            d["rk"] = sorted(self.rekeyed.items())
        features = self.features.to_stored()
        d["f"] = [*features, *self.carried_features] if self.carried_features else features
        if self.snapshots:
            d["sn"] = pack_block(self.snapshots, inputs)
        if self.last_snapshot_ms:
            d["ls"] = self.last_snapshot_ms
        if self.alert.active:
            d["aa"] = True
        if self.alert.last_alert_ms:
            d["at"] = self.alert.last_alert_ms
        if self.segment is not None:
            d["sg"] = self.segment
        if self.lifecycle is not None:
            d["lc"] = self.lifecycle
        if self.reactivated_ms:
            d["ra"] = self.reactivated_ms
        if self.rescore_step:
            d["rs"] = self.rescore_step
        if self.last_score != (0.0, 0.0):
            d["sc"] = [round(self.last_score[0], 6), round(self.last_score[1], 2)]
        if self.next_snapshot_ms:
            d["ns"] = self.next_snapshot_ms
        if self.carried:
            d.update(self.carried)
        return orjson.dumps(d)

    @classmethod
    def from_bytes(
        cls, user_id: str, raw: bytes, inputs: InputSchema = CURRENT_INPUTS
    ) -> UserState:
        """Read any stored format this version knows, upgrading older ones.

        ``NewerFormatError`` for a state only a newer version can read (retry: a rolling
        upgrade is under way); ``StoredFormatError`` for one that no version can.
        """
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise StoredFormatError(f"user state of {user_id!r} is not JSON ({exc})") from None
        if type(d) is not dict or d.get("v") != STATE_FORMAT:
            d = upgrade(user_id, d)
        try:
            return cls._decode(user_id, d, inputs)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoredFormatError(
                f"user state of {user_id!r} (format v{d.get('v')}) is corrupt: {exc}"
            ) from None

    @classmethod
    def _decode(cls, user_id: str, d: dict[str, Any], inputs: InputSchema) -> UserState:
        features, carried_features = UserFeatures.from_stored(d["f"], d["v"])
        snapshots: list[Snapshot] = []
        block = d.get("sn")
        if block:
            try:
                snapshots, _ = unpack_block(block, inputs)
            except UnknownInputSchemaError as exc:
                # A newer version changed the inputs without marking the state incompatible.
                raise NewerFormatError(
                    f"user state of {user_id!r} ({exc})", d["v"], STATE_FORMAT + 1, STATE_FORMAT
                ) from None
        ids = d.get("ids", "")
        score = d.get("sc")
        extra = d.keys() - _STATE_KEYS
        return cls(
            user_id=user_id,
            partition=d["p"],
            offset=d["o"],
            recent_ids=[ids[i : i + ID_HASH_CHARS] for i in range(0, len(ids), ID_HASH_CHARS)],
            features=features,
            snapshots=snapshots,
            last_snapshot_ms=d.get("ls", 0),
            alert=AlertState(active=d.get("aa", False), last_alert_ms=d.get("at", 0)),
            segment=d.get("sg"),
            lifecycle=d.get("lc"),
            reactivated_ms=d.get("ra", 0),
            rescore_step=d.get("rs", 0),
            last_score=(score[0], score[1]) if score else (0.0, 0.0),
            next_snapshot_ms=d.get("ns", 0),
            offsets_elsewhere={int(p): int(o) for p, o in d.get("oe", ())},
            rekeyed={int(p): int(o) for p, o in d.get("rk", ())},
            carried={k: d[k] for k in extra} if extra else {},
            carried_features=carried_features,
        )


# -- upgrades: one step per format, from the oldest still readable ---------------------------


def _v2_to_v3(d: Any) -> dict[str, Any]:
    """v2 (before named fields): a positional list; snapshots without header or generation.

    ``[2, schema, partition, offset, ids, features, snapshots, last_snapshot_ms, alert active,
    last alert, segment, lifecycle, reactivated, rescore step, churn score, value score]``
    """
    (_, schema_id, partition, offset, ids, features, block, last_snapshot, active, last_alert,
     segment, lifecycle, reactivated, step, churn, value) = d  # fmt: skip
    if len(features) != len(STORED_FIELDS[2]):
        raise StoredFormatError(f"v2 features have {len(features)} values, not 24")
    out: dict[str, Any] = {
        "v": 3,
        "p": partition,
        "o": offset,
        "ids": ids,
        "f": features,  # the v3 layout is v2's
        "ls": last_snapshot,
        "aa": active,
        "at": last_alert,
        "sg": segment,
        "lc": lifecycle,
        "ra": reactivated,
        "rs": step,
        "sc": [churn, value],
    }
    if block:
        schema = known_schema(schema_id)
        if schema is None:
            raise StoredFormatError(f"v2 snapshots made for unknown input set {schema_id!r}")
        out["sn"] = block_from_v2(block, schema)
    return out


def _v3_to_v4(d: Any) -> dict[str, Any]:
    """v4 appends three features (occasions and the latest non-purchase event) and the
    snapshot grid position; the snapshot block upgrades itself on read (layout 3 → 4).

    v3 kept no occasions: visits are taken to be the sessions (one for a user seen without
    any), orders the purchases (those still in the purchase buffer are counted from it), and
    the latest non-purchase event the latest session, or the latest event when there were
    events besides purchases. The grid position is left for the scorer to set when it next
    sees the user (``Scorer.advance``).
    """
    out = dict(d)
    f = list(d["f"])
    fields = dict(zip(STORED_FIELDS[3], f, strict=False))
    events, sessions, purchases = fields["events"], fields["sessions"], fields["purchases"]
    visits = max(sessions, 1) if events else 0
    if sessions:
        browse = fields["last_session_ms"]
    elif events > purchases:
        browse = fields["last_seen_ms"]
    else:
        browse = 0
    final_orders = max(purchases - len(fields["recent_purchases"]), 0)
    n = len(STORED_FIELDS[3])
    out["f"] = [*f[:n], visits, fields["last_seen_ms"], [], final_orders, browse, *f[n:]]
    out["v"] = 4
    return out


def _v4_to_v5(d: Any) -> dict[str, Any]:
    """v5 adds the positions on other partitions (``oe``) and of re-keyed records (``rk``).

    A v4 state knew one position, its partition's: that is all it has applied, so both start
    empty (absent). A v4 reader that carried a v5 writer's ``oe``/``rk`` back keeps them.
    """
    return {**d, "v": 5}


UPGRADES: dict[int, Callable[[Any], dict[str, Any]]] = {
    2: _v2_to_v3,
    3: _v3_to_v4,
    4: _v4_to_v5,
}


def stored_version(d: Any) -> tuple[int, int]:
    """(written with, oldest reader) of a decoded stored state."""
    if isinstance(d, list) and d and isinstance(d[0], int):
        return d[0], d[0]  # v2 and before: positional, every change was incompatible
    if isinstance(d, dict) and isinstance(d.get("v"), int):
        needs = d.get("r", d["v"])
        if isinstance(needs, int):
            return d["v"], needs
    raise StoredFormatError("not a streamscore user state")


def upgrade(user_id: str, d: Any) -> dict[str, Any]:
    """A decoded stored state in the current format (or a newer compatible one)."""
    try:
        written, needs = stored_version(d)
    except StoredFormatError:
        raise StoredFormatError(f"user state of {user_id!r} is not a streamscore state") from None
    if needs > STATE_FORMAT:
        raise NewerFormatError(f"user state of {user_id!r}", written, needs, STATE_FORMAT)
    while written < STATE_FORMAT:
        step = UPGRADES.get(written)
        if step is None:
            raise StoredFormatError(
                f"user state of {user_id!r} has format v{written}, older than any this "
                f"version upgrades (v{min(UPGRADES)} to v{STATE_FORMAT}): upgrade through an "
                "intermediate release, or drop the state"
            )
        try:
            d = step(d)
        except (SnapshotFormatError, KeyError, TypeError, ValueError) as exc:
            raise StoredFormatError(
                f"user state of {user_id!r} (format v{written}) cannot be upgraded: {exc}"
            ) from None
        written = d["v"]
    return dict(d)
