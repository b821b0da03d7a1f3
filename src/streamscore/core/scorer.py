"""Per-user scoring semantics: apply events, take snapshots, resolve labels, rescore silences.

This is what streamscore means by a user's scores (DESIGN.md §4), free of I/O so that
production, replay and the demo run exactly the same code. The runtime hands the scorer a
user's state and events; it mutates the state and returns output records (built by
``outputs.py``). It predicts with a ``Lineage`` and never learns itself: every resolved label
goes to a ``Learner`` as a ``TrainingExample`` (``lineage.py``), and so does every customer
at a snapshot, for the RFM population.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Collection, Iterable, Mapping

from streamscore.core import outputs
from streamscore.core.drift import DriftLog, PopulationDrift
from streamscore.core.events import Event, EventType
from streamscore.core.explain import explain
from streamscore.core.features import derive, derived_parts
from streamscore.core.inputs import MODEL_INPUTS, model_inputs, named
from streamscore.core.lineage import Learner, Lineage
from streamscore.core.models import model_version
from streamscore.core.population import key_hash
from streamscore.core.records import TOPIC_SCORES, record_id
from streamscore.core.segments import Lifecycle, next_lifecycle, segment_name
from streamscore.core.snapshots import Snapshot
from streamscore.core.state import UserState
from streamscore.core.timeutil import DAY_MS
from streamscore.core.values import (
    ChurnActivity,
    Counters,
    CustomerObservation,
    Evaluation,
    LabelKind,
    LabelOutcome,
    Output,
    PopulationSample,
    ScoringConfig,
    TrainingExample,
)

_UNIT = float(1 << 64)
_T, _T_X = MODEL_INPUTS.index("T"), MODEL_INPUTS.index("t_x")


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
        *,
        origins: Mapping[tuple[int, int], tuple[int, int]] | None = None,
        late: Collection[tuple[int, int]] = (),
    ) -> list[Output]:
        """Apply a user's new events (partition, offset, event), then score once as of the last.

        Duplicates are weeded out in offset order first (replayed offsets on any partition,
        second copies of re-keyed records, whose origin ``origins`` gives by position, and
        repeated ids), then the new events are applied in that order, the order their
        partition holds them in. Not in event-time order: a batch would then apply an event
        before a later-read one it precedes in time, where one batch per record applies it
        after, and the snapshot a grid time between them takes would see it or not; a late
        re-keyed copy or a record far ahead of its stream makes that common. In offset order
        the state depends on the input alone, however it is cut into batches or replayed.

        ``watermarks_before`` maps (partition, offset) to the partition's watermark just before
        that record was read. Silences and label horizons the watermark had passed by then are
        settled before the event is applied, as if every record were a batch of its own: the
        state then does not depend on where batch boundaries fell (a batch holding both a
        user's return and the records that carried the watermark past one of their silence
        points would otherwise skip that silence).

        ``late``: positions of events at or behind that watermark to apply all the same
        (``late_events=apply``; ``_apply_late`` says how). The user is then scored as of the
        later of their latest event and that watermark, never as of an earlier time.
        """
        cfg = self.config
        fresh: list[tuple[int, int, Event]] = []
        for partition, offset, event in sorted(events, key=lambda e: e[1]):
            origin = origins.get((partition, offset)) if origins else None
            if state.seen(partition, offset, event.event_id, origin):
                self.counters.duplicates += 1
                continue
            state.mark(partition, offset, event.event_id, origin)
            fresh.append((partition, offset, event))
        if not fresh:
            return []
        returning = state.lifecycle == Lifecycle.CHURNED
        f = state.features
        out: list[Output] = []
        wm = 0
        for partition, offset, event in fresh:
            wm = watermarks_before.get((partition, offset), 0) if watermarks_before else 0
            if wm and (settled := self.advance(state, wm, now_ms)):
                out.extend(settled)
                returning = state.lifecycle == Lifecycle.CHURNED
            if returning:
                state.reactivated_ms = event.ts  # the first event back after churning
                returning = False
            if (partition, offset) in late:
                self._apply_late(state, event, wm)
                # In a batch of its own it would be scored as of the watermark, and churned
                # again if still a horizon behind it: then the next event is a return too.
                returning = self._churned_at(state, max(f.last_seen_ms, wm))
                continue
            self._snapshots_until(state, event.ts)
            f.apply(event, cfg.allowed_lateness_ms)
            self.counters.events += 1
            if event.ts >= f.last_seen_ms:
                state.rescore_step = 0
                state.next_snapshot_ms = self._next_snapshot(state, event.ts)
            self._observe_activity(state, event)
        self._observe_customer(state)
        last_event = fresh[-1][2]
        # An event that was not late is after the watermark before it: ``wm`` changes
        # nothing then.
        last = max(last_event.ts, f.last_seen_ms, wm)
        out.extend(self._score(state, last, now_ms, trigger="event", key=last_event.event_id))
        return out

    def _apply_late(self, state: UserState, event: Event, watermark_ms: int) -> None:
        """Fold in an event at or behind the watermark before it (``late_events=apply``).

        ``advance`` has just settled everything up to that watermark, so what the event can
        reach is: the features (``UserFeatures.apply_late``), and the labels still pending,
        as any event would (``_observe_activity``; a learnt label is never touched). Grid
        snapshots and silence points at or before the watermark are over: none is taken or
        rescored again, not even when the event is the user's newest (their silence is then
        counted from it, from the next point still ahead of the watermark on).
        """
        f = state.features
        f.apply_late(event, self.config.allowed_lateness_ms)
        self.counters.events += 1
        self.counters.late_applied += 1
        if event.ts >= f.last_seen_ms:
            silent = watermark_ms - f.last_seen_ms
            state.rescore_step = bisect.bisect_right(self._points, silent)
            state.next_snapshot_ms = self._next_snapshot(state, watermark_ms)
        self._observe_activity(state, event)

    def _churned_at(self, state: UserState, t_ms: int) -> bool:
        """Whether a score as of ``t_ms`` gives the lifecycle stage "churned" (it depends on
        the recency alone, as ``evaluate`` works it out)."""
        recency = max(t_ms - state.features.last_seen_ms, 0) / DAY_MS
        return recency >= self.config.churn_horizon_days

    def _observe_activity(self, state: UserState, event: Event) -> None:
        """Activity inside a snapshot's horizon labels it "not churned" at once.

        The model still learns that label only when the horizon has passed, like every other:
        learning "not churned" at once and "churned" H days later would feed the model a
        stream skewed towards the labels that happen to arrive first. Snapshots are taken at
        grid times, not at events (``_next_snapshot``), so any later activity is news.
        """
        cfg = self.config
        counts = cfg.churn_activity is ChurnActivity.ANY or event.type is EventType.PURCHASE
        buy = event.type is EventType.PURCHASE
        for snap in state.snapshots:
            if event.ts <= snap.t_ms:
                continue
            # A learnt label stays as it was learnt (only a late event can reach one).
            if (
                counts
                and not snap.returned
                and not snap.churn_learnt
                and event.ts <= snap.t_ms + cfg.churn_horizon_ms
            ):
                snap.returned = True
            if buy and not snap.value_learnt and event.ts <= snap.t_ms + cfg.value_horizon_ms:
                snap.spend += event.amount or 0.0
                snap.orders += 1

    def _observe_customer(self, state: UserState) -> None:
        """Hand the population model this customer's summary, if it samples them."""
        kh = key_hash(state.user_id)
        if self.learner.wants(kh):
            f = state.features
            inputs = model_inputs(f, f.last_seen_ms, self.config.purchase_activity)
            self.learner.observe_customer(
                CustomerObservation(kh, tuple(inputs), f.last_seen_ms, state.partition)
            )

    # -- training snapshots ---------------------------------------------------------------

    def _next_snapshot(self, state: UserState, after_ms: int) -> int:
        """The first time after ``after_ms`` at which this user's next snapshot is taken.

        Each user is snapshotted on a grid of their own: every ``snapshot_period`` at a phase
        set by a hash of their id, so the population's snapshots are spread evenly and each
        sees its user as of an arbitrary moment, as scores at any time do (not only at
        events, which would leave the long-silent out). Users silent for longer than the
        churn horizon are sampled: a grid time is taken with probability dormant ÷ periods
        of silence (a hash of user and time decides, so the same on any replay) and weighted
        by its inverse (``_weight``): long-silent users stay in the training population at a
        cost that grows with the logarithm of their silence. Skipped grid times are never
        woken for.
        """
        cfg = self.config
        period = cfg.snapshot_period_ms
        g = after_ms - (after_ms - key_hash(state.user_id) % period) % period + period
        last = self._last_activity(state)
        dormant = cfg.dormant_periods
        uid = state.user_id
        limit = g + 4000 * period  # far beyond any retention: the loop always ends
        while g < limit:
            silent = (g - last) / period
            if silent <= dormant or key_hash(f"{uid}@{g}") / _UNIT < dormant / silent:
                return g
            g += period
        return g

    def _weight(self, state: UserState, t_ms: int) -> float:
        """The inverse of the probability a snapshot at ``t_ms`` was taken with."""
        silent = (t_ms - self._last_activity(state)) / self.config.snapshot_period_ms
        return max(1.0, silent / self.config.dormant_periods)

    def _last_activity(self, state: UserState) -> int:
        f = state.features
        if self.config.purchase_activity and f.purchases:
            return f.last_purchase_ms
        return f.last_seen_ms

    def _snapshots_until(self, state: UserState, t_ms: int) -> None:
        """Take the snapshots due at or before ``t_ms``, each as of its own time (events
        after it are not applied yet: the watermark or a newer event has reached it)."""
        while state.next_snapshot_ms and state.next_snapshot_ms <= t_ms:
            at = state.next_snapshot_ms
            self._take_snapshot(state, at, self._weight(state, at))
            state.next_snapshot_ms = self._next_snapshot(state, at)

    # -- time passing ---------------------------------------------------------------------

    def due_ms(self, state: UserState) -> int | None:
        """The next event time at which this user needs attention without new events."""
        # Called at every step of ``advance``: a running minimum, no list.
        due: int | None = None
        step = state.rescore_step
        if step < len(self._points) and not state.features.empty:
            due = state.features.last_seen_ms + self._points[step]
        nxt = state.next_snapshot_ms
        if nxt and (due is None or nxt < due):
            due = nxt
        if state.snapshots:
            churn_h, value_h = self.config.churn_horizon_ms, self.config.value_horizon_ms
            for snap in state.snapshots:
                if not snap.churn_learnt and (due is None or snap.t_ms + churn_h < due):
                    due = snap.t_ms + churn_h
                if not snap.value_learnt and (due is None or snap.t_ms + value_h < due):
                    due = snap.t_ms + value_h
        return due

    def advance(self, state: UserState, watermark_ms: int, now_ms: int) -> list[Output]:
        """Resolve labels and rescore silences whose time the watermark has passed."""
        out: list[Output] = []
        cfg = self.config
        if not state.next_snapshot_ms and not state.features.empty:
            # A state upgraded from v3 has no grid position: the user has been silent since
            # their last event or snapshot, so grid times since then see today's state.
            since = max(state.last_snapshot_ms, state.features.last_seen_ms)
            state.next_snapshot_ms = self._next_snapshot(state, since)
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
                    self._resolve_value(state, snap)
                    resolved = True
            state.snapshots = [snap for snap in state.snapshots if not snap.done]
            if resolved:
                continue
            if state.next_snapshot_ms and state.next_snapshot_ms <= due:
                self._snapshots_until(state, due)
                continue
            point = state.rescore_step
            state.rescore_step += 1
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

    def _take_snapshot(self, state: UserState, t_ms: int, weight: float) -> None:
        cfg = self.config
        f = state.features
        raw = model_inputs(f, t_ms, cfg.purchase_activity)
        models = self.lineage.models
        p = models.predict_all(raw)
        tenure = max(t_ms - f.first_seen_ms, 0) / DAY_MS
        naive = f.spend / max(tenure, 1.0) * cfg.value_horizon_days
        snap = Snapshot(
            t_ms,
            raw,
            [],
            p.corrected_churn,
            p.corrected_value,
            naive,
            model_generation=models.generation,
            weight=weight,
            baseline_churn=p.base.p_churn,
            baseline_value=p.base.value,
            churn_served_btyd=not p.serve_churn,
            value_served_btyd=not p.serve_value,
        )
        state.snapshots.append(snap)
        state.last_snapshot_ms = t_ms
        since_purchase = max(t_ms - f.last_purchase_ms, 0) / DAY_MS if f.purchases else tenure
        sample_id = record_id("rfm", state.user_id, t_ms)
        self.learner.observe(
            PopulationSample(since_purchase, float(f.purchases), f.spend, id=sample_id)
        )
        self.counters.snapshots += 1

    def _resolve_churn(self, state: UserState, snap: Snapshot, *, churned: bool) -> None:
        snap.churn_learnt = True
        label_ms = snap.t_ms + self.config.churn_horizon_ms
        raw = snap.churn_x
        if self.outcomes is not None:
            recency = max(raw[_T] - raw[_T_X], 0.0) if len(raw) > _T else math.nan
            self.outcomes.append(
                LabelOutcome(
                    state.user_id,
                    snap.t_ms,
                    churned,
                    snap.served_churn,
                    recency,
                    snap.baseline_churn,
                )
            )
        self.learner.learn(
            TrainingExample(
                kind=LabelKind.CHURN,
                inputs=named(MODEL_INPUTS, raw),
                label=1.0 if churned else 0.0,
                predicted=snap.served_churn,
                baseline=None,
                snapshot_ms=snap.t_ms,
                label_ms=label_ms,
                weight=snap.weight,
                model_version=_version(snap),
                btyd=snap.baseline_churn,
                corrected=snap.churn_p,
                id=record_id("label", state.user_id, snap.t_ms, LabelKind.CHURN.value),
            )
        )

    def _resolve_value(self, state: UserState, snap: Snapshot) -> None:
        snap.value_learnt = True
        self.learner.learn(
            TrainingExample(
                kind=LabelKind.VALUE,
                inputs=named(MODEL_INPUTS, snap.churn_x),
                label=snap.spend,
                predicted=snap.served_value,
                baseline=snap.naive_value,
                snapshot_ms=snap.t_ms,
                label_ms=snap.t_ms + self.config.value_horizon_ms,
                weight=snap.weight,
                model_version=_version(snap),
                orders=snap.orders,
                btyd=snap.baseline_value,
                corrected=snap.value_p,
                id=record_id("label", state.user_id, snap.t_ms, LabelKind.VALUE.value),
            )
        )

    # -- scoring --------------------------------------------------------------------------

    def evaluate(self, state: UserState, t_ms: int) -> Evaluation:
        """Score a user as of ``t_ms`` without changing anything."""
        cfg = self.config
        f = state.features
        parts = derived_parts(f, t_ms)
        derived = derive(f, t_ms, parts)
        raw = model_inputs(f, t_ms, cfg.purchase_activity, parts)
        churn_p, value_p = self.lineage.models.predict(raw)
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
            raw,
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
        why = explain(models, ev.churn_x) if cfg.explain_scores else None
        record = outputs.score_record(
            cfg,
            uid,
            ev,
            t_ms,
            now_ms,
            trigger=trigger,
            key=key,
            model_version=version,
            explanation=why,
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
            reasons = models.churn_reasons(ev.churn_x)
            why = why or explain(models, ev.churn_x)
            out.append(
                outputs.churn_alert(
                    cfg, uid, ev, t_ms, reasons=reasons, model_version=version, explanation=why
                )
            )
            counters.alerts += 1
        return out
