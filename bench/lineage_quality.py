"""``python -m bench lineage-quality``: does scaling out cost model quality?

1, 2 (and, on request, 3) ``streamscore run`` processes in one consumer group score the same
simulated stream, several runs each, interleaved (1 2 1 2 ...): the trainer's prequential
churn AUC and log loss over every label (its progressive validation, read from the last
published version as the next trainer would resume it), labels resolved against learnt,
events/s, and how stale the predictions were. The spread between runs of one configuration
is the noise the difference between configurations is measured against.

Why paced: ``bench scaling`` puts the whole stream in the topic first, and its 30 days of
event time pass in seconds, before the first model version reaches a scorer (a publish
interval plus the staleness), so nearly every prediction is the untrained prior's. Here the
stream is produced at a bounded rate while the processes run (``--rate``, 3,000 events/s:
one process keeps up with it on this 2-core machine shared with other work), and the trainer
publishes and the scorers look for versions more often than by default
(``--publish-seconds`` 2, ``--staleness-seconds`` 1), so the lineage publishes tens of
versions while the stream passes. The default shop (1,500 users over 90 days, 163,082
events, about 55 s at that rate) spans six churn horizons, so most labels are predicted
after the lineage has learnt labels (with 30 days, as in ``bench scaling``, nearly every
prediction comes before the first label resolves, in any deployment). How recent the
predicting version was is measured, not assumed: every label record on
``training-examples`` names the version that made its prediction; a log of the published
heads says which offset each version reflects, hence the newest label it had learnt; the lag
is the snapshot's event time minus that label's. ``--backlog-runs`` adds runs of one
process on the stream put in the topic first, for the staleness of a backlog caught up.

The run shares everything else with ``bench scaling`` (``stack_runs.run_scorer``).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import common
from bench.common import CHECKPOINT_KEY, REDIS_URL, DatasetSpec, Stack, log, percentile
from bench.stack_runs import Context, dataset_facts, produce_paced, run_scorer
from streamscore.config import Settings

DAY_MS = 86_400_000
HEAD_POLL_S = 0.1


class PacedFeed:
    """The data set produced into a topic of its own at ``rate`` events/s, from a thread,
    once the processes own their partitions (``run_scorer``'s ``alongside``) and a trainer
    has been elected for longer than a publish interval (``settle_s``).

    The wait makes every configuration start alike: the first version follows the trainer's
    first records. Without it, a single process's trainer was elected as the feed began and
    published its first version one interval later, while with 2 or 3 processes it had been
    waiting for the group to settle and published at once: 2.7% of the labels were predicted
    by the untrained prior in 1-process runs, 0-0.8% in most others, and that difference in
    start, not the number of processes, separated their figures.
    """

    key = "feed"

    def __init__(
        self, ctx: Context, label: str, partitions: int, rate: int, settle_s: float
    ) -> None:
        self.stack = ctx.stack
        self.data = ctx.data
        self.rate = rate
        self.settle_s = settle_s
        self.topic = ctx.stack.create_topic(ctx.stack.name(f"{label}-in"), partitions)
        self._thread: threading.Thread | None = None
        self._took: float | None = None
        self._ended = 0.0
        self._error: BaseException | None = None

    def start(self, names: dict[str, str]) -> None:
        deadline = time.monotonic() + 120
        while self.stack.members_with_partitions(f"{names['kafka_group_id']}-trainer") < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("no trainer was elected within 120s")
            time.sleep(0.1)
        time.sleep(self.settle_s + 0.5)
        self._thread = threading.Thread(target=self._produce, name="paced-feed", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            self._took = produce_paced(self.topic, self.data, self.rate)
        except BaseException as exc:  # surfaced by finish
            self._error = exc
        finally:
            self._ended = time.monotonic()

    def finish(self) -> dict[str, Any]:
        self.close()
        if self._error is not None:
            raise RuntimeError(f"the paced feed failed: {self._error}") from self._error
        assert self._took is not None
        return {
            "rate": self.rate,
            "records": len(self.data),
            "produced_in_s": round(self._took, 1),
            # how long after the last record was produced the group had committed everything
            "committed_after_feed_s": round(max(time.monotonic() - self._ended, 0.0), 2),
        }

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()


class VersionLog:
    """Every published model version's ``training-examples`` offset, from the lineage head
    (polled every ``HEAD_POLL_S``; a version replaced faster than that is missed)."""

    key = "versions"

    def __init__(self) -> None:
        self.offsets: dict[int, int] = {}
        self.published_unix: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, names: dict[str, str]) -> None:
        from streamscore.adapters.redis_store import RedisStateStore
        from streamscore.config import load_settings
        from streamscore.model_checkpoints import LineageStore

        settings = load_settings(
            redis_url=REDIS_URL, redis_key_prefix=names["redis_key_prefix"],
            checkpoint_key=CHECKPOINT_KEY, metrics_port=0,
        )  # fmt: skip
        store = RedisStateStore.from_settings(settings)
        lineage = LineageStore(settings, store)

        def poll() -> None:
            try:
                while not self._stop.wait(HEAD_POLL_S):
                    head = lineage.head()
                    if head is not None and head.version not in self.offsets:
                        self.offsets[head.version] = head.offset
                        self.published_unix[head.version] = head.created_unix
            finally:
                store.close()

        self._thread = threading.Thread(target=poll, name="version-log", daemon=True)
        self._thread.start()

    def finish(self) -> dict[str, Any]:
        self.close()
        times = sorted(self.published_unix.values())
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return {
            "seen": len(self.offsets),
            "newest": max(self.offsets, default=0),
            "median_interval_s": round(statistics.median(gaps), 2) if gaps else None,
        }

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@dataclass(frozen=True, slots=True)
class LabelRecord:
    offset: int
    kind: str
    id: str
    snapshot_ms: int
    label_ms: int
    generation: int | None  # of the version that made the prediction
    predicted: float
    label: float
    weight: float


def _generation(model_version: object) -> int | None:
    if not isinstance(model_version, str) or "-g" not in model_version:
        return None
    tail = model_version.rsplit("-g", 1)[1]
    return int(tail) if tail.isdigit() else None


def label_records(stack: Stack, topic: str) -> list[LabelRecord]:
    """The label records of ``training-examples``, in offset order."""
    out = []
    for m in stack.read_topic(topic):
        if b'"type":"label"' not in m.value:
            continue
        r = orjson.loads(m.value)
        out.append(
            LabelRecord(
                m.offset, r["model"], r["id"], r["snapshot_ms"], r["label_ms"],
                _generation(r.get("model_version")), r["predicted"], r["label"], r["weight"],
            )
        )  # fmt: skip
    return out


PRIOR, NO_LABEL, LABELS, UNKNOWN = (
    "the prior (no version yet)",
    "a version of no label yet",  # the population (BTYD fit, RFM quantiles) only
    "a version with labels",
    "unknown version",
)
STEADY = "after the first horizon"


def prediction_staleness(
    labels: list[LabelRecord], offsets: dict[int, int], horizon_days: float
) -> dict[str, Any]:
    """What predicted each churn label, how far behind in event time that version was (the
    snapshot's time minus the newest label the version had learnt: the label records before
    the offset it reflects), and the prequential figures of each kind of version, computed
    as the trainer computes its own (``ChurnQuality``): ``all`` recomputes the trainer's,
    ``STEADY`` leaves out the snapshots of the stream's first churn horizon, predicted
    before any label could have resolved."""
    from streamscore.core.validation import ChurnQuality

    start = min((r.snapshot_ms for r in labels), default=0)
    steady_from = start + horizon_days * DAY_MS

    at = [r.offset for r in labels]
    newest: list[int] = []  # newest label time among labels[:i+1]
    for r in labels:
        newest.append(max(r.label_ms, newest[-1] if newest else r.label_ms))
    seen: set[str] = set()
    quality = {k: ChurnQuality() for k in ("all", STEADY, PRIOR, NO_LABEL, LABELS, UNKNOWN)}
    lags: list[float] = []
    for r in labels:
        if r.kind != "churn" or r.id in seen:
            continue
        seen.add(r.id)
        g = r.generation
        learnt = bisect.bisect_left(at, offsets[g]) if g and g in offsets else 0
        if g is None or (g and g not in offsets):
            kind = UNKNOWN
        elif not g:
            kind = PRIOR
        elif not learnt:
            kind = NO_LABEL
        else:
            kind = LABELS
            lags.append((r.snapshot_ms - newest[learnt - 1]) / DAY_MS)
        for q in (quality["all"], quality[kind]):
            q.update(r.predicted, r.label >= 0.5, None, r.weight)
        if r.snapshot_ms >= steady_from:
            quality[STEADY].update(r.predicted, r.label >= 0.5, None, r.weight)
    lags.sort()
    n = len(seen)
    return {
        "churn_labels": n,
        "predicted_by": {
            k: round(q.count / n, 4)
            for k, q in quality.items()
            if q.count and k not in ("all", STEADY)
        },
        "quality_by": {
            k: {"labels": q.count, "churn_auc": q.auc(), "churn_log_loss": q.report()["log_loss"]}
            for k, q in quality.items()
            if q.count
        },
        "lag_days_p50": round(percentile(lags, 50), 2) if lags else None,
        "lag_days_p90": round(percentile(lags, 90), 2) if lags else None,
    }


def one_run(
    ctx: Context, *, processes: int, run: int, partitions: int, rate: int,
    settings: dict[str, object], quiet_wait_s: float, backlog: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One run of ``processes`` scorers, and what its lineage learnt and predicted: paced, or
    with ``backlog`` over the whole stream put in the topic first (as ``bench scaling``)."""
    label = f"lq-{'backlog' if backlog else 'paced'}-n{processes}-r{run}"
    versions = VersionLog()
    jobs: tuple[Any, ...] = (versions,)
    topic = None
    if not backlog:
        settle = float(settings["checkpoint_interval_seconds"])  # type: ignore[arg-type]
        feed = PacedFeed(ctx, label, partitions, rate, settle_s=settle)
        jobs, topic = (feed, versions), feed.topic
    result = run_scorer(
        ctx, label=label, partitions=partitions, processes=processes, lineage=True,
        alongside=jobs, topic=topic, settings=settings, quiet_wait_s=quiet_wait_s,
    )  # fmt: skip
    result["mode"] = "backlog" if backlog else "paced"
    lineage = result["lineage"]
    training = ctx.stack.name(f"{label}-training-examples")
    labels = label_records(ctx.stack, training)
    resolved = Counter(r.kind for r in {r.id: r for r in labels}.values())
    result["labels_resolved"] = dict(resolved)
    result["label_records_published"] = len(labels)
    horizon = Settings.model_fields["churn_horizon_days"].default
    result["prediction"] = prediction_staleness(labels, versions.offsets, horizon)
    result["run"] = run
    del result["series"]
    p = result["prediction"]
    log(
        f"{label}: churn AUC {lineage['churn_auc']:.4f}, log loss {lineage['churn_log_loss']:.4f};"
        f" learnt {lineage['labels_learnt']} of resolved {dict(resolved)}; "
        f"{result['versions']['newest']} versions; predictions by {p['predicted_by']}, "
        f"{p['lag_days_p50']} days behind (p90 {p['lag_days_p90']})"
    )
    return result


def _steady(run: dict[str, Any]) -> dict[str, Any]:
    return dict(run["prediction"]["quality_by"].get(STEADY) or {})


FIGURES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "churn_auc": lambda r: r["lineage"]["churn_auc"],
    "churn_log_loss": lambda r: r["lineage"]["churn_log_loss"],
    "events_per_s": lambda r: r["events_per_s"],
    "versions": lambda r: r["versions"]["newest"],
    "lag_days_p50": lambda r: r["prediction"]["lag_days_p50"],
    "steady_churn_auc": lambda r: _steady(r).get("churn_auc"),
    "steady_churn_log_loss": lambda r: _steady(r).get("churn_log_loss"),
}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per number of processes (and mode): the median of each figure, its spread (max − min)."""
    out: dict[str, Any] = {}
    for mode, n in sorted({(r["mode"], r["processes"]) for r in runs}, key=lambda k: k[::-1]):
        mine = [r for r in runs if (r["mode"], r["processes"]) == (mode, n)]
        figures: dict[str, Any] = {}
        for name, get in FIGURES.items():
            values = [v for v in (get(r) for r in mine) if v is not None]
            if values:
                figures[name] = {
                    "median": statistics.median(values),
                    "spread": max(values) - min(values),
                    "runs": values,
                }
        figures["all_learnt"] = all(
            r["lineage"]["labels_learnt"] == {k: r["labels_resolved"].get(k, 0)
                                              for k in ("churn", "value")}
            for r in mine
        )  # fmt: skip
        out[f"{n} {mode}"] = figures
    return out


def markdown(results: dict[str, Any]) -> str:
    """The per-run table and the medians."""
    lines = [
        "| run | processes | events/s | done after feed (s) | other load (cores) | versions | "
        "churn labels learnt / resolved | churn AUC | churn log loss | predicted by the prior "
        "/ before any label | lag p50 / p90 (days) | AUC / log loss after the first horizon |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        lin, p = r["lineage"], r["prediction"]
        before = p["predicted_by"]
        prior = before.get(PRIOR, 0.0)
        none = prior + before.get(NO_LABEL, 0.0)
        late = (r.get("feed") or {}).get("committed_after_feed_s", "–")
        q = p["quality_by"].get(STEADY) or {"churn_auc": math.nan, "churn_log_loss": math.nan}
        lines.append(
            f"| {r['run']} | {r['processes']} {r['mode']} | {r['events_per_s']:,.0f} | {late} | "
            f"{r['machine']['other_busy_cores']} | {r['versions']['newest']} | "
            f"{lin['labels_learnt']['churn']:,} / {r['labels_resolved'].get('churn', 0):,} | "
            f"{lin['churn_auc']:.4f} | {lin['churn_log_loss']:.4f} | {prior:.1%} / {none:.1%} | "
            f"{p['lag_days_p50']} / {p['lag_days_p90']} | {q['churn_auc']:.4f} / "
            f"{q['churn_log_loss']:.4f} |"
        )
    lines += ["", "| processes | churn AUC median (spread) | log loss median (spread) | "
              "after the first horizon: AUC, log loss | events/s median | every label learnt "
              "once |", "|---|---|---|---|---|---|"]  # fmt: skip
    for n, f in results["summary"].items():
        cells = [
            f"{f[k]['median']:.4f} ({f[k]['spread']:.4f})" if k in f else "–"
            for k in ("churn_auc", "churn_log_loss", "steady_churn_auc", "steady_churn_log_loss")
        ]
        lines.append(
            f"| {n} | {cells[0]} | {cells[1]} | {cells[2]}, {cells[3]} | "
            f"{f['events_per_s']['median']:,.0f} | {f['all_learnt']} |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench lineage-quality", description=__doc__)
    p.add_argument("--processes", default="1,2", help="comma-separated process counts (1,2,3)")
    p.add_argument("--runs", type=int, default=3, help="runs of each process count")
    p.add_argument("--backlog-runs", type=int, default=1,
                   help="then runs of 1 process on the stream put in the topic first")  # fmt: skip
    p.add_argument("--events", type=int, default=200_000, help="at most this many events")
    p.add_argument("--users", type=int, default=1500)
    p.add_argument("--days", type=float, default=90.0)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--rate", type=int, default=3000, help="events/s the stream is produced at")
    p.add_argument("--publish-seconds", type=float, default=2.0,
                   help="STREAMSCORE_CHECKPOINT_INTERVAL_SECONDS of the runs")  # fmt: skip
    p.add_argument("--staleness-seconds", type=float, default=1.0,
                   help="STREAMSCORE_MODEL_STALENESS_SECONDS of the runs")  # fmt: skip
    p.add_argument("--quiet-wait", type=float, default=5.0,
                   help="seconds to wait for other load to calm before each run")  # fmt: skip
    p.add_argument("--out", default=None)
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    spec = DatasetSpec(users=args.users, days=args.days, seed=args.seed, events=args.events)
    counts = [int(n) for n in args.processes.split(",")]
    settings: dict[str, object] = {
        "checkpoint_interval_seconds": args.publish_seconds,
        "model_staleness_seconds": args.staleness_seconds,
    }
    started = time.monotonic()
    data = common.make_dataset(spec)
    common.ensure_stack()
    stack = Stack()
    ctx = Context(stack, spec, data)
    results: dict[str, Any] = {
        "command": "lineage-quality",
        "code": common.code_version(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {**vars(args), **settings},
        "dataset": dataset_facts(ctx),
        "runs": [],
    }
    log(f"lineage-quality: {counts} processes × {args.runs} runs, {len(data):,} events at "
        f"{args.rate:,}/s; logs in {stack.log_dir}")  # fmt: skip
    try:
        for run in range(1, args.runs + 1):
            for n in counts:  # interleaved, so a change of load hits every configuration
                results["runs"].append(
                    one_run(ctx, processes=n, run=run, partitions=args.partitions,
                            rate=args.rate, settings=settings, quiet_wait_s=args.quiet_wait)
                )  # fmt: skip
        for run in range(1, args.backlog_runs + 1):
            results["runs"].append(
                one_run(ctx, processes=1, run=run, partitions=args.partitions, rate=args.rate,
                        settings=settings, quiet_wait_s=args.quiet_wait, backlog=True)
            )  # fmt: skip
    finally:
        stack.cleanup()
    results["summary"] = summarise(results["runs"])
    results["seconds"] = round(time.monotonic() - started, 1)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(args.out or common.RESULTS_DIR / f"bench-lineage-quality-{stamp}.json")
    common.dump_json(path, results)
    md = markdown(results)
    path.with_suffix(".md").write_text(md + "\n")
    print()
    print(md)
    log(f"done in {results['seconds']:.0f}s; results in {path}")
    return 0
