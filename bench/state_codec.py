"""``python -m bench.state_codec``: what loading and saving one user's state costs.

A state is decoded for every user of every batch and encoded again before the save, so
these two numbers sit on the hot path (and the encoded size is the Redis memory bill). The
states measured are real: the same simulated shop as ``python -m bench core`` (5,000 users,
the first 150,000 events of 90 days) is run through the embedded pipeline, and every stored
state is then decoded and re-encoded, best of five passes, CPU time per call.

Figures only, never an assertion.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

from bench.common import per_call_us
from streamscore.adapters.memory import ListSink, ListSource, MemoryStateStore
from streamscore.config import load_settings
from streamscore.core.state import UserState
from streamscore.ports import SourceRecord
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event


def _records(users: int, days: float, seed: int, limit: int) -> list[SourceRecord]:
    sim = ShopSimulator(SimulationConfig(users=users, days=days, seed=seed))
    out: list[SourceRecord] = []
    for event in sim.events():
        if len(out) >= limit:
            break
        out.append(SourceRecord("bench", 0, len(out), encode_event(event)))
    return out


def _states(records: Sequence[SourceRecord]) -> dict[str, bytes]:
    from streamscore.wiring import build_pipeline, in_process_scorer

    settings = load_settings(metrics_port=0)
    store = MemoryStateStore()
    scorer = in_process_scorer(settings.scoring())[0]
    pipeline = build_pipeline(
        settings, ListSource(records, topic="bench"), store, ListSink(), scorer
    )
    pipeline.run_until_exhausted()
    return store.states


def main() -> None:
    """Print load/save microseconds and the stored size per user."""
    p = argparse.ArgumentParser(prog="python -m bench.state_codec", description=__doc__)
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--days", type=float, default=90.0)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--events", type=int, default=150_000)
    args = p.parse_args()
    blobs = list(_states(_records(args.users, args.days, args.seed, args.events)).items())
    states = [UserState.from_bytes(u, b) for u, b in blobs]
    sizes = [len(b) for _, b in blobs]
    snapshots = [len(s.snapshots) for s in states]
    load = per_call_us(lambda ub: UserState.from_bytes(*ub), blobs)
    save = per_call_us(lambda s: s.to_bytes(), states)
    # A state loaded and saved again without being touched: the common case of a due user
    # whose time has not come, and what the lazy snapshot inputs are for.
    round_trip = per_call_us(lambda ub: UserState.from_bytes(*ub).to_bytes(), blobs)
    print(f"users                {len(blobs):,}")
    print(f"snapshots per state  {statistics.mean(snapshots):.2f} mean, {max(snapshots)} max")
    print(
        f"stored bytes         {statistics.mean(sizes):.0f} mean, "
        f"{statistics.quantiles(sizes, n=10)[-1]:.0f} p90, {max(sizes)} max"
    )
    print(f"load (from_bytes)    {load:.2f} µs per user")
    print(f"save (to_bytes)      {save:.2f} µs per user")
    print(f"load + save          {round_trip:.2f} µs per user")


if __name__ == "__main__":
    main()
