"""The ``Sink`` contract, run against every sink: memory, files and Kafka.

What the runtime relies on before it saves states and commits offsets: after ``flush``
returns, every record sent before it is delivered, once, in the order sent (per key: Kafka
keeps order within a partition, and a user's records share one). A flush with nothing new
delivers nothing more.
"""

from __future__ import annotations

from typing import Any

from streamscore.core.records import TOPIC_ALERTS, TOPIC_SCORES
from streamscore.core.values import Output

from .conftest import SinkHarness


def _outputs(topic: str, users: int, per_user: int, start: int = 0) -> list[Output]:
    return [
        Output(topic, f"u{u}", {"id": f"{topic}-{u}-{n}", "user_id": f"u{u}", "n": n})
        for n in range(start, start + per_user)
        for u in range(users)
    ]


def _by_user(records: list[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in records:
        out.setdefault(r["user_id"], []).append(r["n"])
    return out


def test_flushed_records_are_delivered_once_in_the_order_sent(sink_harness: SinkHarness) -> None:
    sink = sink_harness.open()
    scores = _outputs(TOPIC_SCORES, users=5, per_user=4)
    alerts = _outputs(TOPIC_ALERTS, users=2, per_user=1)
    sink.send(scores[:7])
    sink.send([*alerts, *scores[7:]])
    sink.flush()
    got = sink_harness.delivered(TOPIC_SCORES, len(scores))
    assert sorted(r["id"] for r in got) == sorted(o.value["id"] for o in scores)
    assert _by_user(got) == {f"u{u}": [0, 1, 2, 3] for u in range(5)}
    assert sink_harness.delivered(TOPIC_ALERTS, len(alerts)) == [o.value for o in alerts]


def test_a_flush_delivers_nothing_twice(sink_harness: SinkHarness) -> None:
    sink = sink_harness.open()
    sink.flush()  # nothing sent: nothing to deliver, nothing to fail
    first = _outputs(TOPIC_SCORES, users=3, per_user=2)
    sink.send(first)
    sink.flush()
    sink.flush()
    later = _outputs(TOPIC_SCORES, users=3, per_user=2, start=2)
    sink.send(later)
    sink.flush()
    got = sink_harness.delivered(TOPIC_SCORES, len(first) + len(later))
    assert len(got) == len(first) + len(later)
    assert _by_user(got) == {f"u{u}": [0, 1, 2, 3] for u in range(3)}
    sink.close()
