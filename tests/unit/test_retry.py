"""Retrying transient failures, and giving up on them when the service is asked to stop."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest

from streamscore import metrics
from streamscore.adapters.memory import ListSink, ListSource, MemoryStateStore
from streamscore.config import Settings
from streamscore.core.records import TOPIC_EVENTS
from streamscore.core.state import STATE_FORMAT, UserState
from streamscore.errors import NewerFormatError, RetryAbandoned, TransientError
from streamscore.guards import RetryPolicy
from streamscore.ports import SourceRecord
from streamscore.runtime import Pipeline
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event
from streamscore.wiring import in_process_scorer


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

    def on_retry(what: str, exc: Exception) -> None:
        retried.append((what, str(exc)))

    assert policy.run("send outputs", step, on_retry) == "ok"
    assert step.calls == 4
    assert retried == [("send outputs", f"down (call {n})") for n in (1, 2, 3)]


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
    """SIGTERM during a Kafka outage: the batch in hand stops before its save and commit."""
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
        in_process_scorer(settings.scoring())[0],
        limits=settings.event_limits(),
        batch_size=100,
        poll_timeout_s=0.0,
        clock=lambda: 2_000_000_000_000,
        retry=RetryPolicy(initial_s=0.001, stop=stop),
    )
    with pytest.raises(RetryAbandoned, match="flush producer"):
        pipeline.run_once()
    assert source.committed == {}
    assert store.load(users) == {}


NEWER = orjson.dumps({"v": STATE_FORMAT + 1, "r": STATE_FORMAT + 1, "p": 0, "o": -1, "f": []})


def _one_event(retry: RetryPolicy, **kw: Any) -> tuple[Pipeline, ListSource, MemoryStateStore]:
    """A pipeline over one event of a user whose stored state a newer version wrote."""
    settings = Settings()
    event = {"event_id": "e1", "user_id": "u1", "type": "page_view", "ts": 1_767_225_600_000}
    source = ListSource([SourceRecord("user-events", 0, 0, encode_event(event))])
    store = MemoryStateStore()
    store.states["u1"] = NEWER
    pipeline = Pipeline(
        source,
        store,
        ListSink(),
        in_process_scorer(settings.scoring())[0],
        limits=settings.event_limits(),
        poll_timeout_s=0.0,
        clock=lambda: 2_000_000_000_000,
        retry=retry,
        **kw,
    )
    return pipeline, source, store


def test_a_state_written_by_a_newer_version_holds_the_batch_back_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Rolling upgrade: the old process gets a partition back whose states a newer version
    wrote incompatibly. It neither crashes nor commits: the load is retried (logged with
    both versions, counted), and the batch goes through once the state is readable."""
    refusals = metrics.REGISTRY.get_sample_value("streamscore_newer_format_refusals_total")
    steps: list[str] = []
    committed_meanwhile: list[dict[int, int]] = []

    def on_retry(step: str, exc: Exception) -> None:
        steps.append(step)
        committed_meanwhile.append(dict(source.committed))
        metrics.count_transient_error(step, exc)
        if len(steps) == 3:  # the rolling upgrade completes: the partition's state is readable
            store.states["u1"] = UserState(user_id="u1").to_bytes()

    pipeline, source, store = _one_event(
        RetryPolicy(initial_s=0.001, max_s=0.002), on_retry=on_retry
    )
    stats = pipeline.run_once()
    assert steps == ["load states"] * 3
    assert committed_meanwhile == [{}, {}, {}]
    after = metrics.REGISTRY.get_sample_value("streamscore_newer_format_refusals_total")
    assert after is not None and after - (refusals or 0.0) == 3
    assert f"needs a reader of v{STATE_FORMAT + 1}" in caplog.text
    assert "finish the rolling upgrade" in caplog.text
    assert stats.events == 1 and source.committed == {0: 1}
    assert UserState.from_bytes("u1", store.states["u1"]).features.events == 1


def test_a_refused_batch_commits_nothing_while_the_state_stays_newer() -> None:
    pipeline, source, store = _one_event(RetryPolicy(initial_s=0.001, attempts=3))
    with pytest.raises(NewerFormatError):
        pipeline.run_once()
    assert source.committed == {}
    assert store.states["u1"] == NEWER
