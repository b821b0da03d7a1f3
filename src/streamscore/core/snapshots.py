"""Pending training snapshots and their packed, versioned block in the stored state.

Stored size matters (Redis memory is the bill), so a state's snapshots are one binary block,
base64 in the state's JSON. The block describes itself: a layout byte, the number of model
inputs per snapshot, the id of the input set they were made for (whose names
``core/inputs.py`` knows: 6 bytes, the 12 hex digits of ``FEATURE_SCHEMA``), then fixed-size
records.

Record, layout 3 (little endian): ``t_ms`` int64 · ``churn_p``, ``value_p``, naive value,
spend float32 · flags uint8 (returned, churn learnt, value learnt) · model generation uint32
(``0xFFFFFFFF``: unknown) · inputs float16 × n (churn's, then value's; NaN: not derivable).
Inputs are log-scaled, so three decimal digits are plenty to learn from. Layout 2 (state
format v2) had no header and no generation; ``block_from_v2`` turns it into layout 3.
"""

from __future__ import annotations

import base64
import functools
import struct

from streamscore.core.inputs import CURRENT_INPUTS, InputSchema, known_schema, remap

LAYOUT = 3
UNKNOWN_GENERATION = 0xFFFFFFFF
_F32_MAX = 3.0e38  # saturate rather than fail to pack an absurd sum
_BLOCK_HEAD = struct.Struct("<BB6s")  # layout, inputs per snapshot, input schema id
_HEAD = struct.Struct("<qffffBI")  # t_ms, churn_p, value_p, naive value, spend, flags, generation
_HEAD_V2 = struct.Struct("<qffffB")


@functools.lru_cache(maxsize=16)
def _inputs(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}e")


class SnapshotFormatError(ValueError):
    """A snapshot block that is not what its header or schema says (corrupt state)."""


class UnknownInputSchemaError(SnapshotFormatError):
    """Snapshots made for an input set this version does not know (a newer one's)."""

    def __init__(self, schema: str) -> None:
        super().__init__(f"snapshots were made for input set {schema!r}, unknown to this version")
        self.schema = schema


class Snapshot:
    """A training example waiting for its label: inputs and the prediction made at ``t_ms``.

    A loaded snapshot keeps its model inputs packed until something reads them. Most batches
    only look at ``t_ms`` and the label fields (activity marks it returned, the watermark
    checks its horizon) and save it again unchanged: decoding and re-encoding ~30 float16
    inputs per snapshot was the largest cost of loading and saving a state.
    """

    __slots__ = (
        "_churn_x",
        "_n_churn",
        "_packed_x",
        "_value_x",
        "churn_learnt",
        "churn_p",
        "model_generation",
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
        model_generation: int | None = None,  # of the models that made the predictions
    ) -> None:
        self.t_ms = t_ms
        self.churn_p = churn_p
        self.value_p = value_p
        self.naive_value = naive_value
        self.returned = returned
        self.spend = spend
        self.churn_learnt = churn_learnt
        self.value_learnt = value_learnt
        self.model_generation = model_generation
        self._churn_x: list[float] | None = churn_x
        self._value_x: list[float] | None = value_x
        self._packed_x: bytes | None = None
        self._n_churn = len(churn_x)

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
        xs = _inputs(len(self._packed_x) // 2).unpack(self._packed_x)
        n = self._n_churn
        self._churn_x, self._value_x = list(xs[:n]), list(xs[n:])
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
            self.model_generation,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaced

    def __repr__(self) -> str:
        return f"Snapshot{self._key()!r}"

    def pack(self) -> bytes:
        """The layout-3 record."""
        flags = self.returned | self.churn_learnt << 1 | self.value_learnt << 2
        generation = self.model_generation
        head = _HEAD.pack(
            self.t_ms,
            self.churn_p,
            min(self.value_p, _F32_MAX),
            min(self.naive_value, _F32_MAX),
            min(self.spend, _F32_MAX),
            flags,
            UNKNOWN_GENERATION if generation is None else generation,
        )
        if self._packed_x is not None:
            return head + self._packed_x
        xs = self.churn_x + self.value_x
        return head + _inputs(len(xs)).pack(*xs)

    @classmethod
    def unpack_all(cls, raw: bytes, start: int, n_inputs: int, n_churn: int) -> list[Snapshot]:
        """The layout-3 records of ``raw`` from ``start`` on; their inputs stay packed."""
        size = _HEAD.size + 2 * n_inputs
        head, end = _HEAD.unpack_from, _HEAD.size
        new = cls.__new__
        out = []
        for i in range(start, len(raw), size):
            t_ms, churn_p, value_p, naive, spend, flags, generation = head(raw, i)
            snap = new(cls)
            snap.t_ms = t_ms
            snap.churn_p = churn_p
            snap.value_p = value_p
            snap.naive_value = naive
            snap.returned = bool(flags & 1)
            snap.spend = spend
            snap.churn_learnt = bool(flags & 2)
            snap.value_learnt = bool(flags & 4)
            snap.model_generation = None if generation == UNKNOWN_GENERATION else generation
            snap._churn_x = snap._value_x = None
            snap._n_churn = n_churn
            snap._packed_x = raw[i + end : i + size]
            out.append(snap)
        return out

    def remapped(self, old: InputSchema, new: InputSchema) -> list[str]:
        """Turn the inputs into ``new``'s vector; returns the names that could not be derived.

        The prediction was made by models of another input set, so its generation no longer
        names a model version of this lineage: it becomes unknown.
        """
        xs, missing = remap(self.churn_x + self.value_x, old, new)
        n = len(new.churn)
        self._churn_x, self._value_x, self._n_churn = xs[:n], xs[n:], n
        self._packed_x = None
        self.model_generation = None
        return missing


_HEADS: dict[str, bytes] = {}


def _head(schema: InputSchema) -> bytes:
    head = _HEADS.get(schema.id)
    if head is None:
        head = _HEADS[schema.id] = _BLOCK_HEAD.pack(LAYOUT, schema.size, bytes.fromhex(schema.id))
    return head


def pack_block(snaps: list[Snapshot], schema: InputSchema = CURRENT_INPUTS) -> str:
    """The snapshots as a layout-3 block (base64), inputs for ``schema``."""
    return base64.b64encode(_head(schema) + b"".join(s.pack() for s in snaps)).decode()


def unpack_block(
    text: str, current: InputSchema = CURRENT_INPUTS
) -> tuple[list[Snapshot], list[str]]:
    """The snapshots of a layout-3 block, as snapshots for the ``current`` input set.

    Returns them with the input names that could not be derived for some of them (empty when
    the input set is unchanged, the common case, where inputs stay packed).
    ``UnknownInputSchemaError`` when the block was made for an input set this version lacks.
    """
    raw = base64.b64decode(text)
    layout, n, schema_bytes = _BLOCK_HEAD.unpack_from(raw)
    if layout != LAYOUT:
        raise SnapshotFormatError(f"snapshot block of layout {layout}, expected {LAYOUT}")
    stored = known_schema(schema_bytes.hex(), current)
    if stored is None:
        raise UnknownInputSchemaError(schema_bytes.hex())
    if n != stored.size:
        raise SnapshotFormatError(
            f"snapshot block of layout {layout} with {n} inputs each, expected layout {LAYOUT} "
            f"with the {stored.size} inputs of schema {stored.id}"
        )
    size = _HEAD.size + 2 * n
    if (len(raw) - _BLOCK_HEAD.size) % size:
        raise SnapshotFormatError(f"snapshot block of {len(raw)} bytes is cut short")
    snaps = Snapshot.unpack_all(raw, _BLOCK_HEAD.size, n, len(stored.churn))
    if stored is current:
        return snaps, []
    missing: set[str] = set()
    for snap in snaps:
        missing.update(snap.remapped(stored, current))
    return snaps, sorted(missing)


def block_from_v2(text: str, schema: InputSchema) -> str:
    """A state format v2 snapshot block (no header, no generation) as a layout-3 block."""
    raw = base64.b64decode(text)
    n = schema.size
    size = _HEAD_V2.size + 2 * n
    if len(raw) % size:
        raise SnapshotFormatError(
            f"v2 snapshot block of {len(raw)} bytes is not a whole number of {size}-byte "
            f"records of schema {schema.id}"
        )
    out = [_head(schema)]
    for i in range(0, len(raw), size):
        head = _HEAD_V2.unpack_from(raw, i)
        out.append(_HEAD.pack(*head, UNKNOWN_GENERATION))
        out.append(raw[i + _HEAD_V2.size : i + size])
    return base64.b64encode(b"".join(out)).decode()
