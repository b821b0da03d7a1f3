"""Wiring for the embedded default (memory store, file source and sinks): replay and demo.

Production (``streamscore run``) wires the same ``Pipeline`` (``wiring.build_pipeline``) to
Kafka and Redis instead; see ``service.py``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streamscore.adapters.files import JsonlSink, JsonlSource
from streamscore.adapters.memory import ListSource, MemoryStateStore
from streamscore.config import Settings
from streamscore.core import outputs
from streamscore.core.drift import DriftEvent
from streamscore.core.records import OUTPUT_TOPICS
from streamscore.core.scorer import Scorer
from streamscore.core.state import UserState
from streamscore.core.trainer import Trainer
from streamscore.core.validation import exact_auc
from streamscore.core.values import LabelOutcome
from streamscore.gc_freeze import freeze_startup_heap, thaw_heap
from streamscore.ports import SourceRecord
from streamscore.progress import Progress
from streamscore.runtime import BatchStats, Pipeline, wall_clock_ms
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event
from streamscore.wiring import build_pipeline, in_process_scorer


@dataclass(slots=True)
class RunSummary:
    """What a finite run did, for the closing summary and report.json."""

    records: int = 0
    events: int = 0
    seconds: float = 0.0
    dead_letters: Counter[str] = field(default_factory=Counter)
    late_events: int = 0
    late_applied: int = 0
    held_events: int = 0
    outputs: Counter[str] = field(default_factory=Counter)
    last_event_ms: int = 0
    users: int = 0

    def add(self, stats: BatchStats) -> None:
        """Fold one batch in."""
        self.records += stats.records
        self.events += stats.events
        self.dead_letters.update(stats.dead_letters)
        self.late_events += stats.late_events
        self.late_applied += stats.late_applied
        self.held_events += stats.held_events
        self.outputs.update(stats.outputs)
        self.last_event_ms = max(self.last_event_ms, stats.max_event_ms)

    @property
    def events_per_second(self) -> float:
        """Input records processed per wall-clock second."""
        return self.records / self.seconds if self.seconds else 0.0


def drive(pipeline: Pipeline, progress: Progress | None) -> RunSummary:
    """Run a finite source to its end, collecting a summary."""
    summary = RunSummary()
    freeze_startup_heap()
    started = time.perf_counter()

    def on_batch(stats: BatchStats) -> None:
        summary.add(stats)
        if progress is not None:
            progress.update(stats.records, stats.max_event_ms or None)

    try:
        pipeline.run_until_exhausted(on_batch)
    finally:
        thaw_heap()
    summary.seconds = time.perf_counter() - started
    if progress is not None:
        progress.close()
    return summary


def iter_states(store: MemoryStateStore) -> Iterator[UserState]:
    """Every user state in the store."""
    for uid, raw in store.states.items():
        yield UserState.from_bytes(uid, raw)


def final_scores(
    scorer: Scorer, store: MemoryStateStore, as_of_ms: int, now_ms: int
) -> Iterator[dict[str, Any]]:
    """Every user scored as of ``as_of_ms`` (users first seen later are skipped)."""
    for state in iter_states(store):
        if state.features.empty or state.features.first_seen_ms > as_of_ms:
            continue
        ev = scorer.evaluate(state, as_of_ms)
        yield outputs.score_record(
            scorer.config,
            state.user_id,
            ev,
            as_of_ms,
            now_ms,
            trigger="silence",
            key=f"final:{as_of_ms}",
            model_version=scorer.lineage.models.version,
        )


def report(scorer: Scorer, trainer: Trainer, summary: RunSummary) -> dict[str, Any]:
    """Progressive-validation metrics and run counts, as written to report.json."""
    return {
        "records": summary.records,
        "events": summary.events,
        "seconds": round(summary.seconds, 3),
        "events_per_second": round(summary.events_per_second, 1),
        "dead_letters": dict(summary.dead_letters),
        # Valid events behind the watermark (dead-lettered, but not invalid), and
        # events too far ahead to move it alone: input the stream's time disagrees with.
        "late_events": summary.late_events,
        # Of those, applied to features (late_events=apply; absent when none were).
        **({"late_events_applied": summary.late_applied} if summary.late_applied else {}),
        "watermark_held_events": summary.held_events,
        "outputs": dict(summary.outputs),
        "churn": trainer.quality.churn.report(),
        "value": trainer.quality.value.report(),
        # The fitted buy-till-you-die model alone, on the same labels (its predictions were
        # stored with each snapshot, like the model's).
        "btyd": {
            "churn": trainer.btyd_quality.churn.report(),
            "value": trainer.btyd_quality.value.report(),
            "population": trainer.models.population.describe(),
        },
        "labels_not_learnt": trainer.unlearnt,
        # Which prediction scores carry now, and on how many labels the choice rests.
        "serving_gate": trainer.models.gate.describe(),
        "model_version": trainer.models.version,
        "config": {
            "churn_horizon_days": scorer.config.churn_horizon_days,
            "value_horizon_days": scorer.config.value_horizon_days,
            "snapshot_period_days": scorer.config.snapshot_period_days,
        },
    }


def replay(
    settings: Settings,
    events_path: Path,
    out_dir: Path,
    as_of_ms: int | None = None,
    *,
    show_progress: bool = True,
    store: MemoryStateStore | None = None,
) -> tuple[RunSummary, dict[str, Any]]:
    """``streamscore replay``: the pipeline over a JSONL file, outputs as JSONL files."""
    # Scoring "as of" a time must not see what happened after it: the replay stops there.
    source = JsonlSource(
        events_path,
        topic=settings.input_topic,
        until_ms=as_of_ms,
        max_span_ms=round(settings.replay_batch_span_seconds * 1000),
    )
    store = store if store is not None else MemoryStateStore()
    sink = JsonlSink(out_dir)
    sink.ensure(OUTPUT_TOPICS)
    scorer, trainer = in_process_scorer(
        settings.scoring(), settings.model_params(), dedupe_window=settings.training_dedupe_window
    )
    pipeline = build_pipeline(settings, source, store, sink, scorer)
    try:
        summary = drive(pipeline, Progress("replay") if show_progress else None)
    finally:
        sink.close()
    cutoff = as_of_ms if as_of_ms is not None else summary.last_event_ms
    rep = write_reports(out_dir, scorer, store, summary, cutoff, trainer=trainer, title="replay")
    summary.users = rep["users_scored"]
    return summary, rep


def write_reports(
    out_dir: Path,
    scorer: Scorer,
    store: MemoryStateStore,
    summary: RunSummary,
    as_of_ms: int,
    *,
    trainer: Trainer,
    title: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``final_scores.jsonl`` (every user as of ``as_of_ms``), ``report.json`` and the
    self-contained ``report.html`` drawn from it; returns the report."""
    from streamscore.report_html import render_report

    segments: Counter[str] = Counter()
    lifecycles: Counter[str] = Counter()
    with (out_dir / "final_scores.jsonl").open("wb") as fp:
        for record in final_scores(scorer, store, as_of_ms, wall_clock_ms()):
            fp.write(orjson.dumps(record) + b"\n")
            segments[record["segment"]] += 1
            lifecycles[record["lifecycle_stage"]] += 1
    rep = report(scorer, trainer, summary)
    rep["as_of"] = as_of_ms
    rep["users_scored"] = sum(segments.values())
    rep["segments"] = dict(segments.most_common())
    rep["lifecycles"] = dict(lifecycles.most_common())
    rep.update(extra or {})
    (out_dir / "report.json").write_bytes(orjson.dumps(rep, option=orjson.OPT_INDENT_2))
    (out_dir / "report.html").write_text(render_report(rep, title=title), encoding="utf-8")
    return rep


def simulated_records(sim: ShopSimulator, topic: str) -> Iterator[SourceRecord]:
    """The simulator's events as source records of partition 0, timestamped with their event
    time (malformed ones it injects: without)."""
    for offset, event in enumerate(sim.events()):
        ts = event.get("ts") if isinstance(event, dict) else None
        yield SourceRecord(
            topic, 0, offset, encode_event(event), ts if isinstance(ts, int) else None
        )


@dataclass(slots=True)
class DemoResult:
    """Everything the demo summary shows."""

    summary: RunSummary
    report: dict[str, Any]
    model_auc: float | None
    oracle_auc: float | None
    warm_model_auc: float | None
    warm_oracle_auc: float | None
    btyd_auc: float | None
    warm_btyd_auc: float | None
    labels: int
    segments: Counter[str]
    lifecycles: Counter[str]
    drift_day: float | None
    drift_events: list[DriftEvent] = field(default_factory=list)
    """Every drift detection of the run, in order."""


def demo(
    settings: Settings,
    sim_config: SimulationConfig,
    out_dir: Path,
    *,
    show_progress: bool = True,
    expected_events: int | None = None,
    on_batch: Callable[[BatchStats], None] | None = None,
) -> DemoResult:
    """``streamscore demo``: a simulated shop through the whole pipeline, against ground truth."""
    sim = ShopSimulator(sim_config)
    store = MemoryStateStore()
    sink = JsonlSink(out_dir)
    sink.ensure(OUTPUT_TOPICS)
    scorer, trainer = in_process_scorer(
        settings.scoring(), settings.model_params(), dedupe_window=settings.training_dedupe_window
    )
    outcomes: list[LabelOutcome] = []
    scorer.outcomes = outcomes
    source = ListSource(
        simulated_records(sim, settings.input_topic),
        topic=settings.input_topic,
        max_span_ms=round(settings.replay_batch_span_seconds * 1000),
    )
    pipeline = build_pipeline(settings, source, store, sink, scorer)
    progress = Progress("demo", total=expected_events) if show_progress else None
    try:
        summary = drive(pipeline, progress)
    finally:
        sink.close()
    horizon = settings.churn_horizon_days
    oracle = [
        sim.oracle_churn_probability(
            o.user_id, o.t_ms, o.t_ms - round(o.recency_days * 86_400_000), horizon
        )
        for o in outcomes
    ]
    labels = [o.churned for o in outcomes]
    preds = [o.predicted for o in outcomes]
    btyd = [o.btyd if o.btyd == o.btyd else 0.5 for o in outcomes]  # NaN: an upgraded snapshot
    warm_from = len(outcomes) // 5
    segments: Counter[str] = Counter()
    lifecycles: Counter[str] = Counter()
    for state in iter_states(store):
        segments[state.segment or "-"] += 1
        lifecycles[state.lifecycle or "-"] += 1
    summary.users = sum(segments.values())
    truth = {
        "model_auc": exact_auc(preds, labels) if outcomes else None,
        "oracle_auc": exact_auc(oracle, labels) if outcomes else None,
        "warm_model_auc": exact_auc(preds[warm_from:], labels[warm_from:]) if outcomes else None,
        "warm_oracle_auc": exact_auc(oracle[warm_from:], labels[warm_from:]) if outcomes else None,
        "btyd_auc": exact_auc(btyd, labels) if outcomes else None,
        "warm_btyd_auc": exact_auc(btyd[warm_from:], labels[warm_from:]) if outcomes else None,
    }
    simulation = {"users": sim_config.users, "days": sim_config.days, "seed": sim_config.seed}
    rep = write_reports(
        out_dir,
        scorer,
        store,
        summary,
        summary.last_event_ms,
        trainer=trainer,
        title="demo",
        extra={
            "ground_truth": truth,
            "simulation": {**simulation, "drift_day": sim_config.drift_day},
        },
    )
    return DemoResult(
        summary=summary,
        report=rep,
        model_auc=truth["model_auc"],
        oracle_auc=truth["oracle_auc"],
        warm_model_auc=truth["warm_model_auc"],
        warm_oracle_auc=truth["warm_oracle_auc"],
        btyd_auc=truth["btyd_auc"],
        warm_btyd_auc=truth["warm_btyd_auc"],
        labels=len(outcomes),
        segments=segments,
        lifecycles=lifecycles,
        drift_day=sim_config.drift_day,
        drift_events=list(trainer.drift.log.events),
    )


def write_events(events: Iterable[dict[str, object] | bytes], path: Path) -> int:
    """Write simulated events as JSONL; returns the count."""
    n = 0
    with path.open("wb") as fp:
        for e in events:
            fp.write(encode_event(e) + b"\n")
            n += 1
    return n
