"""The stored user state: every older format upgrades, a newer one is refused clearly.

``tests/fixtures/state_v2/`` holds nine states written by the code before versioned state
(state format v2, positional; commit 1dab7da) and, beside them, what that version's reader
read from each one, field by field (``expected.json``; ``make_fixtures.py`` says how both
were made). The upgraded states are checked against those values, not against anything the
current reader wrote.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamscore.core import inputs as inputs_module
from streamscore.core.features import FEATURES_LAYOUT, STORED_FIELDS
from streamscore.core.inputs import CURRENT_INPUTS, FEATURE_SCHEMA, InputSchema, named
from streamscore.core.models import model_version
from streamscore.core.scorer import Scorer
from streamscore.core.snapshots import Snapshot
from streamscore.core.state import MIN_READER, STATE_FORMAT, UserState
from streamscore.core.trainer import Trainer
from streamscore.core.values import LabelKind, PopulationSample, ScoringConfig, TrainingExample
from streamscore.errors import NewerFormatError, StoredFormatError
from streamscore.wiring import in_process_scorer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "state_v2"
# The configuration the fixtures were written with (make_fixtures.py).
FIXTURE_CONFIG = ScoringConfig(churn_horizon_days=7, value_horizon_days=14, snapshot_period_days=1)


def _v2_states() -> dict[str, bytes]:
    rows = [orjson.loads(line) for line in (FIXTURES / "states.jsonl").read_bytes().splitlines()]
    return {r["user_id"]: base64.b64decode(r["raw"]) for r in rows}


V2 = _v2_states()
EXPECTED: dict[str, dict[str, Any]] = orjson.loads((FIXTURES / "expected.json").read_bytes())


SNAPSHOT_FIELDS = tuple(EXPECTED["u000038"]["snapshots"][0])  # t_ms, churn_x, ... value_learnt


def _fields(state: UserState) -> dict[str, Any]:
    """A state's values in the shape of expected.json."""
    return {
        "partition": state.partition,
        "offset": state.offset,
        "recent_ids": state.recent_ids,
        "features": state.features.to_dict(),
        "snapshots": [{k: getattr(s, k) for k in SNAPSHOT_FIELDS} for s in state.snapshots],
        "last_snapshot_ms": state.last_snapshot_ms,
        "alert": {"active": state.alert.active, "last_alert_ms": state.alert.last_alert_ms},
        "segment": state.segment,
        "lifecycle": state.lifecycle,
        "reactivated_ms": state.reactivated_ms,
        "rescore_step": state.rescore_step,
        "last_score": list(state.last_score),
    }


def test_the_fixtures_cover_what_a_state_can_hold() -> None:
    rows = EXPECTED.values()
    assert len(V2) == len(EXPECTED) == 9
    assert {orjson.loads(raw)[0] for raw in V2.values()} == {2}
    assert any(r["alert"]["active"] for r in rows)
    assert {"churned", "reactivated", "retained"} <= {r["lifecycle"] for r in rows}
    assert any(s["churn_learnt"] and not s["value_learnt"] for r in rows for s in r["snapshots"])
    assert any(s["returned"] and s["spend"] for r in rows for s in r["snapshots"])
    assert max(len(r["snapshots"]) for r in rows) == 8
    assert len({r["partition"] for r in rows}) > 1


@pytest.mark.parametrize("user", sorted(EXPECTED))
def test_a_v2_state_upgrades_to_what_v2_read(user: str) -> None:
    state = UserState.from_bytes(user, V2[user])
    want = {k: v for k, v in EXPECTED[user].items() if k in _fields(state)}
    got = _fields(state)
    for name, value in want.items():
        assert got[name] == value, (user, name)
    scorer, _ = in_process_scorer(FIXTURE_CONFIG)
    assert scorer.due_ms(state) == EXPECTED[user]["due_ms"]
    assert all(s.model_generation is None for s in state.snapshots)  # v2 did not record it


@pytest.mark.parametrize("user", sorted(EXPECTED))
def test_an_upgraded_state_is_written_in_the_current_format_and_reads_the_same(user: str) -> None:
    upgraded = UserState.from_bytes(user, V2[user])
    raw = upgraded.to_bytes()
    stored = orjson.loads(raw)
    assert stored["v"] == STATE_FORMAT and stored.get("r", stored["v"]) == MIN_READER
    assert len(stored["f"]) == len(STORED_FIELDS[FEATURES_LAYOUT])
    again = UserState.from_bytes(user, raw)
    assert _fields(again) == _fields(upgraded)
    assert again.to_bytes() == raw


def _current(user: str = "u000038") -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(UserState.from_bytes(user, V2[user]).to_bytes())
    return out


def test_what_a_newer_compatible_writer_added_is_kept_and_written_back() -> None:
    newer = _current()
    newer.update({"v": STATE_FORMAT + 1, "r": MIN_READER, "wl": {"n": 3}})
    newer["f"] = [*newer["f"], 7, [0.5]]  # two features appended by the newer layout
    state = UserState.from_bytes("u000038", orjson.dumps(newer))
    assert _fields(state) == _fields(UserState.from_bytes("u000038", V2["u000038"]))
    back = orjson.loads(state.to_bytes())
    assert back["wl"] == {"n": 3}
    assert back["f"][-2:] == [7, [0.5]]
    assert back["v"] == STATE_FORMAT, "written by this version, carrying the newer fields"


def test_a_state_only_a_newer_version_can_read_is_refused_naming_both_versions() -> None:
    newer = {**_current(), "v": STATE_FORMAT + 1, "r": STATE_FORMAT + 1}
    with pytest.raises(NewerFormatError) as info:
        UserState.from_bytes("u000038", orjson.dumps(newer))
    message = str(info.value)
    assert f"stored format v{STATE_FORMAT + 1}" in message
    assert f"reads up to v{STATE_FORMAT}" in message
    assert "finish the rolling upgrade" in message and "roll the new version back" in message
    assert "'u000038'" in message


def test_snapshots_of_an_input_set_this_version_lacks_are_refused_not_dropped() -> None:
    # A newer version that changed the inputs but forgot to raise MIN_READER.
    state = UserState.from_bytes("u000038", V2["u000038"])
    other = InputSchema({**CURRENT_INPUTS.churn, "wishlist_rate": True}, CURRENT_INPUTS.value)
    with pytest.raises(NewerFormatError, match=other.id):
        UserState.from_bytes("u000038", _with_schema(state, other), CURRENT_INPUTS)


def _with_schema(state: UserState, schema: InputSchema) -> bytes:
    """The state's bytes as a writer with input set ``schema`` would store them."""
    from streamscore.core.snapshots import pack_block

    for snap in state.snapshots:
        snap.remapped(CURRENT_INPUTS, schema)
    stored = orjson.loads(state.to_bytes())
    stored["sn"] = pack_block(state.snapshots, schema)
    return orjson.dumps(stored)


def test_pending_snapshots_survive_a_change_of_the_model_inputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The next version drops "tickets" from the churn inputs and adds "wishlist_rate": the
    # stored snapshots are remapped by name, and the new input is marked as not derivable.
    monkeypatch.setitem(inputs_module.EARLIER_SCHEMAS, FEATURE_SCHEMA, CURRENT_INPUTS)
    churn = {k: v for k, v in CURRENT_INPUTS.churn.items() if k != "tickets"}
    new = InputSchema({**churn, "wishlist_rate": True}, CURRENT_INPUTS.value)
    user = "u000038"
    state = UserState.from_bytes(user, V2[user], new)
    want = EXPECTED[user]["snapshots"]
    assert len(state.snapshots) == len(want) == 8
    old_churn = list(CURRENT_INPUTS.churn)
    for snap, expected in zip(state.snapshots, want, strict=True):
        by_name = dict(zip(old_churn, expected["churn_x"], strict=True))
        assert len(snap.churn_x) == len(new.churn)
        for name, value in zip(new.churn, snap.churn_x, strict=True):
            if name == "wishlist_rate":
                assert math.isnan(value)
            else:
                assert value == by_name[name], name
        assert snap.value_x == expected["value_x"]
        assert (snap.churn_p, snap.t_ms) == (expected["churn_p"], expected["t_ms"])
        example = named(new.churn, snap.churn_x)
        assert "wishlist_rate" not in example and "tickets" not in example
    # Saved again, they are stored for the new input set and read back without loss.
    again = UserState.from_bytes(user, state.to_bytes(new), new)
    assert [s.churn_x[:3] for s in again.snapshots] == [s.churn_x[:3] for s in state.snapshots]


class Keep:
    """A learner that keeps the examples it is handed."""

    def __init__(self) -> None:
        self.examples: list[TrainingExample] = []

    def learn(self, example: TrainingExample) -> None:
        self.examples.append(example)

    def observe(self, sample: PopulationSample) -> None:
        return None


def test_a_new_snapshot_records_the_model_generation_that_made_its_prediction() -> None:
    trainer = Trainer()
    trainer.models.generation = 41
    keep = Keep()
    scorer = Scorer(FIXTURE_CONFIG, trainer, keep)
    state = UserState.from_bytes("u000038", V2["u000038"])
    scorer._take_snapshot(state, state.features.last_seen_ms + 86_400_000)
    newest = state.snapshots[-1]
    assert newest.model_generation == 41
    again = UserState.from_bytes("u000038", state.to_bytes())
    assert [s.model_generation for s in again.snapshots] == [None] * 8 + [41]
    scorer.advance(again, newest.t_ms + 30 * 86_400_000, 0)
    mine = [e for e in keep.examples if e.snapshot_ms == newest.t_ms]
    assert {e.kind for e in mine} == {LabelKind.CHURN, LabelKind.VALUE}
    assert {e.model_version for e in mine} == {model_version(41)} == {trainer.models.version}
    upgraded = {snap["t_ms"] for snap in EXPECTED["u000038"]["snapshots"]}
    old = [e for e in keep.examples if e.snapshot_ms in upgraded]
    assert old and {e.model_version for e in old} == {None}  # v2 did not record it


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"not json", "is not JSON"),
        (b'{"no": "version"}', "not a streamscore state"),
        (orjson.dumps([1, "x"]), "format v1, older than any"),
        (orjson.dumps({"v": 3, "p": 0}), "is corrupt"),
    ],
)
def test_an_unreadable_state_is_a_clear_error(raw: bytes, why: str) -> None:
    with pytest.raises(StoredFormatError, match=why):
        UserState.from_bytes("u1", raw)


def test_a_snapshot_block_cut_short_is_a_clear_error() -> None:
    stored = _current()
    stored["sn"] = base64.b64encode(base64.b64decode(stored["sn"])[:-3]).decode()
    with pytest.raises(StoredFormatError, match="cut short"):
        UserState.from_bytes("u000038", orjson.dumps(stored))


def test_snapshot_equality_includes_the_generation() -> None:
    a = Snapshot(0, [0.0], [0.0], 0.5, 0.0, 0.0, model_generation=1)
    b = Snapshot(0, [0.0], [0.0], 0.5, 0.0, 0.0, model_generation=2)
    assert a != b
