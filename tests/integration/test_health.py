"""``/healthz`` and ``/readyz`` of a real ``streamscore run`` (shared Kafka, a private Redis).

- Ready once partitions are assigned and a batch went through; ``/metrics`` still serves the
  metrics and any other path is a 404.
- Redis stopped: ``/readyz`` fails naming Redis while ``/healthz`` stays up (the loop keeps
  retrying); Redis back: ready again.
- Redis frozen with SIGSTOP (the process accepts connections and never answers, so a save
  blocks for the client's timeouts): the loop is stuck inside one call, ``/healthz`` fails
  with the reason; SIGCONT: live again. The HTTP server answers throughout.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack import RedisServer, produce
from devstack.procs import free_port
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event
from tests.conftest import MakeRedis

from .conftest import SHARED
from .helpers import env_for, start_scorer, stop

pytestmark = pytest.mark.integration

Probe = tuple[int, dict[str, Any]]


def get(port: int, path: str) -> tuple[int, bytes, str]:
    """Status, body and content type of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def probe(port: int, path: str) -> Probe:
    code, body, ctype = get(port, path)
    assert ctype == "application/json", (path, ctype, body[:200])
    return code, json.loads(body)


def wait_for(
    what: str,
    check: Callable[[], Probe | None],
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout_s: float,
) -> Probe:
    """Poll ``check`` until it returns a probe answer (not None)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"scorer exited waiting for {what}:\n{log.read_text()[-3000:]}"
        try:
            got = check()
        except OSError as exc:  # the server is not listening yet
            last = exc
        else:
            if got is not None:
                return got
            last = "condition not met"
        time.sleep(0.2)
    raise AssertionError(f"no {what} in {timeout_s}s ({last}):\n{log.read_text()[-3000:]}")


def answer(port: int, path: str, code: int) -> Callable[[], Probe | None]:
    def check() -> Probe | None:
        got = probe(port, path)
        return got if got[0] == code else None

    return check


def events(users: int, days: float, seed: int) -> list[tuple[bytes | None, bytes]]:
    sim = ShopSimulator(SimulationConfig(users=users, days=days, seed=seed))
    return [
        (str(e["user_id"]).encode(), encode_event(e)) for e in sim.events() if isinstance(e, dict)
    ]


def scorer_env(
    names: dict[str, str], rds: RedisServer, port: int, *, stuck_polls: int
) -> dict[str, str]:
    """A scorer on the test's topics and private Redis, probes on ``port``, 100 ms polls."""
    return env_for(
        names,
        redis_url=rds.url,
        metrics_port=port,
        session_timeout_ms=6000,
        health_stuck_after_polls=stuck_polls,
    )


def test_ready_once_assigned_not_ready_while_redis_is_down_but_still_live(
    names: dict[str, str], make_redis: MakeRedis, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "scorer.log"
    stream = events(users=200, days=40, seed=3)
    rds = make_redis()
    env = scorer_env(names, rds, port, stuck_polls=600)  # 60 s: above the backoff (10 s)
    produce(SHARED, names["input_topic"], stream[: len(stream) // 2])
    proc = start_scorer(env, log)
    try:
        code, ready = wait_for("readiness", answer(port, "/readyz", 200), proc, log, 90)
        assert ready["status"] == "ready"
        assert ready["partitions"] == [0, 1, 2, 3]
        assert ready["kafka"]["ok"] and ready["redis"]["ok"] and ready["live"]
        assert ready["models"]["restored"] is False
        code, live = probe(port, "/healthz")
        assert code == 200 and live["status"] == "ok" and live["phase"] == "running"
        code, body, ctype = get(port, "/metrics")
        assert code == 200 and ctype.startswith("text/plain")
        assert b"streamscore_records_consumed_total" in body
        for path in ("/", "/ready", "/metrics/x"):
            code, missing = probe(port, path)
            assert code == 404 and "/readyz" in missing["paths"], path

        rds.stop()  # connection refused from now on: every Redis step fails fast
        produce(SHARED, names["input_topic"], stream[len(stream) // 2 :])
        code, down = wait_for("not ready", answer(port, "/readyz", 503), proc, log, 60)
        assert down["redis"]["ok"] is False, down
        assert any(r.startswith("redis: ") for r in down["reasons"]), down
        assert down["live"] is True
        # Live all along while the loop retries: a restart would not bring Redis back.
        until = time.monotonic() + 15
        while time.monotonic() < until:
            code, live = probe(port, "/healthz")
            assert code == 200, live
            time.sleep(0.5)
        assert live["seconds_since_progress"] < 12, live

        rds.start()
        wait_for("ready again", answer(port, "/readyz", 200), proc, log, 60)
    finally:
        exit_code = stop(proc)
    assert exit_code == 0, log.read_text()[-3000:]


def test_healthz_fails_while_the_loop_is_stuck_in_a_call(
    names: dict[str, str], make_redis: MakeRedis, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "scorer.log"
    rds = make_redis()
    env = scorer_env(names, rds, port, stuck_polls=30)  # 3 s; a frozen Redis blocks 5 s+
    produce(SHARED, names["input_topic"], events(users=100, days=30, seed=4))
    proc = start_scorer(env, log)
    try:
        wait_for("readiness", answer(port, "/readyz", 200), proc, log, 90)
        rds.pause()  # SIGSTOP
        try:
            _, stuck = wait_for("a stuck loop", answer(port, "/healthz", 503), proc, log, 30)
            assert stuck["status"] == "stuck"
            assert "neither finished a batch nor retried" in stuck["reason"]
            assert stuck["seconds_since_progress"] > 3.0
            code, ready = probe(port, "/readyz")
            assert code == 503 and ready["live"] is False
            assert get(port, "/metrics")[0] == 200  # the server itself is fine
        finally:
            rds.resume()  # SIGCONT
        _, live = wait_for("live again", answer(port, "/healthz", 200), proc, log, 60)
        assert live["seconds_since_progress"] < 3.0
    finally:
        exit_code = stop(proc)
    assert exit_code == 0, log.read_text()[-3000:]
