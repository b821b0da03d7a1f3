"""JSON Schemas of every topic, generated from the pydantic models (``streamscore schemas``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from streamscore.core.records import SCHEMAS, TOPIC_EVENTS


def schema_documents() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema document, one per topic."""
    docs: dict[str, dict[str, Any]] = {}
    for topic, model in SCHEMAS.items():
        schema = model.model_json_schema(
            mode="validation" if topic == TOPIC_EVENTS else "serialization"
        )
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://streamscore.dev/schemas/{topic}.schema.json",
            **schema,
        }
        docs[f"{topic}.schema.json"] = schema
    return docs


def render(doc: dict[str, Any]) -> bytes:
    """Stable, diff-friendly bytes of one schema document."""
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write_schemas(directory: Path) -> list[Path]:
    """Write every topic's schema into ``directory``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in schema_documents().items():
        path = directory / name
        path.write_bytes(render(doc))
        written.append(path)
    return written
