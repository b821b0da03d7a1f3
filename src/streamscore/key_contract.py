"""The input's key contract: a record is keyed by its event's ``user_id``.

Per-partition event time (watermarks, labels, silences) and one owner per user's state both
rest on every event of a user reaching the same partition, which Kafka's partitioner does
for records keyed by the user id. A record with a null key or another key lands wherever its
producer's partitioner puts it: two processes could then update one user at once (the last
save wins, and the other's events are lost although committed), and the user's events would
be judged against several independent watermarks.

So such a record is never applied where it arrives. ``on_key_mismatch`` says what happens:

- ``dead_letter`` (default): a ``key_mismatch`` dead letter that names both keys.
- ``rekey``: the record is produced again to the input topic, byte for byte, keyed by its
  user id, with a ``REKEYED_FROM_HEADER`` naming where it came from; the copy is applied on
  the user's partition like any record. Copies are at-least-once (a crash after the flush
  and before the commit produces the batch's copies again), so the user's state remembers
  the highest origin offset applied per origin partition (``UserState.rekeyed``): a second
  copy is recognised however many records lie between the two.
"""

from __future__ import annotations

from typing import Literal

from streamscore.core.events import Event
from streamscore.core.records import REKEYED_FROM_HEADER, TOPIC_EVENTS, record_id
from streamscore.core.values import Output
from streamscore.errors import InvalidEvent
from streamscore.ports import SourceRecord

KeyPolicy = Literal["dead_letter", "rekey"]
KEY_MISMATCH = "key_mismatch"
_SHOWN_KEY_BYTES = 64


def mismatch(rec: SourceRecord, event: Event) -> InvalidEvent | None:
    """Why ``rec`` breaks the key contract, or None when it is keyed by its user id."""
    expected = event.user_id.encode()
    if rec.key == expected:
        return None
    shown = "null" if rec.key is None else _show(rec.key)
    return InvalidEvent(
        KEY_MISMATCH,
        f"record key is {shown} but its user_id is {event.user_id!r}: records must be keyed by "
        "user_id so that all of a user's events reach one partition; fix the producer, or set "
        "STREAMSCORE_ON_KEY_MISMATCH=rekey to have them re-keyed",
    )


def _show(key: bytes) -> str:
    text = repr(key[:_SHOWN_KEY_BYTES])
    more = len(key) > _SHOWN_KEY_BYTES
    return text + (f" (first {_SHOWN_KEY_BYTES} of {len(key)} bytes)" if more else "")


def rekeyed_copy(rec: SourceRecord, event: Event) -> Output:
    """The record again, for the input topic, keyed by its user id and marked with its origin.

    Its ``id`` is derived from the origin, so the copies a crash produces twice share it.
    """
    origin = f"{rec.partition}:{rec.offset}"
    return Output(
        TOPIC_EVENTS,
        event.user_id,
        {
            "id": record_id("rekey", rec.topic, rec.partition, rec.offset),
            "user_id": event.user_id,
            "rekeyed_from": {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset},
        },
        raw=rec.value,
        headers=((REKEYED_FROM_HEADER, origin.encode()),),
    )
