"""Log lines as JSON with the batch's offsets, and kafka-python kept at WARNING."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from streamscore.adapters.memory import ListSource, MemoryStateStore
from streamscore.core.events import EventLimits
from streamscore.core.values import ScoringConfig
from streamscore.errors import TransientError
from streamscore.guards import RetryPolicy
from streamscore.logging_setup import configure
from streamscore.ports import SourceRecord
from streamscore.runtime import Pipeline
from streamscore.wiring import in_process_scorer


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("kafka").level)
    yield out
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("kafka").setLevel(saved[2])


def test_json_lines_carry_the_fields(stream: io.StringIO) -> None:
    configure("INFO", fmt="json", stream=stream)
    logging.getLogger("streamscore.test").info("hello %s", "there")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("streamscore.test").exception("it failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "INFO" and first["logger"] == "streamscore.test"
    assert first["message"] == "hello there" and first["time"].endswith("+00:00")
    assert "batch" not in first
    assert second["level"] == "ERROR" and "ValueError: boom" in second["error"]


def test_kafka_python_stays_at_warning_unless_asked(stream: io.StringIO) -> None:
    configure("DEBUG", stream=stream)
    logging.getLogger("kafka.conn").info("connecting to broker")
    logging.getLogger("kafka.conn").warning("broker went away")
    text = stream.getvalue()
    assert "connecting" not in text and "broker went away" in text
    configure("INFO", kafka_level="INFO", stream=stream)
    logging.getLogger("kafka.conn").info("now shown")
    assert "now shown" in stream.getvalue()


class FlakyStore(MemoryStateStore):
    """Fails its first save, so the runtime logs a retry inside a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def save(self, states, due, watermarks):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise TransientError("store hiccup")
        super().save(states, due, watermarks)


def test_a_retry_inside_a_batch_names_its_partitions_and_offsets(stream: io.StringIO) -> None:
    configure("INFO", fmt="json", stream=stream)
    event = b'{"event_id":"e%d","user_id":"u%d","type":"page_view","ts":"2026-01-01T00:00:00Z"}'
    records = [SourceRecord("in", p, o, event % (o, p)) for p in (0, 1) for o in (5, 6, 7)]
    source = ListSource(records, topic="in", partitions=(0, 1))
    pipeline = Pipeline(
        source,
        FlakyStore(),
        _NullSink(),
        in_process_scorer(ScoringConfig())[0],
        limits=EventLimits(),
        poll_timeout_s=0.0,
        retry=RetryPolicy(initial_s=0.0),
    )
    pipeline.run_once()
    logging.getLogger("streamscore.after").info("between batches")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    retry = next(x for x in lines if "save states failed" in x["message"])
    assert retry["batch"] == {"0": [5, 7], "1": [5, 7]}
    assert "batch" not in lines[-1]


class _NullSink:
    def send(self, outputs: object) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
