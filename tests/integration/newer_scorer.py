"""``python -m tests.integration.newer_scorer [--incompatible]``: the next release, simulated.

``streamscore run`` exactly as this tree has it, with one change a future release would
make: state format v4, which adds a top-level field ``nx`` (filled in by a v3 -> v4 upgrade
step, kept unchanged after that). With the default, the addition is compatible (``r`` stays
3, as the rules in ``core/state.py`` prescribe for an added field), so v3 processes read and
carry it. With ``--incompatible`` the format also raises its oldest reader to v4, as a change
of meaning would: v3 processes must refuse those states without crashing.

This is the honest stand-in for an old and a new release in one consumer group: the v3
process is the real code of this tree, and the v4 process differs only in what it stores.
"""

from __future__ import annotations

import sys
from typing import Any

from streamscore.cli import main
from streamscore.core import state

NEW_FIELD = "nx"


def _v3_to_v4(d: Any) -> dict[str, Any]:
    """The v4 upgrade step: fill the new field in, keeping it when a v3 writer carried it."""
    out: dict[str, Any] = dict(d)
    out.setdefault(NEW_FIELD, "added by v4")
    out["v"] = 4
    return out


def become_v4(*, incompatible: bool) -> None:
    """Patch this process's state format into the simulated v4."""
    state.STATE_FORMAT = 4
    state.MIN_READER = 4 if incompatible else 3
    state.UPGRADES[3] = _v3_to_v4


if __name__ == "__main__":
    become_v4(incompatible="--incompatible" in sys.argv)
    sys.exit(main(["run"]))
