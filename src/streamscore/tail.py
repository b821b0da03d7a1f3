"""``streamscore tail TOPIC``: a topic for a person at a terminal, one readable line a record.

It reads without a consumer group (nothing is committed, nobody else's offsets move), from
the end by default or from the oldest record with ``--from-beginning``.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import orjson
from kafka import KafkaConsumer, TopicPartition

from streamscore.config import Settings
from streamscore.core.records import (
    TOPIC_ALERTS,
    TOPIC_DLQ,
    TOPIC_EVENTS,
    TOPIC_SCORES,
    TOPIC_SEGMENTS,
)
from streamscore.errors import ConfigError


def configured_topics(settings: Settings) -> dict[str, str]:
    """Logical topic name → the name configured for it."""
    return {
        TOPIC_EVENTS: settings.input_topic,
        TOPIC_SCORES: settings.scores_topic,
        TOPIC_ALERTS: settings.alerts_topic,
        TOPIC_SEGMENTS: settings.segments_topic,
        TOPIC_DLQ: settings.dlq_topic,
    }


def _money(value: Any) -> str:
    return f"{float(value):,.2f}" if isinstance(value, int | float) else "-"


def line(kind: str | None, raw: bytes | None) -> str:
    """One record as a line: the fields that matter first, in a fixed order per topic."""
    if raw is None:
        return "(tombstone)"
    try:
        r = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"(not JSON) {raw[:120]!r}"
    if not isinstance(r, dict):
        return orjson.dumps(r).decode()
    if kind == TOPIC_ALERTS:
        why = ", ".join(
            f"{x.get('feature')} {x.get('value')}"
            for x in r.get("reasons") or []
            if isinstance(x, dict)
        )
        return (
            f"{r.get('as_of')}  {r.get('user_id')}  ALERT churn {r.get('churn_probability', 0):.2f}"
            f"  value {_money(r.get('predicted_value'))}  {r.get('segment')}"
            f"  -> {r.get('recommended_action')}  because {why or '-'}"
        )
    if kind == TOPIC_SCORES:
        return (
            f"{r.get('as_of')}  {r.get('user_id')}  churn {r.get('churn_probability', 0):.2f}"
            f"  value {_money(r.get('predicted_value'))}  {r.get('segment')} /"
            f" {r.get('lifecycle_stage')}  ({r.get('trigger')})"
        )
    if kind == TOPIC_SEGMENTS:
        return (
            f"{r.get('as_of')}  {r.get('user_id')}  {r.get('previous') or '-'} -> "
            f"{r.get('current')}  ({r.get('lifecycle_previous') or '-'} -> "
            f"{r.get('lifecycle_current')})"
        )
    if kind == TOPIC_DLQ:
        src = r.get("source") or {}
        return (
            f"{r.get('received_at')}  {r.get('error_type')}  {src.get('topic')}"
            f"[{src.get('partition')}]@{src.get('offset')}  {r.get('error')}"
        )
    if kind == TOPIC_EVENTS:
        amount = f" {r['amount']}" if "amount" in r else ""
        return f"{r.get('ts')}  {r.get('user_id')}  {r.get('type')}{amount}"
    return orjson.dumps(r).decode()


def tail(
    settings: Settings,
    topic: str,
    *,
    from_beginning: bool = False,
    limit: int | None = None,
    out: TextIO | None = None,
    idle_exit_s: float | None = None,
) -> int:
    """Print records of ``topic`` (a logical or configured name) until ``limit`` or Ctrl-C."""
    from streamscore.adapters.kafka_client import UNREACHABLE, client_config, unreachable_error

    out = out or sys.stdout
    names = configured_topics(settings)
    name = names.get(topic, topic)
    kind = next((k for k, v in names.items() if v == name), None)
    try:
        consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, **client_config(settings))
    except UNREACHABLE as exc:
        raise unreachable_error(settings, exc) from None
    try:
        partitions = consumer.partitions_for_topic(name)
        if not partitions:
            known = ", ".join(sorted(consumer.topics())) or "none"
            raise ConfigError(f"topic {name!r} does not exist (topics: {known})")
        tps = [TopicPartition(name, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if from_beginning:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
        shown = 0
        quiet = 0.0
        while limit is None or shown < limit:
            batches = consumer.poll(timeout_ms=500)
            if not batches:
                quiet += 0.5
                if idle_exit_s is not None and quiet >= idle_exit_s:
                    break
                continue
            quiet = 0.0
            for messages in batches.values():
                for m in messages:
                    if limit is not None and shown >= limit:
                        break
                    out.write(line(kind, m.value) + "\n")
                    shown += 1
            out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0
