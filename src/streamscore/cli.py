"""The ``streamscore`` command line (DESIGN.md §5)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from streamscore import __version__
from streamscore.cli_checks import (
    Parser,
    above,
    at_least,
    fraction,
    input_file,
    output_dir,
    output_file,
    when,
)
from streamscore.config import Settings, load_settings
from streamscore.errors import ConfigError, StreamscoreError
from streamscore.logging_setup import configure as configure_logging

log = logging.getLogger("streamscore")


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="streamscore",
        description="Real-time churn and customer-value scoring for online shops.",
        epilog="Settings come from STREAMSCORE_* environment variables and an optional TOML "
        "file; `streamscore config` lists every one with its value and where it came from.",
    )
    p.add_argument("--version", action="version", version=f"streamscore {__version__}")
    p.add_argument("--config", type=input_file, help="TOML settings file (also STREAMSCORE_CONFIG)")
    # --config is accepted after the command too; SUPPRESS keeps an absent one from hiding
    # the value given before the command.
    common = Parser(add_help=False)
    common.add_argument(
        "--config", type=input_file, default=argparse.SUPPRESS, help="TOML settings file"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[common])

    users = at_least(1)
    days = above(0)
    d = command("demo", "simulate a shop and score it in-process, no servers needed")
    d.add_argument("--users", type=users, default=2000, help="simulated customers")
    d.add_argument("--days", type=days, default=120.0, help="simulated days")
    d.add_argument("--seed", type=int, default=7)
    d.add_argument(
        "--drift-day", type=at_least(0, float), default=None, help="day a competitor opens"
    )
    d.add_argument("--out", type=output_dir, default=Path("out/demo"), help="output directory")

    r = command("replay", "run the pipeline over a JSONL file of events")
    r.add_argument("events", type=input_file, help="JSONL file, one user event per line")
    r.add_argument("--out", type=output_dir, required=True, help="output directory")
    r.add_argument(
        "--as-of", type=when, default=None, help="final scores as of (RFC 3339 or epoch ms)"
    )
    r.add_argument("--churn-horizon-days", type=days, default=None)
    r.add_argument("--value-horizon-days", type=days, default=None)

    s = command("simulate", "simulated events into Kafka (--rate) or a file (--out)")
    s.add_argument("--users", type=users, default=2000)
    s.add_argument("--days", type=days, default=120.0)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--drift-day", type=at_least(0, float), default=None)
    s.add_argument("--bad-fraction", type=fraction, default=0.0, help="share of malformed records")
    s.add_argument(
        "--start",
        type=when,
        default=None,
        help="event time of the shop's first day, RFC 3339 or epoch ms (default "
        "2026-01-01T00:00:00Z); an earlier start simulates a backfill",
    )
    s.add_argument(
        "--out", type=output_file, default=None, help="write JSONL here instead of Kafka"
    )
    s.add_argument("--rate", type=above(0), default=None, help="events/s into Kafka (default: max)")
    s.add_argument("--limit", type=users, default=None, help="stop after this many events")

    run = command(
        "run",
        "the service: Kafka in, Redis state, Kafka out; /metrics, /healthz and /readyz on HTTP",
    )
    run.epilog = (
        "Configured by STREAMSCORE_* environment variables and --config FILE (TOML); the ones "
        "most deployments set: STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS, STREAMSCORE_REDIS_URL, "
        "STREAMSCORE_CHECKPOINT_KEY, STREAMSCORE_METRICS_HOST/PORT, STREAMSCORE_KAFKA_GROUP_ID. "
        "`streamscore config` lists all of them with their values, sources and meanings."
    )

    tr = command(
        "train",
        "the trainer alone: learns training-examples for every scorer of the group and "
        "publishes model versions (run does it too unless run_trainer=false)",
    )
    tr.epilog = (
        "Joins the consumer group <kafka_group_id>-trainer; the member that owns the one "
        "partition of training-examples trains, the others stand by. Same settings as run."
    )

    sc = command("schemas", "write the JSON Schemas of every topic")
    sc.add_argument("--out", type=output_dir, default=Path("schemas"))

    c = command("config", "every setting with its value, where it came from and what it means")
    c.add_argument("--markdown", action="store_true", help="the README's table of defaults")

    t = command("tail", "print an output topic one line per record, for a person at a terminal")
    t.add_argument(
        "topic",
        help="user-scores, churn-alerts, segment-changes, user-events-dlq, "
        "user-events (or the configured name of one)",
    )
    t.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    t.add_argument("--limit", type=users, default=None, help="stop after this many records")
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

    summary, rep = replay(settings, args.events, args.out, args.as_of)
    print_replay(summary, rep, args.out)
    return 0


def _cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from streamscore.simulator import ShopSimulator, SimulationConfig

    start = {} if args.start is None else {"start_ms": args.start}
    sim = ShopSimulator(
        SimulationConfig(
            users=args.users,
            days=args.days,
            seed=args.seed,
            drift_day=args.drift_day,
            bad_fraction=args.bad_fraction,
            **start,
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


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    from streamscore.settings_doc import markdown, table

    print(markdown() if args.markdown else table(settings, args.config))
    return 0


def _cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    from streamscore.tail import tail

    return tail(settings, args.topic, from_beginning=args.from_beginning, limit=args.limit)


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from streamscore.service import run_service

    return run_service(settings)


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from streamscore.service import run_trainer

    return run_trainer(settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``streamscore`` console script."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a refused argument (code 2)
        return exc.code if isinstance(exc.code, int) else 2
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
            args.command in {"demo", "replay", "schemas", "config", "tail"}
            and "STREAMSCORE_LOG_LEVEL" not in os.environ
        )
        configure_logging(
            "WARNING" if quiet else settings.log_level,
            fmt=settings.log_format,
            kafka_level=settings.kafka_log_level,
        )
        handler = {
            "demo": _cmd_demo,
            "replay": _cmd_replay,
            "simulate": _cmd_simulate,
            "schemas": _cmd_schemas,
            "run": _cmd_run,
            "train": _cmd_train,
            "config": _cmd_config,
            "tail": _cmd_tail,
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
    except BrokenPipeError:  # the reader of our output went away (| head)
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
