"""Reading streamscore's output topics from Python: typed records, deduplicated by ``id``,
their offsets committed only after your code has handled them.

    from streamscore.client import iter_alerts

    for alert in iter_alerts(group_id="retention"):   # a ChurnAlert (core/records.py)
        act_on(alert)       # its offset is committed only after this returns

Delivery is at-least-once, like the topics themselves: a record whose handler has not
returned (the process died, the handler raised) is read again by the next consumer of the
group. ``id`` is derived from the input, so two records with one ``id`` are about the same
thing (README, "Deduplicating the outputs"); the reader skips an ``id`` it has already
handed out among the last ``dedupe_ids`` (an LRU set; about 10 MB for the default 50,000).
That window lives in the process: across restarts, make the action itself idempotent, keyed
by ``id`` (``examples/retention_actions.py`` keeps an action log).

``from_beginning`` says where the group starts on a partition it has committed nothing for
(the oldest record, or only new ones); give the same value on every start, since a group
that stopped before its first commit on some partition meets that choice again there.

Offsets of handled records are committed before every poll, every ``commit_every`` records
and on close, synchronously, so at most one poll's worth (``max_records``) is read again
after a crash. Connection and security settings are the scorer's (``STREAMSCORE_KAFKA_*``,
or a ``Settings``), so a consumer runs wherever the scorer does.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from pydantic import BaseModel, ValidationError

from streamscore.config import Settings, load_settings
from streamscore.core.records import ChurnAlert, DeadLetter, SegmentChange, UserScore
from streamscore.errors import StreamscoreError

log = logging.getLogger("streamscore.client")
R = TypeVar("R", bound=BaseModel)

__all__ = [
    "ChurnAlert",
    "DeadLetter",
    "InvalidRecord",
    "OutputReader",
    "SegmentChange",
    "UserScore",
    "iter_alerts",
    "iter_dead_letters",
    "iter_scores",
    "iter_segment_changes",
]


class InvalidRecord(StreamscoreError):  # noqa: N818
    """A record on an output topic that does not fit its model (a producer other than
    streamscore, or a version mismatch)."""


class SeenIds:
    """The last ``capacity`` ids handed out, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, record_id: str) -> None:
        """Remember an id, forgetting the oldest when full."""
        if self.capacity <= 0:
            return
        self._ids[record_id] = None
        self._ids.move_to_end(record_id)
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


class OutputReader(Generic[R]):
    """Iterate over one output topic as ``model`` instances, in a consumer group."""

    def __init__(
        self,
        topic: str,
        model: type[R],
        *,
        group_id: str,
        settings: Settings | None = None,
        from_beginning: bool = False,
        dedupe_ids: int = 50_000,
        max_records: int = 100,
        commit_every: int = 100,
        poll_timeout_s: float = 1.0,
        stop_when_idle_s: float | None = None,  # with partitions assigned and nothing new
        on_invalid: Literal["raise", "skip"] = "raise",
    ) -> None:
        from streamscore.adapters.kafka_client import UNREACHABLE, client_config, unreachable_error

        settings = settings or load_settings()
        self.topic = topic
        self.model = model
        self.seen = SeenIds(dedupe_ids)
        self.commit_every = commit_every
        self.poll_timeout_s = poll_timeout_s
        self.stop_when_idle_s = stop_when_idle_s
        self.on_invalid = on_invalid
        self.duplicates = 0
        # Null values: an erased user's records retracted (README, Privacy); not yielded.
        self.tombstones = 0
        self._pending: dict[TopicPartition, int] = {}
        try:
            self.consumer = KafkaConsumer(
                topic,
                group_id=group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest" if from_beginning else "latest",
                max_poll_records=max_records,
                **client_config(settings),
            )
        except UNREACHABLE as exc:
            raise unreachable_error(settings, exc) from None

    def __iter__(self) -> Iterator[R]:
        handled = 0
        quiet_since = time.monotonic()
        while True:
            self.commit()  # everything handled so far, before waiting for more
            batches = self.consumer.poll(
                timeout_ms=int(self.poll_timeout_s * 1000), max_records=None
            )
            if not batches:
                idle = self.stop_when_idle_s
                if not self.consumer.assignment():
                    quiet_since = time.monotonic()  # still joining the group: not idle
                elif idle is not None and time.monotonic() - quiet_since >= idle:
                    return
                continue
            quiet_since = time.monotonic()
            for tp, messages in batches.items():
                for message in messages:
                    record = self._decode(message)
                    if record is not None:
                        record_id = getattr(record, "id", None)
                        if record_id in self.seen:
                            self.duplicates += 1
                        else:
                            yield record
                            # Reached only once the caller asks for the next record: the
                            # handler of this one has returned.
                            if isinstance(record_id, str):
                                self.seen.add(record_id)
                    self._pending[tp] = message.offset + 1
                    handled += 1
                    if handled % self.commit_every == 0:
                        self.commit()

    def _decode(self, message: Any) -> R | None:
        if message.value is None:
            self.tombstones += 1
            return None
        try:
            return self.model.model_validate_json(message.value)
        except (ValidationError, ValueError) as exc:
            where = f"{message.topic}[{message.partition}]@{message.offset}"
            if self.on_invalid == "skip":
                log.warning("skipping %s: not a %s (%s)", where, self.model.__name__, exc)
                return None
            raise InvalidRecord(
                f"{where} is not a {self.model.__name__}: {exc}; pass on_invalid='skip' to "
                "step over such records"
            ) from None

    def commit(self) -> None:
        """Commit the offsets of every record handled so far (synchronously)."""
        if not self._pending:
            return
        owned = self.consumer.assignment()
        offsets = {
            tp: OffsetAndMetadata(o, "", -1) for tp, o in self._pending.items() if tp in owned
        }
        self._pending.clear()
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance moved partitions away: their next owner reads those records again
            # (at-least-once); keeping the offsets would only fail again.
            log.warning("offsets not committed (%s); those records will be read again", exc)

    def close(self) -> None:
        """Commit what was handled and leave the group."""
        try:
            self.commit()
        finally:
            self.consumer.close(autocommit=False)

    def __enter__(self) -> OutputReader[R]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else load_settings()


def iter_alerts(
    group_id: str, settings: Settings | None = None, **options: Any
) -> OutputReader[ChurnAlert]:
    """Churn alerts (``churn-alerts``) for a consumer group; options as ``OutputReader``."""
    s = _settings(settings)
    return OutputReader(s.alerts_topic, ChurnAlert, group_id=group_id, settings=s, **options)


def iter_scores(
    group_id: str, settings: Settings | None = None, **options: Any
) -> OutputReader[UserScore]:
    """User scores (``user-scores``)."""
    s = _settings(settings)
    return OutputReader(s.scores_topic, UserScore, group_id=group_id, settings=s, **options)


def iter_segment_changes(
    group_id: str, settings: Settings | None = None, **options: Any
) -> OutputReader[SegmentChange]:
    """Segment and lifecycle changes (``segment-changes``)."""
    s = _settings(settings)
    return OutputReader(s.segments_topic, SegmentChange, group_id=group_id, settings=s, **options)


def iter_dead_letters(
    group_id: str, settings: Settings | None = None, **options: Any
) -> OutputReader[DeadLetter]:
    """Dead-lettered input (``user-events-dlq``)."""
    s = _settings(settings)
    return OutputReader(s.dlq_topic, DeadLetter, group_id=group_id, settings=s, **options)
