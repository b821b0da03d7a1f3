"""``python -m bench.fit_order``: what the order records arrive in does to the BTYD fits.

Kafka hands a backlog over partition by partition, a fetch's worth of one before the next,
so the partitions' event times drift apart by hours or days while a replay of the same
events in time order keeps them together. The population sample is refitted on event time,
and each customer's summary is extended to the fit's time from their last *consumed* event:
customers of a partition that lags look silent. This runs ``bench core``'s in-process
pipeline over the same simulated events in time order and in per-partition chunks, and
prints, per order, the Pareto/NBD fits: how many, their CPU, and the last parameters.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.common import DatasetSpec, make_dataset
from bench.core import run_core, source_records
from streamscore.core import population
from streamscore.core.btyd import ParetoNbd, fit_pareto
from streamscore.ports import SourceRecord

_FIT = "fit_pareto"  # the name population.py calls, replaced by a timed one for a pass


def in_partition_chunks(records: Sequence[SourceRecord], chunk: int) -> list[SourceRecord]:
    """The records as a consumer with a backlog reads them: ``chunk`` of one partition, then
    of the next, round robin (0: the original time order)."""
    if chunk <= 0:
        return list(records)
    by: dict[int, list[SourceRecord]] = {}
    for r in records:
        by.setdefault(r.partition, []).append(r)
    out: list[SourceRecord] = []
    for start in range(0, max(len(v) for v in by.values()), chunk):
        for p in sorted(by):
            out += by[p][start : start + chunk]
    return out


def fits_of(records: Sequence[SourceRecord]) -> dict[str, Any]:
    """One pass; every Pareto/NBD fit timed (CPU) as the population model runs it."""
    fits: list[tuple[int, float, ParetoNbd]] = []

    def timed(x: np.ndarray, t_x: np.ndarray, T: np.ndarray, **kw: Any) -> ParetoNbd:  # noqa: N803
        started = time.process_time()
        model = fit_pareto(x, t_x, T, **kw)
        fits.append((len(x), time.process_time() - started, model))
        return model

    setattr(population, _FIT, timed)
    try:
        started = time.process_time()
        run_core(records, 2000)
        total = time.process_time() - started
    finally:
        setattr(population, _FIT, fit_pareto)
    return {
        "cpu_s": round(total, 2),
        "fits": len(fits),
        "fit_cpu_s": round(sum(f[1] for f in fits), 2),
        "last": [
            (n, round(cpu, 3), tuple(round(v, 4) for v in m.as_tuple())) for n, cpu, m in fits[-2:]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fit_order", description=__doc__)
    p.add_argument("--events", type=int, default=150_000)
    p.add_argument("--chunks", type=int, nargs="+", default=[0, 2000])
    args = p.parse_args(argv)
    records = source_records(make_dataset(DatasetSpec(events=args.events)), "bench")
    for chunk in args.chunks:
        r = fits_of(in_partition_chunks(records, chunk))
        order = "time order" if chunk <= 0 else f"chunks of {chunk} per partition"
        print(
            f"{order}: {r['cpu_s']} s CPU, {r['fits']} Pareto/NBD fits taking {r['fit_cpu_s']} s; "
            f"last two (customers, s, (r, alpha, s, beta)): {r['last']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
