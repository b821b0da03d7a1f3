"""``python -m bench quality``: streamscore's scores next to the buy-till-you-die baselines.

For each purchase log (CDNOW by default, plus the two harder simulated shops with
``--scenarios``), at monthly cutoffs:

1. ``streamscore replay EVENTS --as-of CUTOFF`` runs as a user would run it (a subprocess,
   ``churn_activity=purchase``, both horizons ``--horizon-days``, every other setting at its
   default) and every customer's score is read from ``final_scores.jsonl``;
2. the baselines are refitted on the same log up to the cutoff with the ``lifetimes``
   package (an implementation independent of streamscore's): BG/NBD for churn (probability
   of no purchase in the horizon), BG/NBD × Gamma-Gamma for value; and the naive ranks:
   recency alone (days since the last purchase) and past spend rate;
3. the truth is read from the log after the cutoff: churned = no purchase within the
   horizon, value = spend within it.

Reported per cutoff and pooled over cutoffs: churn ROC AUC, log loss, expected calibration
error (10 equal-count bins); value normalised Gini, MAE, mean predicted vs mean actual.
Metrics are computed here with numpy and scipy, not with streamscore's own code.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from scipy import stats

from bench.purchase_logs import (
    PurchaseLog,
    Transaction,
    cdnow,
    from_csv,
    simulated_cohort,
    simulated_purchase_only,
    write_events,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
EPS = 1e-7


# -- metrics --------------------------------------------------------------------------------


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC by rank sum (ties count half)."""
    ranks = stats.rankdata(score)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if not n_pos or not n_neg:
        return math.nan
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    q = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(np.where(y, np.log(q), np.log(1 - q))))


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-count bins of the prediction."""
    order = np.argsort(p, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, bins):
        if len(chunk):
            total += len(chunk) * abs(float(p[chunk].mean()) - float(y[chunk].mean()))
    return total / len(p)


def gini(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Normalised Gini: the Gini of actuals ordered by prediction over the perfect order's."""

    def raw(order_by: np.ndarray) -> float:
        order = np.lexsort((np.arange(len(order_by)), -order_by))
        cum = np.cumsum(actual[order]) / actual.sum()
        n = len(actual)
        return float(cum.sum() / n - (n + 1) / (2 * n))

    if actual.sum() <= 0:
        return math.nan
    return raw(predicted) / raw(actual)


# -- baselines ------------------------------------------------------------------------------


@dataclass(slots=True)
class Summary:
    """Per-customer RFM summary as of a cutoff, in days, the way ``lifetimes`` counts."""

    customers: list[str]
    x: np.ndarray  # repeat purchase days
    t_x: np.ndarray
    T: np.ndarray
    spend: np.ndarray
    repeat_mean: np.ndarray  # mean of the repeat purchases (0 without)


def summarise(log: PurchaseLog, cutoff: dt.date) -> Summary:
    by: dict[str, list[Transaction]] = defaultdict(list)
    for t in log.transactions:
        if t.day < cutoff:
            by[t.customer].append(t)
    customers = sorted(by)
    x, t_x, big_t, spend, mean = [], [], [], [], []
    for c in customers:
        ts = sorted(by[c], key=lambda t: t.day)
        first = ts[0].day
        x.append(len(ts) - 1)
        t_x.append((ts[-1].day - first).days)
        big_t.append((cutoff - first).days)
        spend.append(sum(t.amount for t in ts))
        repeats = [t.amount for t in ts[1:]]
        mean.append(sum(repeats) / len(repeats) if repeats else 0.0)
    arr = np.asarray
    return Summary(
        customers, arr(x, float), arr(t_x, float), arr(big_t, float), arr(spend), arr(mean)
    )


def btyd_baseline(s: Summary, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """P(no purchase within the horizon) and expected spend in it, BG/NBD × Gamma-Gamma,
    refitted on this summary with ``lifetimes``."""
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    bg = BetaGeoFitter(penalizer_coef=0.0)
    bg.fit(s.x, s.t_x, s.T)
    r, alpha = bg.params_["r"], bg.params_["alpha"]
    alive = np.asarray(bg.conditional_probability_alive(s.x, s.t_x, s.T), dtype=float)
    quiet_if_alive = ((alpha + s.T) / (alpha + s.T + horizon)) ** (r + s.x)
    p_none = 1.0 - alive * (1.0 - quiet_if_alive)
    purchases = np.asarray(
        bg.conditional_expected_number_of_purchases_up_to_time(horizon, s.x, s.t_x, s.T),
        dtype=float,
    )
    repeat = s.x > 0
    # Gamma-Gamma is defined for positive spend only: a log with free orders (CDNOW master
    # has some) fits on the customers whose repeat orders cost something, and scores all.
    paid = repeat & (s.repeat_mean > 0)
    gg = GammaGammaFitter(penalizer_coef=0.0)
    gg.fit(s.x[paid], s.repeat_mean[paid])
    order_value = np.asarray(
        gg.conditional_expected_average_profit(s.x, np.where(repeat, s.repeat_mean, 0.0)),
        dtype=float,
    )
    return p_none, purchases * order_value


def truth(
    log: PurchaseLog, s: Summary, cutoff: dt.date, horizon: float
) -> tuple[np.ndarray, np.ndarray]:
    """Churned (no purchase within the horizon after the cutoff) and spend within it."""
    end = cutoff + dt.timedelta(days=horizon)
    spent: dict[str, float] = defaultdict(float)
    bought: set[str] = set()
    for t in log.transactions:
        if cutoff <= t.day < end:
            bought.add(t.customer)
            spent[t.customer] += t.amount
    churned = np.asarray([c not in bought for c in s.customers])
    value = np.asarray([spent.get(c, 0.0) for c in s.customers])
    return churned, value


# -- streamscore ----------------------------------------------------------------------------


def _streamscore() -> list[str]:
    exe = Path(sys.executable).with_name("streamscore")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "streamscore.cli"]


def replay_scores(
    events: Path, cutoff: dt.date, horizon: float, work: Path
) -> tuple[dict[str, tuple[float, float]], float, dict[str, Any]]:
    """Run ``streamscore replay`` to the cutoff; every customer's (churn, value) score."""
    out = work / f"out-{cutoff:%Y%m%d}"
    as_of = dt.datetime.combine(cutoff, dt.time(0), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    env = {
        **os.environ,
        "STREAMSCORE_CHURN_ACTIVITY": "purchase",
        "STREAMSCORE_CHURN_HORIZON_DAYS": f"{horizon:g}",
        "STREAMSCORE_VALUE_HORIZON_DAYS": f"{horizon:g}",
        "STREAMSCORE_MIN_EVENT_TIME": "1970-01-02T00:00:00Z",
    }
    cmd = [*_streamscore(), "replay", str(events), "--out", str(out), "--as-of", as_of]
    started, cpu_before = time.perf_counter(), _children_cpu()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    report_cpu = _children_cpu() - cpu_before
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    scores: dict[str, tuple[float, float]] = {}
    with (out / "final_scores.jsonl").open("rb") as fp:
        for line in fp:
            rec = orjson.loads(line)
            scores[rec["user_id"]] = (rec["churn_probability"], rec["predicted_value"])
    report = orjson.loads((out / "report.json").read_bytes())
    report["replay_cpu_seconds"] = report_cpu
    return scores, seconds, report


def _children_cpu() -> float:
    """CPU seconds (user + system) of finished child processes: a replay's cost on a shared
    machine, where its wall time mostly measures the others."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- the benchmark --------------------------------------------------------------------------


def monthly_cutoffs(log: PurchaseLog, horizon: float, count: int) -> list[dt.date]:
    """The last ``count`` month starts that leave a full horizon of truth after them and at
    least 90 days of history before them."""
    months: list[dt.date] = []
    day = dt.date(log.first_day.year, log.first_day.month, 1)
    while day + dt.timedelta(days=horizon) <= log.last_day + dt.timedelta(days=1):
        if (day - log.first_day).days >= 90:
            months.append(day)
        day = dt.date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return months[-count:]


@dataclass(slots=True)
class Pool:
    """Predictions and truths of every (cutoff, customer) row, by method."""

    churned: list[np.ndarray] = field(default_factory=list)
    value: list[np.ndarray] = field(default_factory=list)
    churn: dict[str, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    spend: dict[str, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))


def churn_figures(p: np.ndarray, y: np.ndarray, probability: bool) -> dict[str, float]:
    out = {"auc": auc(p, y)}
    if probability:
        out |= {"log_loss": log_loss(p, y), "ece": ece(p, y), "mean": float(p.mean())}
    return out


def value_figures(v: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    return {
        "gini": gini(v, actual),
        "mae": float(np.mean(np.abs(v - actual))),
        "mean": float(v.mean()),
        "zero_share": float(np.mean(v <= 0)),
    }


def evaluate(log: PurchaseLog, horizon: float, count: int, work: Path) -> dict[str, Any]:
    events = work / f"{log.name}.jsonl"
    n_events = write_events(log, events)
    cutoffs = monthly_cutoffs(log, horizon, count)
    print(
        f"\n## {log.name}: {n_events:,} purchase events of "
        f"{len({t.customer for t in log.transactions}):,} customers, "
        f"{log.first_day} to {log.last_day} ({log.source})",
        flush=True,
    )
    pool = Pool()
    rows: list[dict[str, Any]] = []
    replay_seconds: list[float] = []
    replay_cpu: list[float] = []
    for cutoff in cutoffs:
        s = summarise(log, cutoff)
        churned, value = truth(log, s, cutoff, horizon)
        scores, seconds, report = replay_scores(events, cutoff, horizon, work)
        replay_seconds.append(seconds)
        replay_cpu.append(report["replay_cpu_seconds"])
        missing = [c for c in s.customers if c not in scores]
        if missing:
            raise SystemExit(f"{len(missing)} customers have no final score at {cutoff}")
        ours_p = np.asarray([scores[c][0] for c in s.customers])
        ours_v = np.asarray([scores[c][1] for c in s.customers])
        bg_p, bg_v = btyd_baseline(s, horizon)
        recency = s.T - s.t_x
        rate = s.spend / np.maximum(s.T, 1.0) * horizon
        methods_p = {"streamscore": ours_p, "bgnbd": bg_p, "recency": recency}
        methods_v = {"streamscore": ours_v, "bgnbd_gg": bg_v, "spend_rate": rate}
        row: dict[str, Any] = {
            "cutoff": cutoff.isoformat(),
            "customers": len(s.customers),
            "churn_rate": float(churned.mean()),
            "actual_value_mean": float(value.mean()),
            "replay_seconds": round(seconds, 2),
            "replay_cpu_seconds": round(report["replay_cpu_seconds"], 2),
            "labels_learnt": report.get("churn", {}).get("labels"),
            "churn": {m: churn_figures(p, churned, m != "recency") for m, p in methods_p.items()},
            "value": {m: value_figures(v, value) for m, v in methods_v.items()},
        }
        rows.append(row)
        pool.churned.append(churned)
        pool.value.append(value)
        for m, p in methods_p.items():
            pool.churn[m].append(p)
        for m, v in methods_v.items():
            pool.spend[m].append(v)
        _print_row(row)
    y = np.concatenate(pool.churned)
    actual = np.concatenate(pool.value)
    pooled = {
        "churn_rate": float(y.mean()),
        "actual_value_mean": float(actual.mean()),
        "churn": {
            m: churn_figures(np.concatenate(ps), y, m != "recency") for m, ps in pool.churn.items()
        },
        "value": {m: value_figures(np.concatenate(vs), actual) for m, vs in pool.spend.items()},
    }
    _print_pooled(pooled)
    print(
        f"replay: {np.median(replay_seconds):.2f}s median per cutoff "
        f"({min(replay_seconds):.2f}-{max(replay_seconds):.2f}s); CPU "
        f"{np.median(replay_cpu):.2f}s median ({min(replay_cpu):.2f}-{max(replay_cpu):.2f}s), "
        f"{sum(replay_cpu):.1f}s in all",
        flush=True,
    )
    return {
        "log": log.name,
        "source": log.source,
        "events": n_events,
        "horizon_days": horizon,
        "cutoffs": rows,
        "pooled": pooled,
        "replay_seconds": replay_seconds,
        "replay_cpu_seconds": replay_cpu,
        "verdict": verdict(pooled, rows),
    }


def verdict(pooled: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, bool]:
    """The issue's bar, as booleans (figures, not assertions)."""
    c, v = pooled["churn"], pooled["value"]
    return {
        "auc_at_least_bgnbd": c["streamscore"]["auc"] >= c["bgnbd"]["auc"],
        "no_cutoff_below_recency": all(
            r["churn"]["streamscore"]["auc"] >= r["churn"]["recency"]["auc"] for r in rows
        ),
        "log_loss_at_most_bgnbd": c["streamscore"]["log_loss"] <= c["bgnbd"]["log_loss"],
        "ece_at_most_0.03": c["streamscore"]["ece"] <= 0.03,
        "gini_at_least_bgnbd_gg": v["streamscore"]["gini"] >= v["bgnbd_gg"]["gini"],
        "mean_value_within_15pct": abs(v["streamscore"]["mean"] / pooled["actual_value_mean"] - 1)
        <= 0.15,
    }


def _print_row(row: dict[str, Any]) -> None:
    c, v = row["churn"], row["value"]
    print(
        f"{row['cutoff']}  n={row['customers']:5d} churn={row['churn_rate']:.3f}  "
        f"AUC ours {c['streamscore']['auc']:.3f} bgnbd {c['bgnbd']['auc']:.3f} "
        f"rec {c['recency']['auc']:.3f}  LL {c['streamscore']['log_loss']:.3f}/"
        f"{c['bgnbd']['log_loss']:.3f}  ECE {c['streamscore']['ece']:.3f}/{c['bgnbd']['ece']:.3f}  "
        f"Gini {v['streamscore']['gini']:.3f}/{v['bgnbd_gg']['gini']:.3f}/"
        f"{v['spend_rate']['gini']:.3f}  mean {v['streamscore']['mean']:.2f}/"
        f"{v['bgnbd_gg']['mean']:.2f}/{row['actual_value_mean']:.2f}  "
        f"({row['replay_seconds']:.1f}s, {row['replay_cpu_seconds']:.1f}s CPU)",
        flush=True,
    )


def _print_pooled(p: dict[str, Any]) -> None:
    c, v = p["churn"], p["value"]
    print("pooled | streamscore | BG/NBD (× Gamma-Gamma) | naive")
    print(
        f"churn AUC | {c['streamscore']['auc']:.3f} | {c['bgnbd']['auc']:.3f} | "
        f"{c['recency']['auc']:.3f} (recency)"
    )
    print(f"churn log loss | {c['streamscore']['log_loss']:.3f} | {c['bgnbd']['log_loss']:.3f} |")
    print(
        f"churn ECE | {c['streamscore']['ece']:.3f} | {c['bgnbd']['ece']:.3f} | "
        f"(mean prediction {c['streamscore']['mean']:.3f} / {c['bgnbd']['mean']:.3f}, "
        f"observed {p['churn_rate']:.3f})"
    )
    print(
        f"value Gini | {v['streamscore']['gini']:.3f} | {v['bgnbd_gg']['gini']:.3f} | "
        f"{v['spend_rate']['gini']:.3f} (past spend rate)"
    )
    print(
        f"value MAE | {v['streamscore']['mae']:.2f} | {v['bgnbd_gg']['mae']:.2f} | "
        f"{v['spend_rate']['mae']:.2f}"
    )
    print(
        f"value mean | {v['streamscore']['mean']:.2f} | {v['bgnbd_gg']['mean']:.2f} | "
        f"{v['spend_rate']['mean']:.2f} (actual {p['actual_value_mean']:.2f})"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench quality", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--log",
        action="append",
        choices=("cdnow-sample", "cdnow-master", "sim-purchase-only", "sim-cohort"),
        help="purchase log(s) to evaluate (default: cdnow-sample and both simulated shops)",
    )
    p.add_argument(
        "--csv",
        action="append",
        type=Path,
        default=[],
        help="your own purchase log: a CSV with user_id,date,amount columns (repeatable)",
    )
    p.add_argument("--horizon-days", type=float, default=90.0, help="churn and value horizon")
    p.add_argument("--cutoffs", type=int, default=10, help="monthly cutoffs, the latest ones")
    p.add_argument("--out", default=None, help="JSON result path")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    chosen = args.log or ([] if args.csv else ["cdnow-sample", "sim-purchase-only", "sim-cohort"])
    loaders = {
        "cdnow-sample": lambda: cdnow("sample"),
        "cdnow-master": lambda: cdnow("master"),
        "sim-purchase-only": simulated_purchase_only,
        "sim-cohort": simulated_cohort,
    }
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "logs": []}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        logs = [loaders[name]() for name in chosen] + [from_csv(p) for p in args.csv]
        for log in logs:
            results["logs"].append(evaluate(log, args.horizon_days, args.cutoffs, Path(tmp)))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(args.out or RESULTS_DIR / f"quality-{time.strftime('%Y%m%d-%H%M%S')}.json")
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print(f"\nresults in {path}")
    for log in results["logs"]:
        print(log["log"], log["verdict"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
