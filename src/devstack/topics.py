"""The standard topics, named once in ``streamscore.core.records``, and topic admin.

``topic_settings(tag)`` gives one scorer its own copy of the six topics (``<tag>-<name>``),
keyed by the settings that name them, so tests and benchmarks never spell a topic name;
``topic_partitions`` gives each its partition count (training-examples has exactly one).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from devstack.procs import DevstackError
from streamscore.core.records import (
    TOPIC_ALERTS,
    TOPIC_DLQ,
    TOPIC_EVENTS,
    TOPIC_SCORES,
    TOPIC_SEGMENTS,
    TOPIC_TRAINING,
)

# The settings field that names each topic (streamscore.config.Settings).
TOPIC_SETTINGS: dict[str, str] = {
    "input_topic": TOPIC_EVENTS,
    "scores_topic": TOPIC_SCORES,
    "alerts_topic": TOPIC_ALERTS,
    "segments_topic": TOPIC_SEGMENTS,
    "dlq_topic": TOPIC_DLQ,
    "training_topic": TOPIC_TRAINING,
}
STANDARD_TOPICS: tuple[str, ...] = tuple(TOPIC_SETTINGS.values())
# Topics whose partition count is part of their contract, not a choice of scale.
ONE_PARTITION = frozenset({TOPIC_TRAINING})
TOPIC_ALREADY_EXISTS = 36


def topic_settings(tag: str) -> dict[str, str]:
    """The six topic settings of one scorer, each name prefixed with ``tag``."""
    return {setting: f"{tag}-{topic}" for setting, topic in TOPIC_SETTINGS.items()}


def topic_partitions(topics: Mapping[str, str], partitions: int) -> dict[str, int]:
    """Topic name → partitions for topics named by their settings (``topic_settings``):
    ``partitions`` each, but one for training-examples."""
    return {
        name: 1 if TOPIC_SETTINGS.get(setting) in ONE_PARTITION else partitions
        for setting, name in topics.items()
    }


def _admin(client: Mapping[str, Any], timeout_ms: int) -> Any:
    from kafka import KafkaAdminClient

    return KafkaAdminClient(
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
        client_id="streamscore-devstack",
        **client,
    )


def list_topics(client: Mapping[str, Any]) -> dict[str, int]:
    """Every topic but the internal ones, with its partition count."""
    admin = _admin(client, 15_000)
    try:
        return {
            t["name"]: len(t["partitions"])
            for t in admin.describe_topics()
            if not t["name"].startswith("__")
        }
    finally:
        admin.close()


def create_topics(
    client: Mapping[str, Any], wanted: Mapping[str, int], *, timeout_s: float = 30.0
) -> dict[str, int]:
    """Create the missing topics (name → partitions) and wait until every partition has a
    leader. Returns those created; existing ones are left as they are."""
    admin = _admin(client, 15_000)
    try:
        existing = {t["name"]: t for t in admin.describe_topics() if t["error_code"] == 0}
        missing = {n: p for n, p in wanted.items() if n not in existing}
        if missing:
            result = admin.create_topics(
                {n: {"num_partitions": p, "replication_factor": 1} for n, p in missing.items()},
                timeout_ms=15_000,
                raise_errors=False,
            )
            failed = [
                f"{t['name']}: {t.get('error_message') or t['error_code']}"
                for t in result["topics"]
                if t["error_code"] not in (0, TOPIC_ALREADY_EXISTS)  # a race: fine
            ]
            if failed:
                raise DevstackError("could not create topics: " + "; ".join(failed))
        deadline = time.monotonic() + timeout_s
        while True:
            described = {t["name"]: t for t in admin.describe_topics(list(wanted))}
            if all(_led(described.get(n)) for n in wanted):
                return missing
            if time.monotonic() > deadline:
                raise DevstackError(f"topics {sorted(wanted)} have no leaders after {timeout_s}s")
            time.sleep(0.2)
    finally:
        admin.close()


def _led(topic: Mapping[str, Any] | None) -> bool:
    if topic is None or topic.get("error_code") or not topic.get("partitions"):
        return False
    return all(p["leader_id"] >= 0 for p in topic["partitions"])


def delete_topics(client: Mapping[str, Any], names: list[str]) -> None:
    """Delete topics (those that do not exist are ignored)."""
    from kafka.errors import KafkaError

    admin = _admin(client, 15_000)
    try:
        admin.delete_topics(names, timeout_ms=15_000)
    except KafkaError:
        pass
    finally:
        admin.close()
