"""A one-line progress display on stderr for long runs (demo, replay, simulate)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from streamscore.core.timeutil import iso


class Progress:
    """Redraws a single status line at most a few times a second; silent when not a TTY."""

    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.perf_counter()
        self._last = 0.0
        self._tty = self.stream.isatty()
        self._last_plain = 0.0

    def update(self, n: int, event_time_ms: int | None = None) -> None:
        """Count ``n`` more items; ``event_time_ms`` shows how far event time has come."""
        self.done += n
        now = time.perf_counter()
        if self._tty and now - self._last >= 0.2:
            self._last = now
            self.stream.write("\r" + self._line(now, event_time_ms) + "\033[K")
            self.stream.flush()
        elif not self._tty and now - self._last_plain >= 10.0:
            self._last_plain = now
            self.stream.write(self._line(now, event_time_ms) + "\n")
            self.stream.flush()

    def _line(self, now: float, event_time_ms: int | None) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "█" * int(frac * 24) + "░" * (24 - int(frac * 24))
            head = f"{self.label} {bar} {frac:4.0%} {self.done:,}/{self.total:,}"
        else:
            head = f"{self.label} {self.done:,}"
        tail = f" at {iso(event_time_ms)[:16]}" if event_time_ms else ""
        return f"{head}  {rate:,.0f}/s{tail}"

    def close(self) -> float:
        """Finish the line; returns the elapsed seconds."""
        elapsed = time.perf_counter() - self.started
        if self._tty:
            self.stream.write("\r" + self._line(time.perf_counter(), None) + "\033[K\n")
            self.stream.flush()
        return elapsed
