"""Pending training snapshots and their packed, versioned block in the stored state.

Stored size matters (Redis memory is the bill), so a state's snapshots are one binary block,
base64 in the state's JSON. The block describes itself: a layout byte, the number of model
inputs per snapshot, the id of the input set they were made for (whose names
``core/inputs.py`` knows: 6 bytes, the 12 hex digits of ``FEATURE_SCHEMA``), then fixed-size
records.

Record, layout 4 (little endian): ``t_ms`` int64 · ``churn_p``, ``value_p``, naive value,
spend, weight, orders, the BTYD baseline's churn and value predictions float32 · flags uint8
(returned, churn learnt, value learnt, churn served the BTYD model's, value served the BTYD
model's) · model generation uint32 (``0xFFFFFFFF``: unknown) ·
inputs float32 × n (churn's, then value's; NaN: not derivable). The inputs are raw counts
and durations (a buy-till-you-die summary), which float16 would round.

``churn_p`` and ``value_p`` are the corrected models' predictions; the two "served the BTYD
model's" flags say when the scores carried the baseline instead (``gate.py``), so that both
are validated. The flags were added within layout 4: a reader from before them takes
``churn_p`` for the served prediction, which it was whenever the flag is clear.

Layout 3 (state format v3) had float16 inputs and no weight, orders or baseline; it is read
as layout 4 with weight 1, orders and baseline unknown (NaN). Layout 2 (state format v2) had
no header and no generation; ``block_from_v2`` turns it into layout 3.
"""

from __future__ import annotations

import base64
import functools
import math
import struct

from streamscore.core.inputs import CURRENT_INPUTS, InputSchema, known_schema, remap

LAYOUT = 4
UNKNOWN_GENERATION = 0xFFFFFFFF
_F32_MAX = 3.0e38  # saturate rather than fail to pack an absurd sum
_BLOCK_HEAD = struct.Struct("<BB6s")  # layout, inputs per snapshot, input schema id
# t_ms, churn_p, value_p, naive value, spend, weight, orders, baseline churn and value,
# flags, generation
_HEAD = struct.Struct("<qffffffffBI")
_HEAD_V3 = struct.Struct("<qffffBI")  # t_ms, churn_p, value_p, naive value, spend, flags, gen
_HEAD_V2 = struct.Struct("<qffffB")
_NAN = float("nan")


@functools.lru_cache(maxsize=16)
def _inputs(n: int, code: str = "f") -> struct.Struct:
    return struct.Struct(f"<{n}{code}")


def _f32(v: float) -> float:
    return min(v, _F32_MAX)


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
        "baseline_churn",
        "baseline_value",
        "churn_learnt",
        "churn_p",
        "churn_served_btyd",
        "model_generation",
        "naive_value",
        "orders",
        "returned",
        "spend",
        "t_ms",
        "value_learnt",
        "value_p",
        "value_served_btyd",
        "weight",
    )

    def __init__(  # noqa: PLR0917 - the positional order of the dataclass it replaced
        self,
        t_ms: int,
        churn_x: list[float],
        value_x: list[float],
        churn_p: float,
        value_p: float,
        naive_value: float,
        returned: bool = False,  # activity after t within the churn horizon
        spend: float = 0.0,
        churn_learnt: bool = False,
        value_learnt: bool = False,
        model_generation: int | None = None,  # of the models that made the predictions
        *,
        weight: float = 1.0,  # inverse of the probability this snapshot was taken with
        orders: float = 0.0,  # orders within the value horizon (NaN: unknown)
        baseline_churn: float = _NAN,  # the fitted BTYD model's own predictions then
        baseline_value: float = _NAN,
        churn_served_btyd: bool = False,  # scores carried baseline_churn, not churn_p
        value_served_btyd: bool = False,
    ) -> None:
        self.t_ms = t_ms
        self.churn_served_btyd = churn_served_btyd
        self.value_served_btyd = value_served_btyd
        self.weight = weight
        self.orders = orders
        self.baseline_churn = baseline_churn
        self.baseline_value = baseline_value
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
        xs = _inputs(len(self._packed_x) // 4).unpack(self._packed_x)
        n = self._n_churn
        self._churn_x, self._value_x = list(xs[:n]), list(xs[n:])
        return self._churn_x, self._value_x

    @property
    def served_churn(self) -> float:
        """The churn probability the scores carried at ``t_ms``."""
        return self.baseline_churn if self.churn_served_btyd else self.churn_p

    @property
    def served_value(self) -> float:
        """The expected spend the scores carried at ``t_ms``."""
        return self.baseline_value if self.value_served_btyd else self.value_p

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
            self.weight,
            _nan_safe(self.orders),
            _nan_safe(self.baseline_churn),
            _nan_safe(self.baseline_value),
            self.churn_served_btyd,
            self.value_served_btyd,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaced

    def __repr__(self) -> str:
        return f"Snapshot{self._key()!r}"

    def pack(self) -> bytes:
        """The layout-4 record."""
        flags = (
            self.returned
            | self.churn_learnt << 1
            | self.value_learnt << 2
            | self.churn_served_btyd << 3
            | self.value_served_btyd << 4
        )
        generation = self.model_generation
        head = _HEAD.pack(
            self.t_ms,
            self.churn_p,
            _f32(self.value_p),
            _f32(self.naive_value),
            _f32(self.spend),
            _f32(self.weight),
            _f32(self.orders),
            self.baseline_churn,
            _f32(self.baseline_value),
            flags,
            UNKNOWN_GENERATION if generation is None else generation,
        )
        if self._packed_x is not None:
            return head + self._packed_x
        xs = self.churn_x + self.value_x
        return head + _inputs(len(xs)).pack(*xs)

    @classmethod
    def unpack_all(cls, raw: bytes, start: int, n_inputs: int, n_churn: int) -> list[Snapshot]:
        """The layout-4 records of ``raw`` from ``start`` on; their inputs stay packed."""
        size = _HEAD.size + 4 * n_inputs
        head, end = _HEAD.unpack_from, _HEAD.size
        new = cls.__new__
        out = []
        for i in range(start, len(raw), size):
            (t_ms, churn_p, value_p, naive, spend, weight, orders, base_churn, base_value,
             flags, generation) = head(raw, i)  # fmt: skip
            snap = new(cls)
            snap.t_ms = t_ms
            snap.churn_p = churn_p
            snap.value_p = value_p
            snap.naive_value = naive
            snap.returned = bool(flags & 1)
            snap.spend = spend
            snap.weight = weight
            snap.orders = orders
            snap.baseline_churn = base_churn
            snap.baseline_value = base_value
            snap.churn_learnt = bool(flags & 2)
            snap.value_learnt = bool(flags & 4)
            snap.churn_served_btyd = bool(flags & 8)
            snap.value_served_btyd = bool(flags & 16)
            snap.model_generation = None if generation == UNKNOWN_GENERATION else generation
            snap._churn_x = snap._value_x = None
            snap._n_churn = n_churn
            snap._packed_x = raw[i + end : i + size]
            out.append(snap)
        return out

    @classmethod
    def unpack_layout3(cls, raw: bytes, start: int, n_inputs: int, n_churn: int) -> list[Snapshot]:
        """Layout-3 records (float16 inputs; no weight, orders or baseline) as layout 4."""
        size = _HEAD_V3.size + 2 * n_inputs
        out = []
        for i in range(start, len(raw), size):
            t_ms, churn_p, value_p, naive, spend, flags, generation = _HEAD_V3.unpack_from(raw, i)
            packed = raw[i + _HEAD_V3.size : i + size]
            xs = list(_inputs(n_inputs, "e").unpack(packed))
            snap = cls(
                t_ms,
                xs[:n_churn],
                xs[n_churn:],
                churn_p,
                value_p,
                naive,
                returned=bool(flags & 1),
                spend=spend,
                churn_learnt=bool(flags & 2),
                value_learnt=bool(flags & 4),
                model_generation=None if generation == UNKNOWN_GENERATION else generation,
                orders=_NAN,
            )
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


def _nan_safe(v: float) -> float | None:
    return None if math.isnan(v) else v


def pack_block(snaps: list[Snapshot], schema: InputSchema = CURRENT_INPUTS) -> str:
    """The snapshots as a layout-4 block (base64), inputs for ``schema``."""
    return base64.b64encode(_head(schema) + b"".join(s.pack() for s in snaps)).decode()


def unpack_block(
    text: str, current: InputSchema = CURRENT_INPUTS
) -> tuple[list[Snapshot], list[str]]:
    """The snapshots of a layout-3 or layout-4 block, as snapshots for the ``current`` input set.

    Returns them with the input names that could not be derived for some of them (empty when
    the input set is unchanged, the common case, where inputs stay packed).
    ``UnknownInputSchemaError`` when the block was made for an input set this version lacks.
    """
    raw = base64.b64decode(text)
    layout, n, schema_bytes = _BLOCK_HEAD.unpack_from(raw)
    if layout not in (3, LAYOUT):
        raise SnapshotFormatError(f"snapshot block of layout {layout}, expected 3 or {LAYOUT}")
    stored = known_schema(schema_bytes.hex(), current)
    if stored is None:
        raise UnknownInputSchemaError(schema_bytes.hex())
    if n != stored.size:
        raise SnapshotFormatError(
            f"snapshot block of layout {layout} with {n} inputs each, expected "
            f"the {stored.size} inputs of schema {stored.id}"
        )
    size = (_HEAD.size + 4 * n) if layout == LAYOUT else (_HEAD_V3.size + 2 * n)
    if (len(raw) - _BLOCK_HEAD.size) % size:
        raise SnapshotFormatError(f"snapshot block of {len(raw)} bytes is cut short")
    unpack = Snapshot.unpack_all if layout == LAYOUT else Snapshot.unpack_layout3
    snaps = unpack(raw, _BLOCK_HEAD.size, n, len(stored.churn))
    if stored is current:
        return snaps, []
    missing: set[str] = set()
    for snap in snaps:
        missing.update(snap.remapped(stored, current))
    return snaps, sorted(missing)


def block_from_v2(text: str, schema: InputSchema) -> str:
    """A state format v2 snapshot block (no header, no generation) as a layout-3 block
    (read on as layout 4 like any layout-3 block)."""
    raw = base64.b64decode(text)
    n = schema.size
    size = _HEAD_V2.size + 2 * n
    if len(raw) % size:
        raise SnapshotFormatError(
            f"v2 snapshot block of {len(raw)} bytes is not a whole number of {size}-byte "
            f"records of schema {schema.id}"
        )
    out = [_BLOCK_HEAD.pack(3, schema.size, bytes.fromhex(schema.id))]
    for i in range(0, len(raw), size):
        head = _HEAD_V2.unpack_from(raw, i)
        out.append(_HEAD_V3.pack(*head, UNKNOWN_GENERATION))
        out.append(raw[i + _HEAD_V2.size : i + size])
    return base64.b64encode(b"".join(out)).decode()
