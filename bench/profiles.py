"""Turning sampled stacks (pyinstrument in-process, py-spy for a subprocess) into tables.

Three views of the same samples, each as a share of all on-CPU samples:

- ``self``: the function that was running (the leaf frame), wherever it was called from;
- ``src``: the innermost ``streamscore`` function on the stack, i.e. the code in ``src/`` that
  is responsible for the time, library calls included (``<outside src>`` for client threads
  and loops that never enter streamscore, such as kafka-python's sender thread);
- ``inclusive``: every ``streamscore`` function with all the time spent below it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Frame = tuple[str, str, int]  # function, file, line
OUTSIDE = ("<outside src>", "", 0)
_IMPORT_FRAMES = {"_find_and_load", "_call_with_frames_removed", "_load_unlocked"}
_ENTRY_FRAMES = {"<module>", "main", "_cmd_run"}  # always 100% inclusive: not worth a row


@dataclass(slots=True)
class Profile:
    """Weighted stacks (root first) and where they came from."""

    source: str
    stacks: list[tuple[tuple[Frame, ...], float]]

    @property
    def total(self) -> float:
        return sum(w for _, w in self.stacks)


def short_path(path: str) -> str:
    """``streamscore/core/events.py`` rather than a full site-packages path."""
    for marker in ("/site-packages/", "/src/", "/lib/python3.11/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    return path.rsplit("/", 2)[-1] if "/" in path else path


def in_src(frame: Frame) -> bool:
    return "streamscore/" in frame[1] and "/site-packages/" not in frame[1]


def label(frame: Frame) -> str:
    func, path, line = frame
    if not path:
        return func
    return f"{func} ({short_path(path)}:{line})"


def from_pyinstrument(session: Any) -> Profile:
    """The frame records of a pyinstrument session."""
    stacks: list[tuple[tuple[Frame, ...], float]] = []
    for identifiers, seconds in session.frame_records:
        frames: list[Frame] = []
        for ident in identifiers:
            head = ident.split("\x01", 1)[0]
            parts = head.split("\x00")
            if len(parts) != 3 or parts[1] == "<thread>":
                continue
            try:
                line = int(parts[2])
            except ValueError:
                line = 0
            frames.append((parts[0], parts[1], line))
        if frames:
            stacks.append((tuple(frames), seconds))
    return Profile("pyinstrument", stacks)


_PYSPY_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


def from_pyspy_raw(path: Path) -> Profile:
    """A py-spy ``--format raw`` file (collapsed stacks, one ``a;b;c count`` per line)."""
    stacks: list[tuple[tuple[Frame, ...], float]] = []
    for line in path.read_text().splitlines():
        body, _, count = line.rpartition(" ")
        if not body or not count.isdigit():
            continue
        frames: list[Frame] = []
        for text in body.split(";"):
            m = _PYSPY_FRAME.match(text)
            if m:
                frames.append((m["func"], m["file"], int(m["line"])))
            else:
                frames.append((text, "", 0))
        if any(f[0] in _IMPORT_FRAMES for f in frames):
            continue  # start-up imports, not the steady state
        stacks.append((tuple(frames), float(count)))
    return Profile("py-spy", stacks)


def _top(counter: Counter[Frame], total: float, n: int) -> list[dict[str, Any]]:
    return [
        {"function": label(f), "share": round(w / total, 4)}
        for f, w in counter.most_common(n)
        if total
    ]


def summarize(profile: Profile, n: int = 15) -> dict[str, Any]:
    """The three views, top ``n`` rows each."""
    own: Counter[Frame] = Counter()
    src: Counter[Frame] = Counter()
    inclusive: Counter[Frame] = Counter()
    for frames, weight in profile.stacks:
        own[frames[-1]] += weight
        innermost = next((f for f in reversed(frames) if in_src(f)), OUTSIDE)
        src[innermost] += weight
        for f in set(frames):
            if in_src(f) and f[0] not in _ENTRY_FRAMES:
                inclusive[f] += weight
    total = profile.total
    return {
        "source": profile.source,
        "samples": round(total, 3),
        "self": _top(own, total, n),
        "src": _top(src, total, n),
        "inclusive": _top(inclusive, total, n),
    }


def render(summary: dict[str, Any], views: Iterable[str] = ("self", "src")) -> str:
    """Plain-text tables of a summary."""
    lines = []
    titles = {
        "self": "hot functions (self time, the leaf frame)",
        "src": "time by innermost src/streamscore function (library calls included)",
        "inclusive": "inclusive time of src/streamscore functions",
    }
    for view in views:
        lines.append(f"  {titles[view]} — {summary['source']}, {summary['samples']:g} samples")
        for i, row in enumerate(summary[view], 1):
            lines.append(f"   {i:2d}. {row['share'] * 100:5.1f}%  {row['function']}")
    return "\n".join(lines)
