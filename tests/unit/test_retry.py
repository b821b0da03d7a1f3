"""Retrying transient failures, and giving up on them when the service is asked to stop."""

from __future__ import annotations

import threading

import pytest

from streamscore.adapters.memory import ListSink, ListSource, MemoryStateStore
from streamscore.config import Settings
from streamscore.core.records import TOPIC_EVENTS
from streamscore.core.scorer import Scorer
from streamscore.errors import RetryAbandoned, TransientError
from streamscore.ports import SourceRecord
from streamscore.runtime import Pipeline, RetryPolicy
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event


class Flaky:
    """Fails ``failures`` times with a transient error, then returns ``"ok"``."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise TransientError(f"down (call {self.calls})")
        return "ok"


def test_retries_until_the_step_succeeds() -> None:
    step, retried = Flaky(3), []
    policy = RetryPolicy(initial_s=0.001, max_s=0.002)
    assert policy.run("send outputs", step, retried.append) == "ok"
    assert step.calls == 4
    assert retried == ["send outputs"] * 3


def test_a_limited_policy_reraises_the_last_failure() -> None:
    step = Flaky(10)
    with pytest.raises(TransientError, match="call 3"):
        RetryPolicy(initial_s=0.001, attempts=3).run("save states", step)


def test_other_errors_are_not_retried() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        RetryPolicy(initial_s=0.001).run("save states", broken)
    assert calls == [1]


def test_a_stop_request_abandons_a_failing_step_instead_of_retrying() -> None:
    stop = threading.Event()
    stop.set()
    step = Flaky(1)
    with pytest.raises(RetryAbandoned, match="commit offsets") as info:
        RetryPolicy(initial_s=0.001, stop=stop).run("commit offsets", step)
    assert info.value.step == "commit offsets"
    assert step.calls == 1


def test_a_stop_during_the_backoff_wakes_the_retry_and_abandons() -> None:
    stop = threading.Event()
    step = Flaky(100)
    policy = RetryPolicy(initial_s=3600.0, max_s=3600.0, stop=stop)
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            policy.run("flush producer", step)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    while step.calls == 0:
        worker.join(0.01)
    stop.set()
    worker.join(30)  # an hour of backoff unless the stop wakes it
    assert not worker.is_alive(), "the backoff ignored the stop request"
    assert len(outcome) == 1 and isinstance(outcome[0], RetryAbandoned)
    assert step.calls == 2


class FailingSink(ListSink):
    def flush(self) -> None:
        raise TransientError("broker unreachable")


def test_an_abandoned_batch_is_neither_saved_nor_committed() -> None:
    """SIGTERM during a Kafka outage: the batch in hand stops before its save and commit, and
    the pipeline says its models hold learning a restart will repeat (no checkpoint then)."""
    settings = Settings()
    events = list(ShopSimulator(SimulationConfig(users=10, days=20, seed=4)).events())
    records = [SourceRecord(TOPIC_EVENTS, 0, i, encode_event(e)) for i, e in enumerate(events)]
    users = {str(e["user_id"]) for e in events if isinstance(e, dict)}
    source, store = ListSource(records), MemoryStateStore()
    stop = threading.Event()
    stop.set()
    pipeline = Pipeline(
        source,
        store,
        FailingSink(),
        Scorer(settings.scoring()),
        limits=settings.event_limits(),
        batch_size=100,
        poll_timeout_s=0.0,
        clock=lambda: 2_000_000_000_000,
        retry=RetryPolicy(initial_s=0.001, stop=stop),
    )
    assert not pipeline.unsaved_learning
    with pytest.raises(RetryAbandoned, match="flush producer"):
        pipeline.run_once()
    assert pipeline.unsaved_learning
    assert source.committed == {}
    assert store.load(users) == {}
