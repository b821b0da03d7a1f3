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
from streamscore.core.inputs import (
    CURRENT_INPUTS,
    FEATURE_SCHEMA,
    MODEL_INPUTS,
    InputSchema,
    named,
)
from streamscore.core.models import SUMMARY_INPUTS, model_version
from streamscore.core.scorer import Scorer
from streamscore.core.snapshots import Snapshot
from streamscore.core.state import MIN_READER, STATE_FORMAT, UserState
from streamscore.core.trainer import Trainer
from streamscore.core.values import LabelKind, PopulationSample, ScoringConfig, TrainingExample
from streamscore.errors import NewerFormatError, StoredFormatError
from streamscore.wiring import in_process_scorer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# The configuration the fixtures were written with (make_fixtures.py beside each).
FIXTURE_CONFIG = ScoringConfig(churn_horizon_days=7, value_horizon_days=14, snapshot_period_days=1)


def _states(version: int) -> dict[str, bytes]:
    lines = (FIXTURES / f"state_v{version}" / "states.jsonl").read_bytes().splitlines()
    rows = [orjson.loads(line) for line in lines]
    return {r["user_id"]: base64.b64decode(r["raw"]) for r in rows}


STORED = {v: _states(v) for v in (2, 3)}
EXPECTED: dict[int, dict[str, dict[str, Any]]] = {
    v: orjson.loads((FIXTURES / f"state_v{v}" / "expected.json").read_bytes()) for v in (2, 3)
}
V2 = STORED[2]
CASES = [(v, user) for v in (2, 3) for user in sorted(EXPECTED[v])]
# Fields a v4 state has that older formats did not store, and what the upgrade fills in.
NEW_FEATURES = (
    "visits_final",
    "last_final_event_ms",
    "recent_visits",
    "purchase_occasions_final",
    "last_browse_ms",
)


def _fields(state: UserState, like: dict[str, Any]) -> dict[str, Any]:
    """A state's values in the shape of ``like`` (an expected.json entry)."""
    snapshot_fields = (
        [k for k in like["snapshots"][0] if k not in ("churn_x", "value_x")]
        if (like["snapshots"])
        else []
    )
    return {
        "partition": state.partition,
        "offset": state.offset,
        "recent_ids": state.recent_ids,
        "features": {k: getattr(state.features, k) for k in like["features"]},
        "snapshots": [{k: getattr(s, k) for k in snapshot_fields} for s in state.snapshots],
        "last_snapshot_ms": state.last_snapshot_ms,
        "alert": {"active": state.alert.active, "last_alert_ms": state.alert.last_alert_ms},
        "segment": state.segment,
        "lifecycle": state.lifecycle,
        "reactivated_ms": state.reactivated_ms,
        "rescore_step": state.rescore_step,
        "last_score": list(state.last_score),
    }


def test_the_fixtures_cover_what_a_state_can_hold() -> None:
    for version in (2, 3):
        rows = EXPECTED[version].values()
        assert len(STORED[version]) == len(rows) >= 6
        assert any(r["alert"]["active"] for r in rows)
        assert {"churned", "reactivated"} <= {r["lifecycle"] for r in rows}
        assert any(
            s["churn_learnt"] and not s["value_learnt"] for r in rows for s in r["snapshots"]
        )
        assert any(s["returned"] and s["spend"] for r in rows for s in r["snapshots"])
    assert {orjson.loads(raw)[0] for raw in V2.values()} == {2}
    assert {orjson.loads(raw)["v"] for raw in STORED[3].values()} == {3}
    assert len({r["partition"] for r in EXPECTED[2].values()}) > 1


@pytest.mark.parametrize(("version", "user"), CASES)
def test_an_older_state_upgrades_to_what_its_version_read(version: int, user: str) -> None:
    expected = EXPECTED[version][user]
    state = UserState.from_bytes(user, STORED[version][user])
    got = _fields(state, expected)
    for name, value in got.items():
        want = expected[name]
        if name == "snapshots" and want:
            # Made by models of another input set: their generation names no model version
            # of this lineage any more.
            want = [{**{k: v for k, v in s.items() if k in value[0]}} for s in want]
            for snap in want:
                if "model_generation" in snap:
                    snap["model_generation"] = None
        assert value == want, (user, name)
    # The snapshots' inputs were derived features the current models do not take: the BTYD
    # summary cannot be derived from them (NaN), so those labels are validated, not learnt.
    summary = [MODEL_INPUTS.index(n) for n in SUMMARY_INPUTS]
    assert all(math.isnan(s.churn_x[i]) for s in state.snapshots for i in summary)
    # What v4 added, filled in from what the state knew (see state._v3_to_v4).
    old = expected["features"]
    f = state.features
    assert f.visits_final == (max(old["sessions"], 1) if old["events"] else 0)
    assert f.last_final_event_ms == old["last_seen_ms"] and f.recent_visits == []
    assert f.purchase_occasions == old["purchases"]
    assert f.last_browse_ms == (
        old["last_session_ms"]
        if old["sessions"]
        else old["last_seen_ms"]
        if old["events"] > old["purchases"]
        else 0
    )
    assert state.next_snapshot_ms == 0  # set by the scorer when it next sees the user
    if version == 2:
        assert all(s.model_generation is None for s in state.snapshots)  # v2 did not record it


@pytest.mark.parametrize(("version", "user"), CASES)
def test_an_upgraded_state_is_written_in_the_current_format_and_reads_the_same(
    version: int, user: str
) -> None:
    upgraded = UserState.from_bytes(user, STORED[version][user])
    raw = upgraded.to_bytes()
    stored = orjson.loads(raw)
    assert stored["v"] == STATE_FORMAT and stored.get("r", stored["v"]) == MIN_READER
    assert len(stored["f"]) == len(STORED_FIELDS[FEATURES_LAYOUT])
    again = UserState.from_bytes(user, raw)
    like = EXPECTED[version][user]
    assert _fields(again, like) == _fields(upgraded, like)
    assert again.features == upgraded.features
    assert again.to_bytes() == raw


def test_an_upgraded_user_rejoins_the_snapshot_grid_when_next_advanced() -> None:
    scorer, _ = in_process_scorer(FIXTURE_CONFIG)
    user = "u000001"
    state = UserState.from_bytes(user, STORED[3][user])
    since = max(state.last_snapshot_ms, state.features.last_seen_ms)
    scorer.advance(state, since, 0)
    assert since < state.next_snapshot_ms <= since + 86_400_000  # the next daily grid time


def _current(user: str = "u000038") -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(UserState.from_bytes(user, V2[user]).to_bytes())
    return out


def test_what_a_newer_compatible_writer_added_is_kept_and_written_back() -> None:
    newer = _current()
    newer.update({"v": STATE_FORMAT + 1, "r": MIN_READER, "wl": {"n": 3}})
    newer["f"] = [*newer["f"], 7, [0.5]]  # two features appended by the newer layout
    state = UserState.from_bytes("u000038", orjson.dumps(newer))
    like = EXPECTED[2]["u000038"]
    assert _fields(state, like) == _fields(UserState.from_bytes("u000038", V2["u000038"]), like)
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
    # The next version drops "tickets" from the inputs and adds "wishlist_rate": the stored
    # snapshots are remapped by name, and the new input is marked as not derivable.
    monkeypatch.setitem(inputs_module.EARLIER_SCHEMAS, FEATURE_SCHEMA, CURRENT_INPUTS)
    churn = {k: v for k, v in CURRENT_INPUTS.churn.items() if k != "tickets"}
    new = InputSchema({**churn, "wishlist_rate": False}, CURRENT_INPUTS.value)
    scorer, _ = in_process_scorer(FIXTURE_CONFIG)
    state = UserState(user_id="u1")
    day = 86_400_000
    from streamscore.core.events import Event, EventType

    t0 = 1_767_225_600_000
    scorer.apply_events(
        state, [(0, 1, Event(event_id="e", user_id="u1", type=EventType.SUPPORT_TICKET, ts=t0))], 0
    )
    scorer.advance(state, t0 + 3 * day, 0)
    assert state.snapshots
    before = [dict(zip(CURRENT_INPUTS.churn, s.churn_x, strict=True)) for s in state.snapshots]
    again = UserState.from_bytes("u1", state.to_bytes(), new)
    for snap, old in zip(again.snapshots, before, strict=True):
        assert len(snap.churn_x) == len(new.churn)
        for name, value in zip(new.churn, snap.churn_x, strict=True):
            if name == "wishlist_rate":
                assert math.isnan(value)
            else:
                assert value == pytest.approx(old[name]), name
        example = named(new.churn, snap.churn_x)
        assert "wishlist_rate" not in example and "tickets" not in example
    # Saved again, they are stored for the new input set and read back without loss.
    back = UserState.from_bytes("u1", again.to_bytes(new), new)
    assert [s.churn_x[:3] for s in back.snapshots] == [s.churn_x[:3] for s in again.snapshots]


class Keep:
    """A learner that keeps the examples it is handed."""

    def __init__(self) -> None:
        self.examples: list[TrainingExample] = []

    def learn(self, example: TrainingExample) -> None:
        self.examples.append(example)

    def observe(self, sample: PopulationSample) -> None:
        return None

    def wants(self, key_hash: int) -> bool:
        return False

    def observe_customer(self, observation: object) -> None:
        return None


def test_a_new_snapshot_records_the_model_generation_that_made_its_prediction() -> None:
    trainer = Trainer()
    trainer.models.generation = 41
    keep = Keep()
    scorer = Scorer(FIXTURE_CONFIG, trainer, keep)
    state = UserState.from_bytes("u000038", V2["u000038"])
    scorer._take_snapshot(state, state.features.last_seen_ms + 86_400_000, 1.0)
    newest = state.snapshots[-1]
    assert newest.model_generation == 41
    again = UserState.from_bytes("u000038", state.to_bytes())
    assert [s.model_generation for s in again.snapshots] == [None] * 8 + [41]
    scorer.advance(again, newest.t_ms + 30 * 86_400_000, 0)
    mine = [e for e in keep.examples if e.snapshot_ms == newest.t_ms]
    assert {e.kind for e in mine} == {LabelKind.CHURN, LabelKind.VALUE}
    assert {e.model_version for e in mine} == {model_version(41)} == {trainer.models.version}
    upgraded = {snap["t_ms"] for snap in EXPECTED[2]["u000038"]["snapshots"]}
    old = [e for e in keep.examples if e.snapshot_ms in upgraded]
    assert old and {e.model_version for e in old} == {None}  # v2 did not record it


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"not json", "is not JSON"),
        (b'{"no": "version"}', "not a streamscore state"),
        (orjson.dumps([1, "x"]), "format v1, older than any"),
        (orjson.dumps({"v": STATE_FORMAT, "p": 0}), "is corrupt"),
        (orjson.dumps({"v": 3, "p": 0}), "cannot be upgraded"),
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
