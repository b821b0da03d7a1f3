"""``python -m tests.integration.newer_scorer [--incompatible]``: the next release, simulated.

``streamscore run`` exactly as this tree has it, with one change a future release would
make: the next state format (this tree's plus one), which adds a top-level field ``nx``
(filled in by an upgrade step from this tree's format, kept unchanged after that). With the
default, the addition is compatible (``r`` stays this tree's, as the rules in
``core/state.py`` prescribe for an added field), so this tree's processes read and carry it.
With ``--incompatible`` the format also raises its oldest reader to the next one, as a change
of meaning would: this tree's processes must refuse those states without crashing.

This is the honest stand-in for an old and a new release in one consumer group: the old
process is the real code of this tree, and the new one differs only in what it stores.
"""

from __future__ import annotations

import sys
from typing import Any

from streamscore.cli import main
from streamscore.core import state

NEW_FIELD = "nx"
CURRENT = state.STATE_FORMAT  # this tree's format, when this module is imported
NEXT = CURRENT + 1


def _upgrade(d: Any) -> dict[str, Any]:
    """The next format's upgrade step: fill the new field in, keeping it when an older
    writer carried it."""
    out: dict[str, Any] = dict(d)
    out.setdefault(NEW_FIELD, f"added by v{NEXT}")
    out["v"] = NEXT
    return out


def become_next(*, incompatible: bool) -> None:
    """Patch this process's state format into the simulated next one."""
    reader = state.MIN_READER
    state.STATE_FORMAT = NEXT
    state.MIN_READER = NEXT if incompatible else reader
    state.UPGRADES[CURRENT] = _upgrade


if __name__ == "__main__":
    become_next(incompatible="--incompatible" in sys.argv)
    sys.exit(main(["run"]))
