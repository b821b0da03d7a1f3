"""The probes' logic on a fake clock: live while progressing, ready only when everything is."""

from __future__ import annotations

from streamscore.health import LoopStatus


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def started(clock: Clock) -> LoopStatus:
    status = LoopStatus(stuck_after_s=30.0, clock=clock)
    status.models_loaded("scaled-linear-abc-g0", restored=False)
    status.running()
    return status


def test_starting_is_live_but_not_ready() -> None:
    clock = Clock()
    status = LoopStatus(stuck_after_s=30.0, clock=clock)
    clock.t += 300  # a slow start is bounded by its own timeouts, not by the probe
    live, body = status.liveness()
    assert live and body["phase"] == "starting"
    ready, body = status.readiness()
    assert not ready
    assert "the service is starting" in body["reasons"]
    assert "models are not loaded yet" in body["reasons"]


def test_ready_after_a_batch_with_partitions() -> None:
    clock = Clock()
    status = started(clock)
    assert not status.readiness()[0]  # no batch yet
    status.batch_done({2, 0})
    ready, body = status.readiness()
    assert ready, body
    assert body["partitions"] == [0, 2]
    assert body["kafka"] == {"ok": True} and body["redis"] == {"ok": True}
    assert "reasons" not in body


def test_no_partitions_is_not_ready() -> None:
    clock = Clock()
    status = started(clock)
    status.batch_done(set())
    ready, body = status.readiness()
    assert not ready
    assert any("no partition" in r for r in body["reasons"])


def test_a_failing_redis_step_makes_it_unready_but_retries_keep_it_live() -> None:
    clock = Clock()
    status = started(clock)
    status.batch_done({0})
    for _ in range(10):  # retried every 10 s for 100 s
        clock.t += 10
        status.step_failed("save states")
    live, body = status.liveness()
    assert live, body
    ready, body = status.readiness()
    assert not ready
    assert body["redis"]["ok"] is False and body["redis"]["attempts"] == 10
    assert body["redis"]["failing_step"] == "save states"
    assert body["redis"]["failing_for_seconds"] == 90.0
    assert body["kafka"] == {"ok": True}
    status.batch_done({0})  # the step succeeded, the batch went through
    assert status.readiness()[0]


def test_kafka_steps_name_kafka() -> None:
    clock = Clock()
    status = started(clock)
    status.batch_done({0})
    status.step_failed("flush producer")
    _, body = status.readiness()
    assert body["kafka"]["ok"] is False and body["redis"]["ok"] is True


def test_no_progress_past_the_limit_is_stuck() -> None:
    clock = Clock()
    status = started(clock)
    status.step_failed("load states")
    clock.t += 30.0
    assert status.liveness()[0]  # exactly at the limit: still live
    clock.t += 0.5
    live, body = status.liveness()
    assert not live
    assert body["status"] == "stuck" and body["seconds_since_progress"] == 30.5
    assert "'load states' (redis)" in body["reason"]
    ready, rbody = status.readiness()
    assert not ready and rbody["live"] is False


def test_stopping_is_not_ready() -> None:
    clock = Clock()
    status = started(clock)
    status.batch_done({0})
    status.stopping()
    ready, body = status.readiness()
    assert not ready and "the service is stopping" in body["reasons"]


def test_wrapped_retry_callback_still_calls_the_original() -> None:
    seen: list[str] = []
    status = started(Clock())
    status.wrap_on_retry(lambda step, error: seen.append(step))("save states", OSError("x"))
    assert seen == ["save states"]
    assert status.readiness()[1]["redis"]["failing_step"] == "save states"
