"""Whole saved state against a reference run, through the public ``UserState`` API.

What a run leaves in a state store, read through the ``StateStore`` port (never raw bytes):
every user's ``UserState``, each partition's due queue (users in due order) and watermarks.
``assert_same_state`` compares two of them field by field, and knows of every field of
``UserState`` and ``Snapshot``; a field it does not know fails it, so a new field is compared
from the day it is added.

Two kinds of field, two kinds of check:

- Facts of the input: features, the last applied position and the ring of event ids, every
  pending snapshot's time, model inputs and label fields (returned, spend, learnt), the
  snapshot, reactivation and rescoring bookkeeping, due queues, watermarks. They depend only
  on the events and their partitions, so they must equal the reference exactly (floats to
  the precision they are stored with).
- Model outputs: predictions stored with snapshots, the last score, segment, lifecycle stage
  and alert memory. They depend on what the models had learnt when the user was scored, which
  differs between any two runs whose batches differ (and after a crash, whose models restart
  from a checkpoint). They are checked against the run's own outputs instead: the state must
  be what the last score record of the user says (probability, value, segment, stage), an
  alert the state remembers must have been sent, and an armed alert needs a score above the
  clearing threshold.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streamscore.adapters.memory import ListSink, ListSource, MemoryStateStore
from streamscore.config import Settings
from streamscore.core.alerts import AlertPolicy
from streamscore.core.records import TOPIC_ALERTS, TOPIC_SCORES
from streamscore.core.snapshots import Snapshot
from streamscore.core.state import UserState
from streamscore.core.timeutil import iso
from streamscore.ports import SourceRecord, StateStore
from streamscore.runtime import Pipeline
from streamscore.wiring import in_process_scorer

FACTS = (
    "user_id",
    "partition",
    "offset",
    "recent_ids",
    "features",
    "snapshots",
    "last_snapshot_ms",
    "reactivated_ms",
    "rescore_step",
    "next_snapshot_ms",
    "offsets_elsewhere",
    "rekeyed",
    "carried",  # what a newer writer stored that this version does not know
    "carried_features",
)
MODEL_OUTPUTS = ("alert", "segment", "lifecycle", "last_score")
SNAPSHOT_FACTS = (
    "t_ms",
    "returned",
    "spend",
    "orders",
    "weight",
    "churn_learnt",
    "value_learnt",
    "naive_value",
)
SNAPSHOT_INPUTS = ("churn_x", "value_x")  # packed as float32
SNAPSHOT_PREDICTIONS = (
    "churn_p",
    "value_p",
    "model_generation",
    "baseline_churn",  # the BTYD model's, which the population fit (a model) changes
    "baseline_value",
    "churn_served_btyd",  # which of the two the scores carried: the serving gate's choice
    "value_served_btyd",
    "served_churn",
    "served_value",
)
FLOAT32 = {"rel": 1e-6, "abs": 1e-6}  # snapshot numbers are stored as float32
FEATURE = {"rel": 1e-9, "abs": 1e-9}
EVERYTHING = 2**62


@dataclass
class StoreView:
    """What a run left in a store: states, due queues (users in due order), watermarks."""

    states: dict[str, UserState]
    due: dict[int, list[str]]
    watermarks: dict[int, int]


def store_view(store: StateStore, users: Collection[str], partitions: Iterable[int]) -> StoreView:
    """Read a store through its port."""
    parts = list(partitions)
    raw = store.load(sorted(users))
    return StoreView(
        states={u: UserState.from_bytes(u, b) for u, b in raw.items()},
        due=store.due(dict.fromkeys(parts, EVERYTHING), limit=10**9),
        watermarks=store.watermarks(parts),
    )


def settled(store: StateStore, partitions: Iterable[int]) -> bool:
    """True when no user is due at or before its partition's saved watermark: every silence
    and label horizon the watermarks have passed has been dealt with."""
    wms = store.watermarks(partitions)
    return not store.due(wms, limit=1)


def memory_pipeline(
    settings: Settings,
    records: Iterable[SourceRecord],
    *,
    batch: int = 500,
    store: MemoryStateStore | None = None,
    keyed: bool = False,
    **options: Any,
) -> tuple[Pipeline, MemoryStateStore, ListSink]:
    """The service's pipeline over a list of records, on memory adapters: the settings' late
    policy and watermark rule, their key contract when the records are ``keyed`` (as Kafka's
    are), and ``options`` for ``Pipeline`` (due limits, clock, dead-letter guard...)."""
    store = store if store is not None else MemoryStateStore()
    sink = ListSink()
    semantics: dict[str, Any] = {
        "max_lead_ms": round(settings.watermark_max_lead_seconds * 1000) or None,
        "agreeing": settings.watermark_agreeing_users,
        "late_events": settings.late_events,
        "on_key_mismatch": settings.on_key_mismatch if keyed else None,
    }
    pipeline = Pipeline(
        ListSource(records),
        store,
        sink,
        in_process_scorer(settings.scoring())[0],
        limits=settings.event_limits(),
        batch_size=batch,
        poll_timeout_s=0.0,
        **{**semantics, **options},
    )
    return pipeline, store, sink


def run_to_the_end(pipeline: Pipeline, store: StateStore, partitions: int) -> None:
    """Every record, then empty batches until no silence or horizon behind a watermark waits."""
    pipeline.run_until_exhausted()
    for _ in range(1000):
        if settled(store, range(partitions)):
            return
        pipeline.run_once()
    raise AssertionError("due users behind the watermark were never dealt with")


def reference_run(
    settings: Settings, records: Iterable[SourceRecord], partitions: int, **options: Any
) -> tuple[StoreView, ListSink]:
    """An uninterrupted run of the pipeline over the same partitioned records, in memory:
    what it left in its store, and its outputs."""
    pipeline, store, sink = memory_pipeline(settings, records, **options)
    run_to_the_end(pipeline, store, partitions)
    return store_view(store, set(store.states), range(partitions)), sink


def sink_outputs(sink: ListSink) -> dict[str, list[dict[str, Any]]]:
    """A list sink's scores and alerts, as ``assert_same_state`` takes them."""
    return {
        "scores": list(sink.records.get(TOPIC_SCORES, [])),
        "alerts": list(sink.records.get(TOPIC_ALERTS, [])),
    }


def _attributes(cls: type) -> set[str]:
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    slots = {n for n in getattr(cls, "__slots__", ()) if not n.startswith("_")}
    props = {n for n, v in vars(cls).items() if isinstance(v, property)}
    return (slots | props) - {"done"}


def _close(a: float, b: float, tol: Mapping[str, float]) -> bool:
    return math.isclose(a, b, rel_tol=tol["rel"], abs_tol=tol["abs"])


def _feature_diffs(a: UserState, b: UserState) -> list[str]:
    got, want = a.features.to_dict(), b.features.to_dict()
    out = []
    for key in sorted(set(got) | set(want)):
        x, y = got.get(key), want.get(key)
        if isinstance(y, list) and isinstance(x, list):
            same = len(x) == len(y) and all(
                _close(p, q, FEATURE) for p, q in zip(x, y, strict=True)
            )
        elif isinstance(y, float) and isinstance(x, float | int):
            same = _close(x, y, FEATURE)
        else:
            same = x == y
        if not same:
            out.append(f"features.{key}: {x!r} != {y!r}")
    return out


def _snapshot_diffs(got: list[Snapshot], want: list[Snapshot]) -> list[str]:
    if len(got) != len(want):
        return [f"snapshots at {[s.t_ms for s in got]} != {[s.t_ms for s in want]}"]
    out = []
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        for name in SNAPSHOT_FACTS:
            x, y = getattr(a, name), getattr(b, name)
            same = _close(x, y, FLOAT32) if isinstance(y, float) else x == y
            if not same:
                out.append(f"snapshots[{i}].{name}: {x!r} != {y!r}")
        for name in SNAPSHOT_INPUTS:
            x, y = getattr(a, name), getattr(b, name)
            if len(x) != len(y) or not all(
                _close(p, q, FLOAT32) for p, q in zip(x, y, strict=True)
            ):
                out.append(f"snapshots[{i}].{name}: {x!r} != {y!r}")
    return out


def state_diffs(got: UserState, want: UserState) -> list[str]:
    """Where two states of one user differ in facts of the input."""
    fields = _attributes(UserState)
    unknown = fields - set(FACTS) - set(MODEL_OUTPUTS)
    assert not unknown, f"statecheck does not know UserState fields {unknown}: add them"
    unknown = _attributes(Snapshot) - {*SNAPSHOT_FACTS, *SNAPSHOT_INPUTS, *SNAPSHOT_PREDICTIONS}
    assert not unknown, f"statecheck does not know Snapshot fields {unknown}: add them"
    out: list[str] = []
    for name in FACTS:
        if name == "features":
            out += _feature_diffs(got, want)
        elif name == "snapshots":
            out += _snapshot_diffs(got.snapshots, want.snapshots)
        elif getattr(got, name) != getattr(want, name):
            out.append(f"{name}: {getattr(got, name)!r} != {getattr(want, name)!r}")
    return out


def output_diffs(
    state: UserState,
    last_score: Mapping[str, Any] | None,
    alert_times: set[str],
    policy: AlertPolicy,
) -> list[str]:
    """Where a state's model outputs disagree with what the run sent for that user."""
    if last_score is None:
        return [] if state.features.empty else ["no score was sent"]
    out = []
    told = (
        last_score["churn_probability"],
        last_score["predicted_value"],
        last_score["segment"],
        last_score["lifecycle_stage"],
    )
    kept = (state.last_score[0], state.last_score[1], state.segment, state.lifecycle)
    if told != kept:
        out.append(f"state keeps {kept}, its last score said {told}")
    if state.alert.last_alert_ms and iso(state.alert.last_alert_ms) not in alert_times:
        out.append(f"remembers an alert at {iso(state.alert.last_alert_ms)} never sent")
    if state.alert.active and state.last_score[0] < policy.clear_at - 1e-6:
        out.append(f"alert armed at churn probability {state.last_score[0]}")
    return out


def assert_same_state(
    got: StoreView,
    want: StoreView,
    *,
    scores: Iterable[Mapping[str, Any]],
    alerts: Iterable[Mapping[str, Any]],
    policy: AlertPolicy | None = None,
) -> None:
    """``got`` holds the same facts as ``want`` (the reference run), and its model outputs
    are those its own score and alert records (in the order they were sent) announced."""
    assert got.states.keys() == want.states.keys(), (
        f"users only in the run: {sorted(got.states.keys() - want.states.keys())[:5]}, "
        f"only in the reference: {sorted(want.states.keys() - got.states.keys())[:5]}"
    )
    last: dict[str, Mapping[str, Any]] = {}
    for record in scores:
        last[str(record["user_id"])] = record
    sent: dict[str, set[str]] = {}
    for record in alerts:
        sent.setdefault(str(record["user_id"]), set()).add(str(record["as_of"]))
    problems: dict[str, list[str]] = {}
    for uid, state in sorted(got.states.items()):
        diffs = state_diffs(state, want.states[uid])
        diffs += output_diffs(state, last.get(uid), sent.get(uid, set()), policy or AlertPolicy())
        if diffs:
            problems[uid] = diffs
    assert not problems, f"{len(problems)} of {len(got.states)} users differ, e.g. " + "; ".join(
        f"{u}: {', '.join(d[:3])}" for u, d in list(problems.items())[:3]
    )
    assert got.due == want.due, _due_diff(got.due, want.due)
    assert got.watermarks == want.watermarks, (got.watermarks, want.watermarks)


def _due_diff(got: dict[int, list[str]], want: dict[int, list[str]]) -> str:
    out = []
    for p in sorted(set(got) | set(want)):
        a, b = got.get(p, []), want.get(p, [])
        if a != b:
            out.append(f"partition {p}: {len(a)} due here, {len(b)} in the reference, "
                       f"only here {sorted(set(a) - set(b))[:3]}, only there "
                       f"{sorted(set(b) - set(a))[:3]}")  # fmt: skip
    return "due queues differ: " + "; ".join(out)
