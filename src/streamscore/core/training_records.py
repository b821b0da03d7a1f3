"""The ``training-examples`` records: one per call of the scorer's learner, and back.

Scorers do not learn (``lineage.py``): a ``TrainingOutbox`` turns every call the scorer
makes of its learner into one record, which the runtime publishes with the batch's other
outputs, and the one trainer turns each record back into the same call (``decode``). So the
lineage learns exactly what an in-process trainer would have, whichever process resolved
it, in the order of the topic's one partition.

A record is a JSON object (encoded by orjson in the sink) with a ``type``:

- ``label``: a resolved ``TrainingExample`` (``learn``);
- ``rfm``: a ``PopulationSample`` (``observe``), the RFM population at a snapshot;
- ``customer``: a ``CustomerObservation`` (``observe_customer``), for the population model.

No record carries a user id (DESIGN.md §3). Every record carries a deterministic ``id``: a
hash of the user, the snapshot time and the model for labels, of the user and snapshot time
for ``rfm``, of the key hash and event time for ``customer``. A batch a crashed scorer redoes
publishes the same ids again, which is how the trainer drops the repeats (``RecentIds``).
Inputs travel as a vector with the id of their input set, so a trainer can remap the
records of another version's scorer (``core/inputs.py``) or say it cannot.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from streamscore.core.inputs import CURRENT_INPUTS, MODEL_INPUTS, known_schema, named, remap
from streamscore.core.records import TOPIC_TRAINING, record_id
from streamscore.core.values import (
    CustomerObservation,
    LabelKind,
    Output,
    PopulationSample,
    TrainingExample,
)

if TYPE_CHECKING:
    from streamscore.core.lineage import Lineage

FORMAT = 1
LABEL, RFM, CUSTOMER = "label", "rfm", "customer"
TrainingCall = TrainingExample | PopulationSample | CustomerObservation


class UnreadableRecordError(ValueError):
    """A training record this version cannot turn back into a learner call."""


def _num(v: float) -> float | None:
    return None if math.isnan(v) else v


def _float(v: object) -> float:
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise UnreadableRecordError(f"expected a number, got {v!r}")
    return float(v)


def label_record(ex: TrainingExample) -> dict[str, Any]:
    """The record of a resolved label."""
    return {
        "id": ex.id,
        "type": LABEL,
        "v": FORMAT,
        "model": ex.kind.value,
        "schema_id": CURRENT_INPUTS.id,
        "inputs": [ex.inputs.get(name) for name in MODEL_INPUTS],
        "label": ex.label,
        "predicted": ex.predicted,
        "baseline": ex.baseline,
        "snapshot_ms": ex.snapshot_ms,
        "label_ms": ex.label_ms,
        "weight": ex.weight,
        "model_version": ex.model_version,
        "orders": _num(ex.orders),
        "btyd": _num(ex.btyd),
        "corrected": _num(ex.corrected),
    }


def population_record(sample: PopulationSample) -> dict[str, Any]:
    """The record of a customer at a snapshot (the RFM population)."""
    return {
        "id": sample.id,
        "type": RFM,
        "v": FORMAT,
        "days_since_purchase": sample.days_since_purchase,
        "purchases": sample.purchases,
        "spend": sample.spend,
    }


def customer_record(obs: CustomerObservation) -> dict[str, Any]:
    """The record of a sampled customer's summary after an event."""
    return {
        "id": record_id(CUSTOMER, obs.key_hash, obs.t_ms),
        "type": CUSTOMER,
        "v": FORMAT,
        "key_hash": obs.key_hash,
        "t_ms": obs.t_ms,
        "partition": obs.partition,
        "schema_id": CURRENT_INPUTS.id,
        "inputs": [_num(v) for v in obs.inputs],
    }


def _inputs(record: dict[str, Any]) -> list[float]:
    """A record's input vector in this version's input set (NaN where not derivable)."""
    # Floats and nulls are nearly every input: those without a call each (``_float``
    # handles, and refuses, the rest as before).
    nan = math.nan
    values = [v if type(v) is float else nan if v is None else _float(v) for v in record["inputs"]]
    schema = known_schema(str(record["schema_id"]))
    if schema is None:
        raise UnreadableRecordError(
            f"input set {record['schema_id']!r} is unknown to this version (a newer scorer "
            "wrote it: upgrade the trainer too)"
        )
    if schema is CURRENT_INPUTS:
        if len(values) != CURRENT_INPUTS.size:
            raise UnreadableRecordError(f"{len(values)} inputs, the input set has {schema.size}")
        return values
    return remap(values, schema, CURRENT_INPUTS)[0]


def decode(record: object) -> tuple[str, TrainingCall]:
    """(id, learner call) of a decoded record; ``UnreadableRecordError`` when it is not one."""
    if not isinstance(record, dict):
        raise UnreadableRecordError("not a JSON object")
    try:
        kind, rid = record["type"], str(record["id"])
        if int(record["v"]) > FORMAT:
            raise UnreadableRecordError(f"record format v{record['v']} is newer than v{FORMAT}")
        if kind == LABEL:
            baseline = record["baseline"]
            call: TrainingCall = TrainingExample(
                kind=LabelKind(record["model"]),
                inputs=named(MODEL_INPUTS, _inputs(record)),
                label=_float(record["label"]),
                predicted=_float(record["predicted"]),
                baseline=None if baseline is None else _float(baseline),
                snapshot_ms=int(record["snapshot_ms"]),
                label_ms=int(record["label_ms"]),
                weight=_float(record["weight"]),
                model_version=record["model_version"],
                orders=_float(record["orders"]),
                btyd=_float(record["btyd"]),
                # absent from records of scorers before the serving gate
                corrected=_float(record.get("corrected")),
                id=rid,
            )
        elif kind == RFM:
            call = PopulationSample(
                _float(record["days_since_purchase"]),
                _float(record["purchases"]),
                _float(record["spend"]),
                id=rid,
            )
        elif kind == CUSTOMER:
            call = CustomerObservation(
                int(record["key_hash"]),
                tuple(_inputs(record)),
                int(record["t_ms"]),
                int(record.get("partition", -1)),
            )
        else:
            raise UnreadableRecordError(f"unknown record type {kind!r}")
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, UnreadableRecordError):
            raise
        raise UnreadableRecordError(f"{type(exc).__name__}: {exc}") from None
    return rid, call


class TrainingOutbox:
    """The scorer's ``Learner`` in every deployment: each call becomes a record to publish.

    ``wants`` answers from the published lineage the scorer predicts with (its population
    sample's threshold), so customers outside the sample cost nothing; the trainer filters
    again with its own, newer sample. ``take`` hands the runtime the records made since the
    last call; ``delivered`` is called once they are flushed (nothing to do here: the trainer
    reads them from the topic).
    """

    def __init__(self, lineage: Lineage) -> None:
        self.lineage = lineage
        self.pending: list[Output] = []
        self.published: Counter[str] = Counter()  # by "churn", "value", "rfm", "customer"

    def _add(self, what: str, value: dict[str, Any]) -> None:
        self.pending.append(Output(TOPIC_TRAINING, "", value))
        self.published[what] += 1

    def learn(self, example: TrainingExample) -> None:
        self._add(example.kind.value, label_record(example))

    def observe(self, sample: PopulationSample) -> None:
        self._add(RFM, population_record(sample))

    def wants(self, key_hash: int) -> bool:
        return self.lineage.models.wants(key_hash)

    def observe_customer(self, observation: CustomerObservation) -> None:
        self._add(CUSTOMER, customer_record(observation))

    def take(self) -> list[Output]:
        out, self.pending = self.pending, []
        return out

    def delivered(self) -> None:
        return None


class RecentIds:
    """The ids of the last ``size`` labels and RFM samples learnt, to drop repeats.

    A repeat comes from a scorer that crashed after flushing a batch and before saving its
    states: whoever redoes that batch publishes the same records again, after the failover.
    One that arrives within ``size`` deduplicated records of its first copy is dropped;
    beyond that it would be learnt twice (README: "One model lineage" gives the figures).
    Customer records are not kept: the population sample keeps one summary per customer, the
    latest, so a repeat changes nothing. Ids are kept as their first 64 bits (a false match
    within a window of 200,000 has a probability near 1e-9).

    Part of the lineage's checkpoint: ``state``/``from_state`` store the ring compactly.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._order: deque[int] = deque()
        self._seen: set[int] = set()

    @staticmethod
    def _key(rid: str) -> int:
        return int(rid[:16], 16) if rid else 0

    def add(self, rid: str) -> bool:
        """Remember ``rid``; False when it is already among the recent ids (a repeat)."""
        key = self._key(rid)
        if key in self._seen:
            return False
        self._seen.add(key)
        self._order.append(key)
        if len(self._order) > self.size:
            self._seen.discard(self._order.popleft())
        return True

    def __len__(self) -> int:
        return len(self._order)

    def state(self) -> tuple[int, bytes]:
        """(size, the ids oldest first as 8-byte integers)."""
        return self.size, array("Q", self._order).tobytes()

    @classmethod
    def from_state(cls, size: int, stored: tuple[int, bytes] | None) -> RecentIds:
        """A window of ``size`` (the setting now) holding the newest of the stored ids."""
        out = cls(size)
        if stored is not None:
            ids = array("Q")
            ids.frombytes(stored[1])
            for key in ids[-size:] if size else ():
                out._order.append(key)
                out._seen.add(key)
        return out
