"""Readable closing summaries of the demo and of a replay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamscore.core.records import TOPIC_ALERTS, TOPIC_SCORES, TOPIC_SEGMENTS
from streamscore.core.timeutil import iso
from streamscore.embedded import DemoResult, RunSummary


def _f(value: object, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _serving(report: dict[str, Any], model: str) -> str:
    gate = report.get("serving_gate") or {}
    chosen = str((gate.get("serving") or {}).get(model))
    return {"corrected": "the corrected model", "btyd": "the BTYD model"}.get(chosen, "-")


def print_demo(result: DemoResult, out_dir: Path) -> None:
    """The demo's summary: throughput, model quality next to the oracle, segments, alerts."""
    s = result.summary
    churn: dict[str, Any] = result.report["churn"]
    value: dict[str, Any] = result.report["value"]
    btyd: dict[str, Any] = result.report["btyd"]
    dlq = sum(s.dead_letters.values())
    lines = [
        "",
        "streamscore demo — summary",
        "─" * 64,
        f"events           {s.records:>12,}   in {s.seconds:.1f}s"
        f" = {s.events_per_second:,.0f} events/s",
        f"users            {s.users:>12,}",
        f"labels resolved  {result.labels:>12,}   churn base rate {_f(churn['base_rate'], '.1%')}",
        "",
        "churn (prequential: each label scored with the prediction stored before it was learnt)",
        "                      model    BTYD alone   oracle",
        f"  ROC AUC             {_f(result.model_auc)}    {_f(result.btyd_auc)}        "
        f"{_f(result.oracle_auc)}   (gap to the oracle "
        f"{_f(_gap(result.oracle_auc, result.model_auc))})",
        f"  after warm-up       {_f(result.warm_model_auc)}    {_f(result.warm_btyd_auc)}        "
        f"{_f(result.warm_oracle_auc)}   (last 80% of labels)",
        f"  log loss            {_f(churn['log_loss'])}    {_f(btyd['churn']['log_loss'])}",
        f"  calibration error   {_f(churn['calibration_error'])}    "
        f"{_f(btyd['churn']['calibration_error'])}",
        "  (BTYD alone: the Pareto/NBD model fitted to the population, without the learnt "
        "corrections)",
        f"  scores now carry    {_serving(result.report, 'churn')} for churn, "
        f"{_serving(result.report, 'value')} for value",
        "  (the serving gate: whichever had the lower loss on the last 2,000 labels)",
        "",
        "value (spend in the next horizon)   model    BTYD × Gamma-Gamma   naive",
        f"  MAE                               {_f(value['mae'], '.2f')}    "
        f"{_f(btyd['value']['mae'], '.2f')}                {_f(value['naive_mae'], '.2f')}",
        f"  normalised Gini                   {_f(value['normalised_gini'])}    "
        f"{_f(btyd['value']['normalised_gini'])}",
        f"  mean predicted / actual           {_f(value['mean_predicted'], '.2f')}    "
        f"{_f(btyd['value']['mean_predicted'], '.2f')}                "
        f"(actual {_f(value['mean_actual'], '.2f')})",
        "",
        "segments (users now)                 lifecycle (users now)",
    ]
    segs = result.segments.most_common()
    lcs = result.lifecycles.most_common()
    for i in range(max(len(segs), len(lcs))):
        left = f"  {segs[i][0]:<22}{segs[i][1]:>8,}" if i < len(segs) else " " * 32
        right = f"       {lcs[i][0]:<14}{lcs[i][1]:>8,}" if i < len(lcs) else ""
        lines.append(left + right)
    lines += [
        "",
        f"churn alerts     {s.outputs.get(TOPIC_ALERTS, 0):>12,}",
        f"segment changes  {s.outputs.get(TOPIC_SEGMENTS, 0):>12,}",
        f"scores           {s.outputs.get(TOPIC_SCORES, 0):>12,}",
        f"dead letters     {dlq:>12,}   {dict(s.dead_letters) if dlq else ''}",
    ]
    if result.drift_day is not None:
        lines.append(f"drift            competitor opened on day {result.drift_day:g}")
    if result.drift_events:
        lines.append(f"drift detected   {len(result.drift_events)} time(s); first ones:")
        lines += [f"  {iso(e.t_ms)[:10]}  {e.detail}" for e in result.drift_events[:3]]
    else:
        lines.append("drift detected   none")
    lines += [
        f"outputs          {out_dir}/<topic>.jsonl, final_scores.jsonl, report.json",
        f"report           {out_dir}/report.html (open it in a browser)",
        "",
    ]
    print("\n".join(lines))


def _gap(oracle: float | None, model: float | None) -> float | None:
    return None if oracle is None or model is None else oracle - model


def print_replay(summary: RunSummary, rep: dict[str, Any], out_dir: Path) -> None:
    """The replay's summary."""
    churn = rep["churn"]
    value = rep["value"]
    dlq = sum(summary.dead_letters.values())
    print(
        "\n".join(
            [
                "",
                "streamscore replay — summary",
                "─" * 64,
                f"records      {summary.records:>12,}   in {summary.seconds:.1f}s "
                f"= {summary.events_per_second:,.0f}/s",
                f"users scored {summary.users:>12,}",
                f"churn        ROC AUC {_f(churn['roc_auc'])}  log loss {_f(churn['log_loss'])}"
                f"  labels {churn['labels']:,}",
                f"value        MAE {_f(value['mae'], '.2f')}  naive {_f(value['naive_mae'], '.2f')}"
                f"  Gini {_f(value['normalised_gini'])}  labels {value['labels']:,}",
                f"outputs      {dict(summary.outputs)}",
                f"dead letters {dlq:>12,}   {dict(summary.dead_letters) if dlq else ''}",
                f"late events  {summary.late_events:>12,}   (behind the watermark; not invalid"
                + (f"; {summary.late_applied:,} applied)" if summary.late_applied else ")"),
                f"written      {out_dir}/<topic>.jsonl, final_scores.jsonl, report.json",
                f"report       {out_dir}/report.html (open it in a browser)",
                "",
            ]
        )
    )
