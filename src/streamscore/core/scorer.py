"""Per-user scoring semantics: apply events, take snapshots, resolve labels, rescore silences.

This is what streamscore means by a user's scores (DESIGN.md §4), free of I/O so that
production, replay and the demo run exactly the same code. The runtime hands the scorer a
user's state and events; it mutates the state and returns output records (built by
``outputs.py``). It predicts with a ``Lineage`` and never learns itself: every resolved label
goes to a ``Learner`` as a ``TrainingExample`` (``lineage.py``), and so does every customer
at a snapshot, for the RFM population.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from streamscore.core import outputs
from streamscore.core.drift import DriftLog, PopulationDrift
from streamscore.core.events import Event, EventType
from streamscore.core.features import derive
from streamscore.core.inputs import CHURN_INPUTS, VALUE_INPUTS, churn_inputs, named, value_inputs
from streamscore.core.lineage import Learner, Lineage
from streamscore.core.models import model_version
from streamscore.core.records import TOPIC_SCORES
from streamscore.core.segments import Lifecycle, next_lifecycle, segment_name
from streamscore.core.snapshots import Snapshot
from streamscore.core.state import UserState
from streamscore.core.timeutil import DAY_MS
from streamscore.core.values import (
    ChurnActivity,
    Counters,
    Evaluation,
    LabelKind,
    LabelOutcome,
    Output,
    PopulationSample,
    ScoringConfig,
    TrainingExample,
)

_RECENCY = list(CHURN_INPUTS).index("recency_days")


def _version(snap: Snapshot) -> str | None:
    generation = snap.model_generation
    return None if generation is None else model_version(generation)


class Scorer:
    """Pure per-user scoring logic shared by every runtime.

    ``lineage`` is read to predict and segment, ``learner`` is handed every resolved label
    and every snapshot's customer; in one process both are the same ``Trainer``.
    ``drift_log`` receives population-drift detections (share the trainer's to keep one log).
    """

    def __init__(
        self,
        config: ScoringConfig,
        lineage: Lineage,
        learner: Learner,
        drift_log: DriftLog | None = None,
    ) -> None:
        self.config = config
        self.lineage = lineage
        self.learner = learner
        self.outcomes: list[LabelOutcome] | None = None  # set to a list to collect labels
        self.counters = Counters()
        self.drift = PopulationDrift(drift_log)
        self._points = config.rescore_points_ms

    # -- events ---------------------------------------------------------------------------

    def apply_events(
        self,
        state: UserState,
        events: Iterable[tuple[int, int, Event]],
        now_ms: int,
        watermarks_before: Mapping[tuple[int, int], int] | None = None,
    ) -> list[Output]:
        """Apply a user's new events (partition, offset, event), then score once as of the last.

        Duplicates are weeded out in offset order first (replayed offsets, repeated ids), and
        only then are the new events applied in event-time order: sorting first would make an
        earlier offset with a later timestamp look replayed.

        ``watermarks_before`` maps (partition, offset) to the partition's watermark just before
        that record was read. Silences and label horizons the watermark had passed by then are
        settled before the event is applied, as if every record were a batch of its own: the
        state then does not depend on where batch boundaries fell (a batch holding both a
        user's return and the records that carried the watermark past one of their silence
        points would otherwise skip that silence).
        """
        cfg = self.config
        fresh: list[tuple[int, int, Event]] = []
        for partition, offset, event in sorted(events, key=lambda e: e[1]):
            if state.seen(partition, offset, event.event_id):
                self.counters.duplicates += 1
                continue
            state.mark(partition, offset, event.event_id)
            fresh.append((partition, offset, event))
        if not fresh:
            return []
        fresh.sort(key=lambda e: (e[2].ts, e[1]))
        returning = state.lifecycle == Lifecycle.CHURNED
        f = state.features
        out: list[Output] = []
        for partition, offset, event in fresh:
            wm = watermarks_before.get((partition, offset), 0) if watermarks_before else 0
            if wm and (settled := self.advance(state, wm, now_ms)):
                out.extend(settled)
                returning = state.lifecycle == Lifecycle.CHURNED
            if returning:
                state.reactivated_ms = event.ts  # the first event back after churning
                returning = False
            f.apply(event, cfg.allowed_lateness_ms)
            self.counters.events += 1
            if event.ts >= f.last_seen_ms:
                state.rescore_step = 0
            self._observe_activity(state, event)
            if event.ts - state.last_snapshot_ms >= cfg.snapshot_period_days * DAY_MS:
                self._take_snapshot(state, event.ts)
        last_event = fresh[-1][2]
        last = max(last_event.ts, f.last_seen_ms)
        out.extend(self._score(state, last, now_ms, trigger="event", key=last_event.event_id))
        return out

    def _observe_activity(self, state: UserState, event: Event) -> None:
        """Activity inside a snapshot's horizon labels it "not churned" at once.

        The model still learns that label only when the horizon has passed, like every other:
        learning "not churned" at once and "churned" H days later would feed the model a
        stream skewed towards the labels that happen to arrive first.

        Only activity after a grace period counts: the rest of the session a snapshot was
        taken in says nothing about whether the user comes back, and counting it would teach
        the model (and flatter its metrics) with labels that were never in doubt.
        """
        cfg = self.config
        counts = cfg.churn_activity is ChurnActivity.ANY or event.type is EventType.PURCHASE
        for snap in state.snapshots:
            if event.ts <= snap.t_ms:
                continue
            if (
                counts
                and not snap.returned
                and snap.t_ms + cfg.activity_grace_ms < event.ts <= snap.t_ms + cfg.churn_horizon_ms
            ):
                snap.returned = True
            if event.type is EventType.PURCHASE and event.ts <= snap.t_ms + cfg.value_horizon_ms:
                snap.spend += event.amount or 0.0

    # -- time passing ---------------------------------------------------------------------

    def due_ms(self, state: UserState) -> int | None:
        """The next event time at which this user needs attention without new events."""
        candidates: list[int] = []
        if state.rescore_step < len(self._points) and not state.features.empty:
            candidates.append(state.features.last_seen_ms + self._points[state.rescore_step])
        for snap in state.snapshots:
            if not snap.churn_learnt:
                candidates.append(snap.t_ms + self.config.churn_horizon_ms)
            if not snap.value_learnt:
                candidates.append(snap.t_ms + self.config.value_horizon_ms)
        return min(candidates) if candidates else None

    def advance(self, state: UserState, watermark_ms: int, now_ms: int) -> list[Output]:
        """Resolve labels and rescore silences whose time the watermark has passed."""
        out: list[Output] = []
        cfg = self.config
        while True:
            due = self.due_ms(state)
            if due is None or due > watermark_ms:
                return out
            resolved = False
            for snap in state.snapshots:
                if not snap.churn_learnt and snap.t_ms + cfg.churn_horizon_ms == due:
                    self._resolve_churn(state, snap, churned=not snap.returned)
                    resolved = True
                if not snap.value_learnt and snap.t_ms + cfg.value_horizon_ms == due:
                    self._resolve_value(snap)
                    resolved = True
            state.snapshots = [snap for snap in state.snapshots if not snap.done]
            if resolved:
                continue
            point = state.rescore_step
            state.rescore_step += 1
            if (
                cfg.rescore_points_ms
                and due - state.last_snapshot_ms >= cfg.snapshot_period_days * DAY_MS
            ):
                self._take_snapshot(state, due)
            out.extend(
                self._score(
                    state,
                    due,
                    now_ms,
                    trigger="silence",
                    key=f"{state.features.last_seen_ms}:{point}",
                )
            )

    # -- labels ---------------------------------------------------------------------------

    def _take_snapshot(self, state: UserState, t_ms: int) -> None:
        cfg = self.config
        derived = derive(state.features, t_ms, cfg.churn_horizon_days)
        cx, vx = churn_inputs(derived), value_inputs(derived)
        models = self.lineage.models
        churn_p, value_p = models.predict(cx, vx)
        naive = derived["spend"] / max(derived["tenure_days"], 1.0) * cfg.value_horizon_days
        snap = Snapshot(t_ms, cx, vx, churn_p, value_p, naive, model_generation=models.generation)
        state.snapshots.append(snap)
        state.last_snapshot_ms = t_ms
        self.learner.observe(
            PopulationSample(derived["days_since_purchase"], derived["purchases"], derived["spend"])
        )
        self.counters.snapshots += 1

    def _resolve_churn(self, state: UserState, snap: Snapshot, *, churned: bool) -> None:
        snap.churn_learnt = True
        label_ms = snap.t_ms + self.config.churn_horizon_ms
        if self.outcomes is not None:
            recency = math.expm1(snap.churn_x[_RECENCY])
            self.outcomes.append(
                LabelOutcome(state.user_id, snap.t_ms, churned, snap.churn_p, recency)
            )
        self.learner.learn(
            TrainingExample(
                kind=LabelKind.CHURN,
                inputs=named(CHURN_INPUTS, snap.churn_x),
                label=1.0 if churned else 0.0,
                predicted=snap.churn_p,
                baseline=None,
                snapshot_ms=snap.t_ms,
                label_ms=label_ms,
                model_version=_version(snap),
            )
        )

    def _resolve_value(self, snap: Snapshot) -> None:
        snap.value_learnt = True
        self.learner.learn(
            TrainingExample(
                kind=LabelKind.VALUE,
                inputs=named(VALUE_INPUTS, snap.value_x),
                label=snap.spend,
                predicted=snap.value_p,
                baseline=snap.naive_value,
                snapshot_ms=snap.t_ms,
                label_ms=snap.t_ms + self.config.value_horizon_ms,
                model_version=_version(snap),
            )
        )

    # -- scoring --------------------------------------------------------------------------

    def evaluate(self, state: UserState, t_ms: int) -> Evaluation:
        """Score a user as of ``t_ms`` without changing anything."""
        cfg = self.config
        f = state.features
        derived = derive(f, t_ms, cfg.churn_horizon_days)
        cx, vx = churn_inputs(derived), value_inputs(derived)
        churn_p, value_p = self.lineage.models.predict(cx, vx)
        r, fr, m = self.lineage.rfm.scores(
            derived["days_since_purchase"], derived["purchases"], derived["spend"]
        )
        previous_lc = Lifecycle(state.lifecycle) if state.lifecycle else None
        lifecycle = next_lifecycle(
            previous_lc,
            purchases=f.purchases,
            recency_days=derived["recency_days"],
            churn_probability=churn_p,
            churn_horizon_days=cfg.churn_horizon_days,
            at_risk_threshold=cfg.at_risk_threshold,
            purchased_since_reactivation=f.last_purchase_ms > state.reactivated_ms,
        )
        return Evaluation(
            churn_p,
            value_p,
            segment_name(r, fr, m, derived["purchases"]),
            lifecycle.value,
            derived,
            cx,
        )

    def _score(
        self, state: UserState, t_ms: int, now_ms: int, *, trigger: str, key: str
    ) -> list[Output]:
        """Evaluate, remember the score, segment and alert memory, and build the records."""
        cfg = self.config
        models = self.lineage.models
        ev = self.evaluate(state, t_ms)
        state.last_score = (ev.churn, ev.value)
        self.drift.observe_score(ev.churn, ev.derived, t_ms, models.churn_learnt)
        uid = state.user_id
        version = models.version
        record = outputs.score_record(
            cfg, uid, ev, t_ms, now_ms, trigger=trigger, key=key, model_version=version
        )
        out = [Output(TOPIC_SCORES, uid, record)]
        counters = self.counters
        counters.scores += 1
        if ev.segment != state.segment or ev.lifecycle != state.lifecycle:
            out.append(
                outputs.segment_change(
                    uid, ev, t_ms, previous=state.segment, lifecycle_previous=state.lifecycle
                )
            )
            counters.segment_changes += 1
            state.segment, state.lifecycle = ev.segment, ev.lifecycle
        if state.alert.step(cfg.alerts, ev.churn, t_ms, state.features.purchases):
            reasons = models.churn_reasons(ev.churn_x, ev.derived)
            out.append(
                outputs.churn_alert(cfg, uid, ev, t_ms, reasons=reasons, model_version=version)
            )
            counters.alerts += 1
        return out
