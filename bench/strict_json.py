"""Cost per event of refusing repeated JSON keys in the decoder (issue 10).

    .venv/bin/python -m bench.strict_json [--events 50000 --repeats 7]

No servers. Decodes the simulator's events (every type, ``ts`` as epoch ms, the shape
producers send) with ``decode_event`` as shipped, then with the repeated-key check taken out
(plain ``orjson.loads``), and prints the best of several passes, in µs per event, for each
and for the check alone (``strictjson.loads`` minus ``orjson.loads``). Figures only.
"""

from __future__ import annotations

import argparse
import sys
from itertools import islice
from unittest import mock

import orjson

from bench.common import per_call_us
from streamscore.core import events as events_module
from streamscore.core import strictjson
from streamscore.core.events import EventLimits, decode_event
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    sim = ShopSimulator(SimulationConfig(users=2000, days=120, seed=7))
    values = [encode_event(e) for e in islice(sim.events(), args.events)]
    now = max(orjson.loads(v)["ts"] for v in values) + 1
    limits = EventLimits()

    def decode(v: bytes) -> object:
        return decode_event(v, now_ms=now, limits=limits)

    strict = per_call_us(decode, values, args.repeats)
    with mock.patch.object(events_module.strictjson, "loads", orjson.loads):
        plain = per_call_us(decode, values, args.repeats)
    parse_plain = per_call_us(orjson.loads, values, args.repeats)
    parse_strict = per_call_us(strictjson.loads, values, args.repeats)
    mean_bytes = sum(map(len, values)) / len(values)
    print(f"{len(values):,} simulated events, {mean_bytes:.0f} bytes on average")
    print(f"decode_event, repeated keys refused : {strict:.2f} µs/event")
    print(f"decode_event, plain orjson.loads    : {plain:.2f} µs/event")
    print(f"the check alone (parse {parse_strict:.2f} vs {parse_plain:.2f}): "
          f"{parse_strict - parse_plain:+.2f} µs/event")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
