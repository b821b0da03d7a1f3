"""What ``/healthz`` and ``/readyz`` answer: a small status object the service loop updates.

The loop writes (after each batch, on each retried failure); the HTTP thread only reads, under
one lock, so a probe never does I/O of its own and answers even while the loop is blocked.

- **Live** (``/healthz``): the loop makes progress. Progress is a finished batch or a retry
  of a failing step: during an outage the loop is alive, retrying with backoff (at most 10 s
  apart), so a liveness probe must not restart it, which would not bring Redis back. It is
  stuck when neither happened for ``health_stuck_after_polls`` × ``poll_timeout_ms``: a
  call that hangs (a frozen server that accepts connections and never answers, a deadlock).
  While starting (connecting, restoring models) it is live: start-up has its own timeouts,
  which end the process.
- **Ready** (``/readyz``): live, models loaded (restored from a checkpoint or fresh),
  partitions assigned, and Kafka and Redis answering as last seen by the loop: a step on one
  of them failed and has not succeeded since (the loop is retrying it) makes it not ready.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from streamscore.guards import OnRetry

# The runtime's retried steps, by the server they talk to.
STEP_SERVER = {
    "poll": "kafka",
    "send outputs": "kafka",
    "flush producer": "kafka",
    "commit offsets": "kafka",
    "load states": "redis",
    "query due users": "redis",
    "save states": "redis",
    "load watermarks": "redis",
    "poll training examples": "kafka",
    "commit training offset": "kafka",
    "restore model lineage": "redis",
    "publish model version": "redis",
}


@dataclass(slots=True)
class _Failure:
    step: str
    since: float
    attempts: int


class LoopStatus:
    """Thread-safe record of the service loop's progress, for the probes."""

    def __init__(self, stuck_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stuck_after_s = stuck_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._phase = "starting"
        self._last_batch: float | None = None
        self._last_progress = self._started
        self._batches = 0
        self._partitions: tuple[int, ...] = ()
        self._models: dict[str, Any] | None = None
        self._failing: dict[str, _Failure] = {}

    # -- written by the loop --------------------------------------------------------------

    def models_loaded(self, version: str, *, restored: bool) -> None:
        """Models are in place: restored from a checkpoint, or fresh."""
        with self._lock:
            self._models = {"version": version, "restored": restored}

    def running(self) -> None:
        """The loop has started."""
        with self._lock:
            self._phase = "running"
            self._last_progress = self._clock()

    def batch_done(self, partitions: Collection[int]) -> None:
        """A batch went through every step: both servers answered."""
        now = self._clock()
        with self._lock:
            self._last_batch = self._last_progress = now
            self._batches += 1
            self._partitions = tuple(sorted(partitions))
            self._failing.clear()

    def step_failed(self, step: str) -> None:
        """A step raised a transient error and is about to be retried (progress too)."""
        now = self._clock()
        server = STEP_SERVER.get(step, step)
        with self._lock:
            self._last_progress = now
            failure = self._failing.get(server)
            if failure is None or failure.step != step:
                self._failing[server] = _Failure(step, now, 1)
            else:
                failure.attempts += 1

    def wrap_on_retry(self, on_retry: OnRetry | None) -> OnRetry:
        """The runtime's retry callback, also reporting the failure here."""

        def both(step: str, error: Exception) -> None:
            self.step_failed(step)
            if on_retry is not None:
                on_retry(step, error)

        return both

    def stopping(self) -> None:
        """A stop was asked for: not ready any more."""
        with self._lock:
            self._phase = "stopping"

    # -- read by the probes ---------------------------------------------------------------

    def _ago(self, t: float | None, now: float) -> float | None:
        return None if t is None else round(now - t, 3)

    def _live(self, now: float) -> tuple[bool, str | None]:
        if self._phase == "starting":
            return True, None
        quiet = now - self._last_progress
        if quiet <= self.stuck_after_s:
            return True, None
        where = ""
        if self._failing:
            where = "; last failing step: " + ", ".join(
                f"{f.step!r} ({server})" for server, f in self._failing.items()
            )
        return False, (
            f"the loop has neither finished a batch nor retried a failing step for {quiet:.1f}s "
            f"(limit {self.stuck_after_s:g}s = health_stuck_after_polls × poll_timeout_ms)"
            f"{where}"
        )

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """(live, JSON body of /healthz)."""
        now = self._clock()
        with self._lock:
            ok, reason = self._live(now)
            body: dict[str, Any] = {
                "status": "ok" if ok else "stuck",
                "phase": self._phase,
                "seconds_since_progress": self._ago(self._last_progress, now),
                "seconds_since_batch": self._ago(self._last_batch, now),
                "stuck_after_seconds": self.stuck_after_s,
                "batches": self._batches,
            }
            if reason:
                body["reason"] = reason
        return ok, body

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, JSON body of /readyz)."""
        now = self._clock()
        with self._lock:
            live, stuck = self._live(now)
            reasons = []
            if self._phase != "running":
                reasons.append(f"the service is {self._phase}")
            if stuck:
                reasons.append(stuck)
            if self._models is None:
                reasons.append("models are not loaded yet")
            if not self._partitions:
                reasons.append(
                    "no partition of its topic is assigned to this process (joining the group, "
                    "more scorers than partitions, or a trainer standing by)"
                )
            servers: dict[str, Any] = {}
            for server in ("kafka", "redis"):
                failure = self._failing.get(server)
                if failure is None:
                    servers[server] = {"ok": self._batches > 0}
                    if not self._batches:
                        reasons.append(f"{server}: no batch has gone through yet")
                    continue
                for_s = now - failure.since
                servers[server] = {
                    "ok": False,
                    "failing_step": failure.step,
                    "failing_for_seconds": round(for_s, 3),
                    "attempts": failure.attempts,
                }
                reasons.append(
                    f"{server}: {failure.step!r} has failed for {for_s:.1f}s "
                    f"({failure.attempts} attempts); the loop keeps retrying"
                )
            ok = not reasons
            body: dict[str, Any] = {
                "status": "ready" if ok else "not ready",
                "partitions": list(self._partitions),
                "models": self._models,
                **servers,
                "live": live,
            }
            if reasons:
                body["reasons"] = reasons
        return ok, body
