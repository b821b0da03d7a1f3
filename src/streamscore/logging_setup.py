"""Log set-up for every command: text or one JSON object per line, kafka-python kept quiet.

JSON lines carry ``time``, ``level``, ``logger`` and ``message``, plus ``batch`` (the
partitions and offsets the loop is working on, when it is inside a batch) and ``error`` (a
traceback) when there is one, so a log shipper can index them without parsing text.
kafka-python logs every connection, metadata refresh and group join at INFO (about sixty
lines at start against five of ours): its loggers stay at ``kafka_log_level``, WARNING unless
asked.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

# {partition: [first offset, last offset]} of the batch in hand; set by the runtime.
_BATCH: contextvars.ContextVar[dict[str, list[int]] | None] = contextvars.ContextVar(
    "streamscore_batch", default=None
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def batch_context(records: Iterable[Any]) -> None:
    """Remember which offsets the current batch holds, for the log lines it causes."""
    spans: dict[int, list[int]] = {}
    for rec in records:  # in offset order within each partition
        span = spans.get(rec.partition)
        if span is None:
            spans[rec.partition] = [rec.offset, rec.offset]
        else:
            span[1] = rec.offset
    _BATCH.set({str(p): span for p, span in spans.items()} if spans else None)


def end_batch() -> None:
    """The loop is between batches: log lines no longer belong to one."""
    _BATCH.set(None)


def current_batch() -> dict[str, list[int]] | None:
    """The partitions and offset ranges of the batch in hand, if any."""
    return _BATCH.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        batch = current_batch()
        if batch is not None:
            doc["batch"] = batch
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def configure(
    level: str,
    *,
    fmt: str = "text",
    kafka_level: str = "WARNING",
    stream: TextIO | None = None,
) -> None:
    """Install one handler on the root logger (replacing earlier ones)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(kafka_level)
