"""The ``streamscore`` command line (DESIGN.md §5)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from streamscore.config import Settings, load_settings
from streamscore.core.timeutil import parse_rfc3339
from streamscore.errors import ConfigError, StreamscoreError

log = logging.getLogger("streamscore")


def _parse_time(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamscore",
        description="Real-time churn and customer-value scoring for online shops.",
    )
    p.add_argument("--config", type=Path, help="TOML settings file (also STREAMSCORE_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="simulate a shop and score it in-process, no servers needed")
    d.add_argument("--users", type=int, default=2000)
    d.add_argument("--days", type=float, default=120.0)
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--drift-day", type=float, default=None, help="day a competitor opens")
    d.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory")

    r = sub.add_parser("replay", help="run the pipeline over a JSONL file of events")
    r.add_argument("events", type=Path, help="JSONL file, one user event per line")
    r.add_argument("--out", type=Path, required=True, help="output directory")
    r.add_argument("--as-of", type=_parse_time, default=None, help="final scores as of (RFC 3339)")
    r.add_argument("--churn-horizon-days", type=float, default=None)
    r.add_argument("--value-horizon-days", type=float, default=None)

    s = sub.add_parser("simulate", help="simulated events into Kafka (--rate) or a file (--out)")
    s.add_argument("--users", type=int, default=2000)
    s.add_argument("--days", type=float, default=120.0)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--drift-day", type=float, default=None)
    s.add_argument("--bad-fraction", type=float, default=0.0)
    s.add_argument("--out", type=Path, default=None, help="write JSONL here instead of Kafka")
    s.add_argument("--rate", type=float, default=None, help="events/s into Kafka (default: max)")
    s.add_argument("--limit", type=int, default=None, help="stop after this many events")

    sub.add_parser("run", help="the service: Kafka in, Redis state, Kafka out, metrics on HTTP")

    sc = sub.add_parser("schemas", help="write the JSON Schemas of every topic")
    sc.add_argument("--out", type=Path, default=Path("schemas"))
    return p


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streamscore.embedded import demo
    from streamscore.simulator import SimulationConfig
    from streamscore.summary import print_demo

    sim = SimulationConfig(
        users=args.users, days=args.days, seed=args.seed, drift_day=args.drift_day
    )
    expected = int(args.users * args.days * 1.1)
    result = demo(settings, sim, args.out, expected_events=expected)
    print_demo(result, args.out)
    return 0


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from streamscore.embedded import replay
    from streamscore.summary import print_replay

    if not args.events.is_file():
        raise ConfigError(f"events file {args.events} does not exist")
    summary, rep = replay(settings, args.events, args.out, args.as_of)
    print_replay(summary, rep, args.out)
    return 0


def _cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from streamscore.simulator import ShopSimulator, SimulationConfig

    sim = ShopSimulator(
        SimulationConfig(
            users=args.users,
            days=args.days,
            seed=args.seed,
            drift_day=args.drift_day,
            bad_fraction=args.bad_fraction,
        )
    )
    if args.out is not None:
        from itertools import islice

        from streamscore.embedded import write_events

        started = time.perf_counter()
        n = write_events(islice(sim.events(), args.limit), args.out)
        print(f"wrote {n:,} events to {args.out} in {time.perf_counter() - started:.1f}s")
        return 0
    from streamscore.service import simulate_to_kafka

    return simulate_to_kafka(settings, sim, rate=args.rate, limit=args.limit)


def _cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from streamscore.schemas import write_schemas

    for path in write_schemas(args.out):
        print(f"wrote {path}")
    return 0


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from streamscore.service import run_service

    return run_service(settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``streamscore`` console script."""
    args = _parser().parse_args(argv)
    try:
        overrides: dict[str, object] = {}
        if args.command == "replay":
            overrides = {
                "churn_horizon_days": args.churn_horizon_days,
                "value_horizon_days": args.value_horizon_days,
            }
        settings = load_settings(args.config, **overrides)
        # demo and replay talk through their progress line and summary; the service logs.
        quiet = (
            args.command in {"demo", "replay", "schemas"}
            and "STREAMSCORE_LOG_LEVEL" not in os.environ
        )
        logging.basicConfig(
            level="WARNING" if quiet else settings.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        handler = {
            "demo": _cmd_demo,
            "replay": _cmd_replay,
            "simulate": _cmd_simulate,
            "schemas": _cmd_schemas,
            "run": _cmd_run,
        }[args.command]
        return handler(args, settings)
    except ConfigError as exc:
        print(f"streamscore: configuration error: {exc}", file=sys.stderr)
        return 2
    except StreamscoreError as exc:
        print(f"streamscore: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("streamscore: interrupted", file=sys.stderr)
        return 130


def _dump(obj: object) -> str:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode()


if __name__ == "__main__":
    sys.exit(main())
