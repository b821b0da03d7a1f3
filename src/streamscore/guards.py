"""What keeps the batch loop safe when the world misbehaves: retries and the dead-letter limit.

- ``RetryPolicy``: a step that crosses a process boundary and raises ``TransientError`` is
  retried with exponential backoff (logged, counted through ``on_retry``); a stop request
  turns the next failure into ``RetryAbandoned``, so SIGTERM during an outage ends at once.
- ``DeadLetterGuard``: most of the recent input invalid means a wrong topic or a broken
  producer, not bad luck: stop and say so instead of dead-lettering the whole topic. Only
  invalid records count: late events are valid input (a backfill is mostly late), and the
  runtime counts them apart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from streamscore.errors import DeadLetterLimitExceeded, RetryAbandoned, TransientError

log = logging.getLogger("streamscore.runtime")
T = TypeVar("T")
OnRetry = Callable[[str, Exception], None]  # the step that failed, and why (for metrics)


@dataclass(slots=True)
class RetryPolicy:
    """Exponential backoff for transient failures; ``attempts=0`` retries forever.

    ``stop`` is the service's stop request: once set, a failing step gives up with
    ``RetryAbandoned`` instead of retrying, so SIGTERM during an outage ends the process
    without committing anything unsaved, rather than waiting for the outage to pass.
    """

    initial_s: float = 0.2
    max_s: float = 10.0
    attempts: int = 0
    stop: threading.Event | None = None

    def run(self, what: str, fn: Callable[[], T], on_retry: OnRetry | None = None) -> T:
        """Call ``fn`` until it stops raising ``TransientError``."""
        delay = self.initial_s
        tries = 0
        while True:
            try:
                return fn()
            except TransientError as exc:
                tries += 1
                if self.attempts and tries >= self.attempts:
                    raise
                if self.stop is not None and self.stop.is_set():
                    raise RetryAbandoned(what, exc) from exc
                log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
                if on_retry is not None:
                    on_retry(what, exc)
                if self.stop is not None:
                    self.stop.wait(delay)
                else:
                    time.sleep(delay)
                delay = min(delay * 2, self.max_s)


TOPIC_ADVICE = (
    "is the input topic right? Inspect the dead-letter topic, fix the producer, or raise "
    "STREAMSCORE_DLQ_MAX_RATIO."
)
FILE_ADVICE = (
    "is the input a JSONL file of user events? Inspect the dead letters "
    "(user-events-dlq.jsonl), fix the input, or raise STREAMSCORE_DLQ_MAX_RATIO."
)
KEY_ADVICE = (
    "most records are not keyed by their user_id: key them so in the producer, or set "
    "STREAMSCORE_ON_KEY_MISMATCH=rekey to have the scorer re-key them."
)


class DeadLetterGuard:
    """Stops a run when most recent input is invalid: a wrong topic, a broken producer.

    Judged over windows of ``window`` records; a finite input that never filled one is
    judged as a whole when it ends (``finish``), so a short file of garbage fails too.
    """

    def __init__(self, max_ratio: float, window: int, advice: str = TOPIC_ADVICE) -> None:
        self.max_ratio = max_ratio
        self.window = window
        self.advice = advice
        self._bad: Counter[str] = Counter()
        self._total = 0
        self._bad_ever: Counter[str] = Counter()
        self._total_ever = 0

    def observe(self, invalid: Mapping[str, int], total: int) -> None:
        """Count a batch (its invalid records by error type, out of ``total``); raise
        ``DeadLetterLimitExceeded`` once a full window is mostly invalid."""
        self._bad.update(invalid)
        self._total += total
        self._bad_ever.update(invalid)
        self._total_ever += total
        if self._total >= self.window:
            bad, self._bad = self._bad, Counter()
            ratio = bad.total() / self._total
            self._total = 0
            if ratio > self.max_ratio:
                self._refuse(f"{ratio:.0%} of the last {self.window}+ records", bad)

    def finish(self) -> None:
        """The input has ended: raise if it was mostly bad as a whole and never judged."""
        if 0 < self._total_ever < self.window:
            ratio = self._bad_ever.total() / self._total_ever
            if ratio > self.max_ratio:
                self._refuse(f"{ratio:.0%} of all {self._total_ever} records", self._bad_ever)

    def _refuse(self, share: str, bad: Counter[str]) -> None:
        kinds = ", ".join(f"{n} {kind}" for kind, n in bad.most_common(3))
        advice = self.advice
        if bad.most_common(1)[0][0] == "key_mismatch":
            advice = KEY_ADVICE
        raise DeadLetterLimitExceeded(
            f"{share} were invalid (limit {self.max_ratio:.0%}); {advice} (Most of them: {kinds}.)"
        )
