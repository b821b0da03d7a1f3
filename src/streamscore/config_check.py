"""Refuse configuration that would be silently ignored: unknown ``STREAMSCORE_*`` variables.

pydantic-settings reads the variables it knows and ignores the rest, so a misspelt
``STREAMSCORE_CHURN_HORIZON_DAY=5`` ran with the default horizon. Every ``STREAMSCORE_*``
variable must now be a setting or one of the project's own non-setting variables below (the
config file's path, the dev stack's and the tests' knobs); anything else is a config error
that names the closest setting.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Mapping

PREFIX = "STREAMSCORE_"
NESTED = "__"  # STREAMSCORE_ALERT_ACTIONS__low/high=...: one key of a dict setting

# Variables the project reads that are not settings: the settings file, scripts/bootstrap,
# scripts/stack (ports, versions, the jar cache) and the test suite's switches.
NON_SETTINGS: frozenset[str] = frozenset(
    {
        "STREAMSCORE_CONFIG",
        "STREAMSCORE_BOOTSTRAP_PYTHON",
        "STREAMSCORE_STACK",
        "STREAMSCORE_STACK_DIR",
        "STREAMSCORE_PYTHON",
        "STREAMSCORE_KAFKA_VERSION",
        "STREAMSCORE_KAFKA_PORT",
        "STREAMSCORE_KAFKA_CONTROLLER_PORT",
        "STREAMSCORE_KAFKA_HEAP_OPTS",
        "STREAMSCORE_KAFKA_START_TIMEOUT",
        "STREAMSCORE_REDIS_PORT",
        "STREAMSCORE_REDIS_CLUSTER_PORT",
        "STREAMSCORE_PARTITIONS",
    }
)
NON_SETTINGS_PREFIXES: tuple[str, ...] = ("STREAMSCORE_TEST_", "STREAMSCORE_BENCH_")


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like ``name``, if any is close enough to be a likely typo."""
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def env_name(field: str) -> str:
    """The environment variable of a setting."""
    return PREFIX + field.upper()


def unknown_variables(environ: Mapping[str, str], fields: Collection[str]) -> list[str]:
    """One line per ``STREAMSCORE_*`` variable that is neither a setting nor allowed."""
    known = {env_name(f) for f in fields}
    problems = []
    for name in sorted(environ):
        upper = name.upper()  # pydantic-settings matches names case-insensitively
        if not upper.startswith(PREFIX) or upper in NON_SETTINGS:
            continue
        if upper.startswith(NON_SETTINGS_PREFIXES):
            continue
        base = upper.split(NESTED, 1)[0]
        if base in known:
            continue
        # Compared without the shared prefix, which would make every name look alike.
        tail = closest(base.removeprefix(PREFIX), [k.removeprefix(PREFIX) for k in known])
        guess = PREFIX + tail if tail else None
        hint = f"; did you mean {guess}?" if guess else "; `streamscore config` lists them all"
        problems.append(f"  {name}: not a streamscore setting{hint}")
    return problems


def unknown_key_hint(key: str, fields: Collection[str]) -> str:
    """The "did you mean" of an unknown key in the settings file."""
    guess = closest(key, fields)
    return f"; did you mean {guess}?" if guess else "; `streamscore config` lists them all"
