"""The JSON Schemas in ``schemas/`` and the records the scorer really builds (DESIGN.md §2–§3)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from streamscore.cli import main
from streamscore.config import load_settings
from streamscore.core.events import Event
from streamscore.core.records import (
    DLQ_RAW_MAX_BYTES,
    OUTPUT_TOPICS,
    SCHEMAS,
    TOPIC_ALERTS,
    TOPIC_DLQ,
    TOPIC_EVENTS,
    TOPIC_SCORES,
    TOPIC_SEGMENTS,
    TOPIC_TRAINING,
    ChurnAlert,
    DeadLetter,
    SegmentChange,
    UserScore,
    dead_letter,
    undeliverable_letter,
)
from streamscore.core.timeutil import parse_rfc3339
from streamscore.embedded import demo
from streamscore.schemas import render, schema_documents
from streamscore.simulator import ShopSimulator, SimulationConfig

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
MODELS: dict[str, type[BaseModel]] = {
    TOPIC_SCORES: UserScore,
    TOPIC_ALERTS: ChurnAlert,
    TOPIC_SEGMENTS: SegmentChange,
    TOPIC_DLQ: DeadLetter,
}
SIM = SimulationConfig(users=80, days=40, bad_fraction=0.03, duplicate_fraction=0.02)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STREAMSCORE_"):
            monkeypatch.delenv(name)


# -- checked-in schema files --------------------------------------------------------------------


def test_every_topic_has_a_schema() -> None:
    docs = schema_documents()
    topics = (TOPIC_EVENTS, *OUTPUT_TOPICS, TOPIC_TRAINING)
    assert set(docs) == {f"{t}.schema.json" for t in topics}
    assert set(SCHEMAS) == set(topics)


@pytest.mark.parametrize("name", sorted(schema_documents()))
def test_checked_in_schema_matches_the_models(name: str) -> None:
    path = SCHEMA_DIR / name
    hint = (
        f"schemas/{name} is out of date with the pydantic models in "
        "streamscore/core/records.py; regenerate with `streamscore schemas` and commit"
    )
    assert path.is_file(), hint
    assert path.read_bytes() == render(schema_documents()[name]), hint


def test_no_stray_schema_files() -> None:
    assert {p.name for p in SCHEMA_DIR.glob("*.json")} == set(schema_documents())


def test_schemas_command_writes_the_same_files(tmp_path: Path, capsys: Any) -> None:
    assert main(["schemas", "--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(schema_documents())
    for name in written:
        assert (tmp_path / name).read_bytes() == (SCHEMA_DIR / name).read_bytes()
    assert "wrote" in capsys.readouterr().out


def test_schema_documents_are_draft_2020_12_with_ids() -> None:
    for name, doc in schema_documents().items():
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert doc["$id"].endswith("/" + name)
        if name == f"{TOPIC_TRAINING}.schema.json":  # one of three kinds of record, by "type"
            assert doc["discriminator"]["propertyName"] == "type" and len(doc["oneOf"]) == 3
        else:
            assert doc["type"] == "object"


def test_event_schema_states_the_contract() -> None:
    doc = schema_documents()[f"{TOPIC_EVENTS}.schema.json"]
    props = doc["properties"]
    assert set(doc["required"]) == {"event_id", "user_id", "type", "ts"}
    assert props["event_id"]["maxLength"] == 128 and props["event_id"]["minLength"] == 1
    ts_forms = {alt.get("type") for alt in props["ts"]["anyOf"]}
    assert ts_forms == {"string", "integer"}
    types = doc["$defs"]["EventType"]["enum"]
    assert sorted(types) == sorted(
        [
            "signup",
            "session_start",
            "page_view",
            "add_to_cart",
            "remove_from_cart",
            "purchase",
            "refund",
            "support_ticket",
        ]
    )


def test_output_schemas_require_every_documented_field() -> None:
    docs = schema_documents()
    required = {t: set(docs[f"{t}.schema.json"]["required"]) for t in OUTPUT_TOPICS}
    assert required[TOPIC_SCORES] >= {
        "id",
        "user_id",
        "as_of",
        "churn_probability",
        "predicted_value",
        "value_horizon_days",
        "segment",
        "lifecycle_stage",
        "model_version",
        "scored_at",
    }
    assert required[TOPIC_ALERTS] >= {
        "id",
        "user_id",
        "as_of",
        "churn_probability",
        "predicted_value",
        "segment",
        "reasons",
        "recommended_action",
        "model_version",
    }
    assert required[TOPIC_SEGMENTS] >= {
        "id",
        "user_id",
        "as_of",
        "previous",
        "current",
        "lifecycle_previous",
        "lifecycle_current",
    }
    assert required[TOPIC_DLQ] >= {
        "id",
        "error_type",
        "error",
        "source",
        "raw",
        "raw_size",
        "raw_sha256",
        "raw_truncated",
        "received_at",
    }


def test_a_dead_letter_is_bounded_whatever_it_is_about() -> None:
    """DESIGN.md section 3: raw truncated so the record always fits the broker's limit."""
    value = b'{"event_id":"e1","pad":"' + b"x" * 2_000_000 + b'"}'
    letter = dead_letter(
        topic=TOPIC_EVENTS,
        partition=3,
        offset=7,
        raw=value,
        error_type="too_large",
        error="why " * 100_000,
        now_ms=0,
    )
    DeadLetter.model_validate(letter)
    assert len(orjson.dumps(letter)) < 40_000
    assert base64.b64decode(str(letter["raw"])) == value[:DLQ_RAW_MAX_BYTES]
    assert letter["raw_size"] == len(value)
    assert letter["raw_sha256"] == hashlib.sha256(value).hexdigest()
    assert letter["raw_truncated"] is True
    assert len(str(letter["error"])) <= 2000
    small = dead_letter(
        topic=TOPIC_EVENTS, partition=0, offset=1, raw=b"{}", error_type="x", error="y", now_ms=0
    )
    assert small["raw_truncated"] is False and base64.b64decode(str(small["raw"])) == b"{}"


def test_undeliverable_letters_name_the_refused_output() -> None:
    inner = dead_letter(
        topic=TOPIC_EVENTS, partition=1, offset=9, raw=b"z" * 20_000, error_type="too_large",
        error="record is 20000 bytes", now_ms=0,
    )  # fmt: skip
    encoded = orjson.dumps(inner)
    about_dlq = undeliverable_letter(
        topic="prod-dlq", value=inner, key=None, encoded=encoded, reason="boom", now_ms=0,
        of_dead_letter=True,
    )  # fmt: skip
    DeadLetter.model_validate(about_dlq)
    assert about_dlq["source"] == inner["source"]
    assert about_dlq["raw"] == "" and about_dlq["raw_size"] == 20_000
    assert about_dlq["raw_sha256"] == inner["raw_sha256"]
    undelivered = about_dlq["undelivered"]
    assert isinstance(undelivered, dict)
    assert undelivered["id"] == inner["id"] and undelivered["size"] == len(encoded)
    score = {"id": "s1", "user_id": "u1"}
    about_score = undeliverable_letter(
        topic=TOPIC_SCORES, value=score, key="u1", encoded=b"{}", reason="no", now_ms=0,
        of_dead_letter=False,
    )  # fmt: skip
    DeadLetter.model_validate(about_score)
    assert about_score["source"] is None and about_score["error_type"] == "undeliverable_output"
    assert "user-scores refused record s1" in str(about_score["error"])
    again = undeliverable_letter(
        topic=TOPIC_SCORES, value=score, key="u1", encoded=b"{}", reason="no", now_ms=5,
        of_dead_letter=False,
    )  # fmt: skip
    assert again["id"] == about_score["id"]  # derived from the output: consumers deduplicate


# -- records from a real run --------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("STREAMSCORE_")}
    try:
        out = tmp_path_factory.mktemp("demo")
        demo(load_settings(), SIM, out, show_progress=False)
    finally:
        os.environ.update(saved)
    records: dict[str, list[dict[str, Any]]] = {}
    for topic in OUTPUT_TOPICS:
        path = out / f"{topic}.jsonl"
        assert path.is_file(), f"no file for topic {topic}"
        records[topic] = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return records


@pytest.mark.parametrize("topic", OUTPUT_TOPICS)
def test_every_record_of_every_topic_validates(
    demo_outputs: dict[str, list[dict[str, Any]]], topic: str
) -> None:
    records = demo_outputs[topic]
    assert records, f"the demo run produced no {topic} records: nothing was checked"
    model = MODELS[topic]
    for record in records:
        model.model_validate(record)  # extra fields are forbidden, required ones checked


@pytest.mark.parametrize("topic", OUTPUT_TOPICS)
def test_record_ids_are_unique_per_topic(
    demo_outputs: dict[str, list[dict[str, Any]]], topic: str
) -> None:
    ids = Counter(r["id"] for r in demo_outputs[topic])
    assert [i for i, n in ids.items() if n > 1] == []


def test_times_are_rfc3339_utc(demo_outputs: dict[str, list[dict[str, Any]]]) -> None:
    for topic, fields in {
        TOPIC_SCORES: ("as_of", "scored_at"),
        TOPIC_ALERTS: ("as_of",),
        TOPIC_SEGMENTS: ("as_of",),
        TOPIC_DLQ: ("received_at",),
    }.items():
        for record in demo_outputs[topic]:
            for f in fields:
                assert record[f].endswith("Z"), (topic, f, record[f])
                parse_rfc3339(record[f])


def test_score_values_are_in_range(demo_outputs: dict[str, list[dict[str, Any]]]) -> None:
    for r in demo_outputs[TOPIC_SCORES]:
        assert 0.0 <= r["churn_probability"] <= 1.0
        assert r["predicted_value"] >= 0.0
        assert r["value_horizon_days"] == 30.0
        assert r["trigger"] in {"event", "silence"}
    triggers = Counter(r["trigger"] for r in demo_outputs[TOPIC_SCORES])
    assert triggers["event"] > 0 and triggers["silence"] > 0


def test_alerts_carry_an_action_and_reasons(
    demo_outputs: dict[str, list[dict[str, Any]]],
) -> None:
    actions = {
        "personal_outreach",
        "vip_discount",
        "discount_offer",
        "reengagement_email",
        "newsletter_nudge",
    }
    for a in demo_outputs[TOPIC_ALERTS]:
        assert a["churn_probability"] >= 0.7
        assert a["recommended_action"] in actions
        assert a["reasons"], f"alert without reasons: {a}"
        for reason in a["reasons"]:
            assert reason["contribution"] > 0


def test_dead_letters_keep_the_raw_bytes(demo_outputs: dict[str, list[dict[str, Any]]]) -> None:
    bad = demo_outputs[TOPIC_DLQ]
    kinds = Counter(r["error_type"] for r in bad)
    assert kinds["invalid_json"] > 0 and kinds["invalid_field"] > 0
    for r in bad:
        try:
            base64.b64decode(r["raw"], validate=True)
        except binascii.Error:  # pragma: no cover - the assertion message is the point
            pytest.fail(f"DLQ raw is not base64: {r['raw']!r}")
        assert r["source"]["topic"] == TOPIC_EVENTS
        assert r["source"]["partition"] == 0
        assert r["error"]


def test_simulated_events_satisfy_the_input_schema() -> None:
    sim = ShopSimulator(SimulationConfig(users=20, days=10))
    n = 0
    for e in sim.events():
        assert isinstance(e, dict)
        Event.model_validate(e)
        n += 1
    assert n > 0


def test_output_timestamps_are_declared_date_time() -> None:
    docs = schema_documents()
    stamps = {
        TOPIC_SCORES: ("as_of", "scored_at"),
        TOPIC_ALERTS: ("as_of",),
        TOPIC_SEGMENTS: ("as_of",),
        TOPIC_DLQ: ("received_at",),
    }
    for topic, fields in stamps.items():
        props = docs[f"{topic}.schema.json"]["properties"]
        for f in fields:
            assert props[f].get("format") == "date-time", (topic, f)
