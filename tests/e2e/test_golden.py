"""Golden replay: a fixed events file through ``streamscore replay``, every output compared
with committed expected files, record by record.

This is the guard for refactorings that must not change behaviour: scores, alerts, segment
changes, dead letters, final scores and the report.json figures must stay exactly what they
were. Wall-clock fields (``scored_at``, ``received_at``, the report's ``seconds`` and
``events_per_second``) are left out of the comparison; everything else must match exactly.

The input (``tests/fixtures/golden/events.jsonl``) was made once with
``streamscore simulate --users 70 --days 50 --seed 11 --bad-fraction 0.002`` and is never
regenerated: it is the fixed point. It is replayed with short horizons, daily snapshots and
small batches (``SETTINGS`` below), so that in 4,119 events the churn model leaves its
warm-up, both models learn, alerts fire and a dozen batches pass.

When a change is *meant* to change outputs (a new feature, another model, a fixed bug),
regenerate the expected files and commit them with the change, saying why they moved:

    REGENERATE_GOLDEN=1 .venv/bin/pytest tests/e2e/test_golden.py
    git diff --stat tests/fixtures/golden/expected/

With ``REGENERATE_GOLDEN=1`` the test rewrites the expected files and fails, so that a
regeneration can never pass silently in CI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamscore.cli import main

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
EVENTS = GOLDEN / "events.jsonl"
EXPECTED = GOLDEN / "expected"
SETTINGS = {
    "STREAMSCORE_BATCH_MAX_RECORDS": "250",
    "STREAMSCORE_SNAPSHOT_PERIOD_DAYS": "1",
}
ARGS = ("--churn-horizon-days", "7", "--value-horizon-days", "14")
RECORD_FILES = (
    "user-scores.jsonl",
    "segment-changes.jsonl",
    "churn-alerts.jsonl",
    "user-events-dlq.jsonl",
    "final_scores.jsonl",
)
WALL_CLOCK_FIELDS = frozenset({"scored_at", "received_at"})
WALL_CLOCK_REPORT_FIELDS = frozenset({"seconds", "events_per_second"})
REGENERATE = os.environ.get("REGENERATE_GOLDEN") == "1"


def _records(path: Path) -> list[bytes]:
    """Each line without its wall-clock fields, re-encoded (field order kept)."""
    out = []
    for line in path.read_bytes().splitlines():
        record = orjson.loads(line)
        out.append(orjson.dumps({k: v for k, v in record.items() if k not in WALL_CLOCK_FIELDS}))
    return out


def _report(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = orjson.loads(path.read_bytes())
    return {k: v for k, v in report.items() if k not in WALL_CLOCK_REPORT_FIELDS}


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("golden")
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("STREAMSCORE_")}
    os.environ.update(SETTINGS)
    try:
        assert main(["replay", str(EVENTS), "--out", str(out), *ARGS]) == 0
    finally:
        for k in SETTINGS:
            del os.environ[k]
        os.environ.update(saved)
    if REGENERATE:
        EXPECTED.mkdir(exist_ok=True)
        for name in RECORD_FILES:
            (EXPECTED / name).write_bytes(b"".join(r + b"\n" for r in _records(out / name)))
        (EXPECTED / "report.json").write_bytes(
            orjson.dumps(_report(out / "report.json"), option=orjson.OPT_INDENT_2) + b"\n"
        )
    return out


@pytest.mark.parametrize("name", RECORD_FILES)
def test_records_are_the_golden_ones(replayed: Path, name: str) -> None:
    assert not REGENERATE, f"REGENERATE_GOLDEN=1: rewrote {EXPECTED}; review and commit it"
    got = _records(replayed / name)
    want = (EXPECTED / name).read_bytes().splitlines()
    assert want, f"{name} is empty: the fixture no longer exercises it"
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        assert g == w, f"{name} line {i + 1} differs:\n got  {g.decode()}\n want {w.decode()}"
    assert len(got) == len(want), f"{name}: {len(got)} records, expected {len(want)}"


def test_report_is_the_golden_one(replayed: Path) -> None:
    assert not REGENERATE, f"REGENERATE_GOLDEN=1: rewrote {EXPECTED}; review and commit it"
    got = _report(replayed / "report.json")
    want = orjson.loads((EXPECTED / "report.json").read_bytes())
    assert got["churn"]["labels"] > 500, "the churn model must leave its warm-up (500 labels)"
    assert got == want
