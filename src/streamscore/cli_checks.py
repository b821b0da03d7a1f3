"""Argument types of the command line: each refuses a bad value with one line saying what
would be accepted, so argparse reports it and exits with code 2 (never a traceback)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from streamscore.core.timeutil import iso, parse_rfc3339

# Epoch milliseconds are accepted only between these (2000-01-01 and 2100-01-01 UTC): a
# number outside is more likely a date typed without separators (20260101) or seconds.
EPOCH_MS_MIN = 946_684_800_000
EPOCH_MS_MAX = 4_102_444_800_000
TIME_FORMATS = "an RFC 3339 time such as 2026-01-01T00:00:00Z, or epoch milliseconds such as "
TIME_FORMATS += "1767225600000"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, with where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def when(text: str) -> int:
    """A point in event time: RFC 3339 with an offset, or plausible epoch milliseconds."""
    if text.isdigit():
        ms = int(text)
        if EPOCH_MS_MIN <= ms < EPOCH_MS_MAX:
            return ms
        raise argparse.ArgumentTypeError(
            f"{text} is neither RFC 3339 nor epoch milliseconds between "
            f"{iso(EPOCH_MS_MIN)[:10]} and {iso(EPOCH_MS_MAX)[:10]}; give {TIME_FORMATS}"
        )
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; give {TIME_FORMATS}") from None


def _number(kind: type[float] | type[int], text: str) -> float:
    try:
        return kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None


def at_least(minimum: float, kind: type[int] | type[float] = int) -> Callable[[str], float]:
    """A number ≥ ``minimum``."""

    def check(text: str) -> float:
        value = _number(kind, text)
        if not value >= minimum:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"{text} must be at least {minimum:g}")
        return value

    check.__name__ = kind.__name__
    return check


def above(minimum: float) -> Callable[[str], float]:
    """A finite number > ``minimum``."""

    def check(text: str) -> float:
        value = _number(float, text)
        if not minimum < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{text} must be a number above {minimum:g}")
        return value

    check.__name__ = "float"
    return check


def fraction(text: str) -> float:
    """A share between 0 and 1."""
    value = _number(float, text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1")
    return value


def user_id(text: str) -> str:
    """A user id as the input contract allows it (1 to 128 characters)."""
    if not 1 <= len(text) <= 128:
        raise argparse.ArgumentTypeError(f"a user id has 1 to 128 characters, not {len(text)}")
    return text


def input_file(text: str) -> Path:
    """A readable regular file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a regular file")
    try:
        path.open("rb").close()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text} cannot be read ({exc.strerror})") from None
    return path


def output_dir(text: str) -> Path:
    """A directory to write into: existing, or creatable (its nearest parent is one)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{parent} is not a directory")
    return path


def output_file(text: str) -> Path:
    """A file to write: not a directory, in a directory that exists."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    if not path.absolute().parent.is_dir():
        raise argparse.ArgumentTypeError(f"the directory of {text} does not exist")
    return path


def fail(message: str) -> NoReturn:
    """End a command with a one-line usage error (exit code 2)."""
    print(f"streamscore: {message}", file=sys.stderr)
    raise SystemExit(2)
