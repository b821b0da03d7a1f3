"""The scoring step for one user: apply events, resolve labels, score, segment, alert.

This is the whole of streamscore's semantics in one place (DESIGN.md §4), free of I/O so that
production, replay and the demo run exactly the same code. The runtime hands it a user's
state and events; it returns output records and mutates the state, models and metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from streamscore.core.alerts import AlertPolicy
from streamscore.core.drift import DriftMonitor
from streamscore.core.events import Event, EventType
from streamscore.core.features import derive
from streamscore.core.models import CHURN_INPUTS, Models, churn_inputs, value_inputs
from streamscore.core.records import TOPIC_ALERTS, TOPIC_SCORES, TOPIC_SEGMENTS, record_id
from streamscore.core.segments import Lifecycle, RfmScorer, next_lifecycle, segment_name
from streamscore.core.state import Snapshot, UserState
from streamscore.core.timeutil import DAY_MS, iso
from streamscore.core.validation import ChurnQuality, ValueQuality

_RECENCY = list(CHURN_INPUTS).index("recency_days")


class ChurnActivity(StrEnum):
    """What counts as activity for the churn label."""

    ANY = "any"
    PURCHASE = "purchase"


@dataclass(frozen=True, slots=True)
class ScoringConfig:
    """Horizons, periods and thresholds of the scoring semantics (event-time milliseconds)."""

    churn_horizon_days: float = 14.0
    value_horizon_days: float = 30.0
    snapshot_period_days: float = 7.0
    allowed_lateness_ms: int = 5 * 60_000
    activity_grace_ms: int = 30 * 60_000
    rescore_after_days: tuple[float, ...] = (3.0, 7.0, 14.0, 21.0, 30.0, 45.0, 60.0, 90.0)
    churn_activity: ChurnActivity = ChurnActivity.ANY
    at_risk_threshold: float = 0.6
    alerts: AlertPolicy = field(default_factory=AlertPolicy)

    @property
    def churn_horizon_ms(self) -> int:
        """Churn horizon H in milliseconds."""
        return round(self.churn_horizon_days * DAY_MS)

    @property
    def value_horizon_ms(self) -> int:
        """Value horizon in milliseconds."""
        return round(self.value_horizon_days * DAY_MS)

    @property
    def rescore_points_ms(self) -> tuple[int, ...]:
        """Inactivity offsets at which silent users are rescored; the churn horizon is one."""
        points = {*self.rescore_after_days, self.churn_horizon_days}
        return tuple(sorted(round(d * DAY_MS) for d in points))


@dataclass(slots=True)
class Output:
    """One record for an output topic, keyed by user."""

    topic: str
    key: str
    value: dict[str, Any]


@dataclass(slots=True)
class LabelOutcome:
    """A resolved churn label, for callers that compare against ground truth (the demo)."""

    user_id: str
    t_ms: int
    churned: bool
    predicted: float
    recency_days: float


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A user's scores as of some event time, before any side effect."""

    churn: float
    value: float
    segment: str
    lifecycle: str
    derived: dict[str, float]
    churn_x: list[float]


@dataclass(slots=True)
class Quality:
    """Progressive validation of both models."""

    churn: ChurnQuality = field(default_factory=ChurnQuality)
    value: ValueQuality = field(default_factory=ValueQuality)


class Scorer:
    """Pure per-user scoring logic shared by every runtime."""

    def __init__(
        self,
        config: ScoringConfig,
        models: Models | None = None,
        rfm: RfmScorer | None = None,
        quality: Quality | None = None,
    ) -> None:
        self.config = config
        self.models = models or Models()
        self.rfm = rfm or RfmScorer()
        self.quality = quality or Quality()
        self.outcomes: list[LabelOutcome] | None = None  # set to a list to collect labels
        self.counters: dict[str, int] = dict.fromkeys(
            ("events", "duplicates", "scores", "alerts", "segment_changes", "snapshots"), 0
        )
        self.drift = DriftMonitor()
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
                self.counters["duplicates"] += 1
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
            self.counters["events"] += 1
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
        derived = derive(state.features, t_ms, self.config.churn_horizon_days)
        cx, vx = churn_inputs(derived), value_inputs(derived)
        churn_p, value_p = self.models.predict(cx, vx)
        naive = derived["spend"] / max(derived["tenure_days"], 1.0) * self.config.value_horizon_days
        state.snapshots.append(Snapshot(t_ms, cx, vx, churn_p, value_p, naive))
        state.last_snapshot_ms = t_ms
        self.rfm.observe(derived["days_since_purchase"], derived["purchases"], derived["spend"])
        self.counters["snapshots"] += 1

    def _resolve_churn(self, state: UserState, snap: Snapshot, *, churned: bool) -> None:
        snap.churn_learnt = True
        self.quality.churn.update(snap.churn_p, churned, snap.t_ms)
        self.drift.churn_label(snap.churn_p, churned, snap.t_ms + self.config.churn_horizon_ms)
        if self.outcomes is not None:
            recency = math.expm1(snap.churn_x[_RECENCY])
            self.outcomes.append(
                LabelOutcome(state.user_id, snap.t_ms, churned, snap.churn_p, recency)
            )
        self.models.learn_churn(snap.churn_x, churned)

    def _resolve_value(self, snap: Snapshot) -> None:
        snap.value_learnt = True
        self.quality.value.update(snap.value_p, snap.naive_value, snap.spend)
        self.drift.value_label(snap.value_p, snap.spend, snap.t_ms + self.config.value_horizon_ms)
        self.models.learn_value(snap.value_x, snap.spend)

    # -- scoring --------------------------------------------------------------------------

    def evaluate(self, state: UserState, t_ms: int) -> Evaluation:
        """Score a user as of ``t_ms`` without changing anything."""
        cfg = self.config
        f = state.features
        derived = derive(f, t_ms, cfg.churn_horizon_days)
        cx, vx = churn_inputs(derived), value_inputs(derived)
        churn_p, value_p = self.models.predict(cx, vx)
        r, fr, m = self.rfm.scores(
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

    def score_record(
        self, state: UserState, ev: Evaluation, t_ms: int, now_ms: int, *, trigger: str, key: str
    ) -> dict[str, Any]:
        """The score record (``TOPIC_SCORES``) of an evaluation."""
        uid = state.user_id
        return {
            "id": record_id("score", uid, trigger, key),
            "user_id": uid,
            "as_of": iso(t_ms),
            "churn_probability": round(ev.churn, 6),
            "predicted_value": round(ev.value, 2),
            "value_horizon_days": self.config.value_horizon_days,
            "segment": ev.segment,
            "lifecycle_stage": ev.lifecycle,
            "model_version": self.models.version,
            "scored_at": iso(now_ms),
            "trigger": trigger,
        }

    def _score(
        self, state: UserState, t_ms: int, now_ms: int, *, trigger: str, key: str
    ) -> list[Output]:
        cfg = self.config
        ev = self.evaluate(state, t_ms)
        state.last_score = (ev.churn, ev.value)
        self.drift.observe_score(ev.churn, ev.derived, t_ms)
        uid = state.user_id
        as_of = iso(t_ms)
        out = [
            Output(
                TOPIC_SCORES,
                uid,
                self.score_record(state, ev, t_ms, now_ms, trigger=trigger, key=key),
            )
        ]
        self.counters["scores"] += 1
        if ev.segment != state.segment or ev.lifecycle != state.lifecycle:
            out.append(
                Output(
                    TOPIC_SEGMENTS,
                    uid,
                    {
                        "id": record_id("segment", uid, t_ms, ev.segment, ev.lifecycle),
                        "user_id": uid,
                        "as_of": as_of,
                        "previous": state.segment,
                        "current": ev.segment,
                        "lifecycle_previous": state.lifecycle,
                        "lifecycle_current": ev.lifecycle,
                    },
                )
            )
            self.counters["segment_changes"] += 1
            state.segment, state.lifecycle = ev.segment, ev.lifecycle
        if state.alert.step(cfg.alerts, ev.churn, t_ms, state.features.purchases):
            out.append(
                Output(
                    TOPIC_ALERTS,
                    uid,
                    {
                        "id": record_id("alert", uid, t_ms),
                        "user_id": uid,
                        "as_of": as_of,
                        "churn_probability": round(ev.churn, 6),
                        "predicted_value": round(ev.value, 2),
                        "segment": ev.segment,
                        "reasons": self.models.churn_reasons(ev.churn_x, ev.derived),
                        "recommended_action": cfg.alerts.action(ev.churn, ev.value),
                        "model_version": self.models.version,
                    },
                )
            )
            self.counters["alerts"] += 1
        return out
