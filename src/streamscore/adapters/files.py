"""JSONL files as a source (replay) and as sinks (one file per output topic).

A replay file may be out of order. The source sorts it by event time with an external merge
sort (runs of ``run_size`` lines spilled to temporary files), so a file of millions of events
replays in bounded memory; offsets are positions in the sorted stream.
"""

from __future__ import annotations

import heapq
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import orjson

from streamscore.adapters.memory import ListSource, MemoryGroup
from streamscore.core.records import TOPIC_EVENTS
from streamscore.core.timeutil import parse_rfc3339
from streamscore.core.values import Output
from streamscore.ports import SourceRecord

_UNPARSABLE = -(2**62)


def _sort_key(line: bytes) -> int:
    """Event time of a line, or a key that puts unreadable lines first (they dead-letter)."""
    try:
        ts = orjson.loads(line).get("ts")
        if isinstance(ts, int) and not isinstance(ts, bool):
            return ts
        if isinstance(ts, str):
            return parse_rfc3339(ts)
    except (orjson.JSONDecodeError, AttributeError, ValueError, OverflowError):
        pass
    return _UNPARSABLE


def _event_ms(line: bytes) -> int | None:
    key = _sort_key(line)
    return None if key == _UNPARSABLE else key


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fp:
        for raw in fp:
            line = raw.rstrip(b"\r\n")
            if line.strip():
                yield line


def sorted_lines(path: Path, run_size: int = 200_000) -> Iterator[bytes]:
    """The non-blank lines of ``path`` in event-time order (stable for equal times)."""
    runs: list[IO[bytes]] = []
    buf: list[tuple[int, int, bytes]] = []
    seq = 0
    try:
        for line in _lines(path):
            buf.append((_sort_key(line), seq, line))
            seq += 1
            if len(buf) >= run_size:
                runs.append(_spill(buf))
                buf = []
        buf.sort()
        if not runs:
            yield from (line for _, _, line in buf)
            return
        if buf:
            runs.append(_spill(buf))
        yield from (line for _, _, line in heapq.merge(*(_read_run(r) for r in runs)))
    finally:
        for r in runs:
            r.close()


def _spill(buf: list[tuple[int, int, bytes]]) -> IO[bytes]:
    buf.sort()
    fp = tempfile.TemporaryFile()  # noqa: SIM115 - closed by sorted_lines
    for key, seq, line in buf:
        fp.write(b"%d %d %s\n" % (key, seq, line))
    fp.seek(0)
    return fp


def _read_run(fp: IO[bytes]) -> Iterator[tuple[int, int, bytes]]:
    for raw in fp:
        key, seq, line = raw.rstrip(b"\n").split(b" ", 2)
        yield int(key), int(seq), line


def _until(lines: Iterator[bytes], until_ms: int) -> Iterator[bytes]:
    """Sorted lines up to event time ``until_ms`` (unreadable lines sort first and pass)."""
    for line in lines:
        if _sort_key(line) > until_ms:
            return
        yield line


class JsonlSource(ListSource):
    """Replays a JSONL file of events as partition 0 of ``topic``, in event-time order.

    Offsets are positions in the sorted stream; with a ``group``, a source opened again on the
    same file resumes after the group's last commit. Lines are read as polls need them, so
    ``lag`` counts only the lines read ahead.
    """

    def __init__(
        self,
        path: Path,
        topic: str = TOPIC_EVENTS,
        *,
        presorted: bool = False,
        until_ms: int | None = None,
        group: MemoryGroup | None = None,
        max_span_ms: int | None = None,
    ) -> None:
        lines = _lines(path) if presorted else sorted_lines(path)
        if until_ms is not None:
            lines = _until(lines, until_ms)
        # A file's records carry their event time as their timestamp (a file has no other).
        records = (SourceRecord(topic, 0, i, line, _event_ms(line)) for i, line in enumerate(lines))
        super().__init__(records, topic=topic, group=group, max_span_ms=max_span_ms)
        self.path = path
        self.bytes_total = os.path.getsize(path)


class JsonlSink:
    """Writes each output topic to ``DIR/<topic>.jsonl``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._files: dict[str, IO[bytes]] = {}
        self.counts: dict[str, int] = {}

    def _file(self, topic: str) -> IO[bytes]:
        fp = self._files.get(topic)
        if fp is None:
            fp = self._files[topic] = (self.directory / f"{topic}.jsonl").open("wb")
        return fp

    def ensure(self, topics: Iterable[str]) -> None:
        """Create the files of topics that got no record, so every topic has its file."""
        for topic in topics:
            self._file(topic)
            self.counts.setdefault(topic, 0)

    def send(self, outputs: Iterable[Output]) -> None:
        for o in outputs:
            if o.value is not None:  # no tombstones in a file: it is not compacted
                self._file(o.topic).write(orjson.dumps(o.value) + b"\n")
            self.counts[o.topic] = self.counts.get(o.topic, 0) + 1

    def flush(self) -> None:
        for fp in self._files.values():
            fp.flush()

    def close(self) -> None:
        for fp in self._files.values():
            fp.close()
        self._files.clear()
