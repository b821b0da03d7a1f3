"""Signed model checkpoints (issue 5, item 4): ``core.checkpoint``, and the published model
versions of ``LineageStore`` and ``ModelFollower`` (issue 12).

A checkpoint is a pickle, and unpickling runs code, so nothing may be unpickled before its
HMAC-SHA256 signature has been checked under a configured key id.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamscore.adapters.memory import MemoryStateStore
from streamscore.config import Settings
from streamscore.core import checkpoint
from streamscore.core.inputs import FEATURE_SCHEMA
from streamscore.core.lineage import ServedLineage
from streamscore.core.models import Models
from streamscore.core.segments import RfmScorer
from streamscore.core.trainer import Trainer
from streamscore.core.training_records import RecentIds
from streamscore.errors import CheckpointError, CheckpointTooNew, ConfigError, TransientError
from streamscore.model_checkpoints import (
    BLOB,
    HEAD,
    LEGACY_BLOB,
    Head,
    LineageStore,
    ModelFollower,
)
from streamscore.training import LineageFencedError, Restored

KEY = b"k1-secret"
KEYS = {"k1": KEY}
HEADER = {"model_version": "m-g1", "offsets": {"0": 10, "3": 7}, "river": "0.26.1"}
STATE = {"weights": [0.5, -1.25], "n": 3}


def blob(state: Any = STATE, *, key_id: str = "k1", key: bytes = KEY) -> bytes:
    return checkpoint.dump(state, key_id=key_id, key=key, header=dict(HEADER))


def split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    start = len(checkpoint.MAGIC) + 4
    (n,) = struct.unpack(">I", raw[len(checkpoint.MAGIC) : start])
    return orjson.loads(raw[start : start + n]), raw[start + n :]


def join(header: dict[str, Any], payload: bytes) -> bytes:
    head = orjson.dumps(header)
    return checkpoint.MAGIC + struct.pack(">I", len(head)) + head + payload


def refused(raw: bytes, keys: dict[str, bytes] = KEYS) -> str:
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(raw, keys)
    return str(info.value)


# -- core.checkpoint --------------------------------------------------------------------------


def test_round_trip_keeps_state_and_header() -> None:
    ckpt = checkpoint.load(blob(), KEYS)
    assert ckpt.state == STATE
    assert ckpt.header["model_version"] == "m-g1"
    assert ckpt.header["offsets"] == {"0": 10, "3": 7}
    assert ckpt.header["key_id"] == "k1"
    assert len(ckpt.header["hmac"]) == 64  # hex SHA-256


def test_any_flipped_payload_byte_is_refused() -> None:
    raw = blob()
    header, payload = split(raw)
    for i in range(0, len(payload), max(1, len(payload) // 16)):
        bad = bytearray(payload)
        bad[i] ^= 0x01
        assert "signature does not match" in refused(join(header, bytes(bad)))


def test_truncated_or_extended_payload_is_refused() -> None:
    header, payload = split(blob())
    assert "signature does not match" in refused(join(header, payload[:-1]))
    assert "signature does not match" in refused(join(header, payload + b"\x00"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_version", "m-g999"),
        ("offsets", {"0": 11, "3": 7}),
        ("river", "0.0.1"),
        ("payload_sha256", "0" * 64),
        ("injected", True),
    ],
)
def test_a_tampered_header_is_refused(field: str, value: Any) -> None:
    header, payload = split(blob())
    header[field] = value
    assert "signature does not match under key 'k1'" in refused(join(header, payload))


def test_a_forged_signature_is_refused() -> None:
    header, payload = split(blob())
    header["hmac"] = "f" * 64
    assert "signature does not match" in refused(join(header, payload))


def test_signed_with_another_key_under_the_same_id_is_refused() -> None:
    message = refused(blob(key=b"someone else's key"))
    assert "altered or signed with another key" in message


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"STREAMSCORE",
        pickle.dumps({"models": "a plain pickle"}),
        b"\x80\x04garbage",
        checkpoint.MAGIC,  # magic only, no header length
    ],
)
def test_unsigned_or_foreign_blobs_are_refused(raw: bytes) -> None:
    assert "not a signed streamscore checkpoint" in refused(raw)


def test_corrupt_header_is_refused() -> None:
    raw = checkpoint.MAGIC + struct.pack(">I", 5) + b"{nope" + b"payload"
    assert "header is corrupt" in refused(raw)


def test_header_without_signature_is_refused() -> None:
    header, payload = split(blob())
    del header["hmac"]
    assert "carries no signature" in refused(join(header, payload))
    header, payload = split(blob())
    del header["key_id"]
    assert "carries no signature" in refused(join(header, payload))


def test_unknown_key_id_is_refused_and_named() -> None:
    message = refused(blob(key_id="k9", key=b"k9-secret"))
    assert "key id 'k9'" in message
    assert "STREAMSCORE_CHECKPOINT_OLD_KEYS" in message


UNPICKLED: list[str] = []


def _side_effect(what: str) -> str:
    UNPICKLED.append(what)
    return what


class _Boom:
    """Runs code when unpickled: it must never be, unless signed with our key."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_side_effect, ("unpickled!",))


def test_nothing_is_unpickled_before_the_signature_is_checked() -> None:
    UNPICKLED.clear()
    evil = blob(_Boom(), key=b"attacker key")
    refused(evil)
    header, _ = split(blob())
    refused(join(header, pickle.dumps(_Boom())))
    assert UNPICKLED == []
    checkpoint.load(blob(_Boom()), KEYS)  # the same payload under our key does run
    assert UNPICKLED == ["unpickled!"]


def test_key_rotation_old_key_verifies_new_one_signs() -> None:
    old = blob(key_id="k1", key=KEY)
    rotated = {"k1": KEY, "k2": b"k2-secret"}
    assert checkpoint.load(old, rotated).state == STATE
    new = blob(key_id="k2", key=b"k2-secret")
    assert checkpoint.load(new, rotated).header["key_id"] == "k2"
    assert "key id 'k2'" in refused(new, KEYS)  # a process that only knows k1


# -- LineageStore: the published versions -----------------------------------------------------


def settings(**kw: Any) -> Settings:
    return Settings(metrics_port=0, **kw)


def lineage(store: MemoryStateStore, **kw: Any) -> LineageStore:
    return LineageStore(settings(**kw), store)


def trainer_of(**kw: Any) -> Trainer:
    return Trainer(Models(settings(**kw).model_params()))


def published_by(
    store: MemoryStateStore, version: int = 1, offset: int = 17, **kw: Any
) -> tuple[LineageStore, Trainer]:
    """A trainer that resumed (nothing there yet, or what is there) and published a version."""
    k = lineage(store, **kw)
    restored = k.restore()
    trainer = restored.trainer if restored else trainer_of(**kw)
    trainer.models.generation = version
    window = RecentIds(10)
    window.add("ab" * 16)
    k.publish(trainer, window, offset, version)
    return k, trainer


def assert_fresh(restored: Restored | None, after: int) -> None:
    """A published version that cannot be used: fresh models learn the topic again from its
    start, and the versions they publish are numbered after the refused one."""
    assert restored is not None
    assert (restored.next_offset, restored.version, restored.window) == (0, after, None)
    assert restored.trainer.models.churn_learnt == restored.trainer.models.value_learnt == 0


def test_a_published_version_is_signed_with_its_offset_version_and_quality() -> None:
    store = MemoryStateStore()
    k, trainer = published_by(store, checkpoint_key="secret")
    raw = store.get_blob(BLOB)
    assert raw is not None
    ckpt = checkpoint.load(raw, {"k1": b"secret"})
    h = ckpt.header
    assert h["key_id"] == "k1"
    assert (h["version"], h["training_offset"], h["writer"]) == (1, 17, k.writer)
    assert h["model_version"] == trainer.models.version
    assert h["feature_schema"] == FEATURE_SCHEMA
    assert h["lineage"]["labels_learnt"] == {"churn": 0, "value": 0}
    for lib in ("river", "kafka-python", "python", "streamscore"):
        assert isinstance(h[lib], str) and h[lib], lib
    assert set(ckpt.state) == {"models", "rfm", "trainer"}
    # The head scorers poll says the same in a few bytes.
    raw_head = store.get_blob(HEAD)
    assert raw_head is not None and len(raw_head) < 200
    assert Head.parse(raw_head) == Head(1, k.writer, h["created_unix"], 17, checkpoint.MIN_READER)


def test_restore_resumes_the_lineage_at_its_offset_with_its_recent_ids() -> None:
    store = MemoryStateStore()
    _, before = published_by(store, version=3, offset=40, checkpoint_key="secret")
    before.quality.churn.update(0.3, True)  # after the publish: not in it
    restored = lineage(store, checkpoint_key="secret").restore()
    assert restored is not None
    assert (restored.version, restored.next_offset) == (3, 40)
    assert restored.trainer.models.version == before.models.version
    assert restored.trainer.quality.churn.count == 0
    assert restored.window is not None and not restored.window.add("ab" * 16)  # remembered


def test_publishing_without_a_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="STREAMSCORE_CHECKPOINT_KEY is not set"):
        published_by(MemoryStateStore())


def test_nothing_published_restores_nothing() -> None:
    assert lineage(MemoryStateStore(), checkpoint_key="secret").restore() is None


def test_a_version_without_a_configured_key_is_a_config_error() -> None:
    store = MemoryStateStore()
    published_by(store, checkpoint_key="secret")
    with pytest.raises(ConfigError, match="STREAMSCORE_CHECKPOINT_KEY is not set"):
        lineage(store).restore()


def test_a_publish_after_another_trainer_published_is_fenced() -> None:
    # Two trainers at once (one lost its group session without noticing): the second writer
    # since a resume gives way, so the published lineage never forks.
    store = MemoryStateStore()
    a, trainer = published_by(store, version=1, checkpoint_key="secret")
    b = lineage(store, checkpoint_key="secret")
    resumed = b.restore()
    assert resumed is not None
    b.publish(resumed.trainer, RecentIds(10), 30, 2)
    with pytest.raises(LineageFencedError, match=f"published by {b.writer}"):
        a.publish(trainer, RecentIds(10), 25, 2)
    head = Head.parse(store.get_blob(HEAD) or b"")
    assert head is not None and (head.version, head.writer, head.offset) == (2, b.writer, 30)


def _tamper(store: MemoryStateStore) -> None:
    raw = store.get_blob(BLOB)
    assert raw is not None
    store.put_blob(BLOB, raw[:-1] + bytes([raw[-1] ^ 0xFF]))


def test_a_tampered_version_fails_by_default_with_a_clear_message() -> None:
    store = MemoryStateStore()
    published_by(store, checkpoint_key="secret")
    _tamper(store)
    with pytest.raises(CheckpointError) as info:
        lineage(store, checkpoint_key="secret").restore()
    message = str(info.value)
    assert "signature does not match" in message
    assert "STREAMSCORE_ON_BAD_CHECKPOINT=fresh" in message


def test_a_tampered_version_with_on_bad_fresh_starts_fresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStateStore()
    published_by(store, checkpoint_key="secret")
    _tamper(store)
    assert_fresh(lineage(store, checkpoint_key="secret", on_bad_checkpoint="fresh").restore(), 1)
    assert "starting with fresh models" in caplog.text


def test_unknown_key_id_fails_or_starts_fresh_as_configured() -> None:
    store = MemoryStateStore()
    published_by(store, checkpoint_key="secret", checkpoint_key_id="k7")
    with pytest.raises(CheckpointError, match="key id 'k7'"):
        lineage(store, checkpoint_key="secret").restore()
    assert_fresh(lineage(store, checkpoint_key="secret", on_bad_checkpoint="fresh").restore(), 1)


def test_rotation_restores_under_the_old_key_and_publishes_under_the_new() -> None:
    store = MemoryStateStore()
    published_by(store, checkpoint_key="old-secret", checkpoint_key_id="k1")
    rotated = lineage(
        store,
        checkpoint_key="new-secret",
        checkpoint_key_id="k2",
        checkpoint_old_keys={"k1": "old-secret"},
    )
    resumed = rotated.restore()
    assert resumed is not None
    rotated.publish(resumed.trainer, RecentIds(10), 20, 2)
    raw = store.get_blob(BLOB)
    assert raw is not None
    assert checkpoint.load(raw, {"k2": b"new-secret"}).header["key_id"] == "k2"
    with pytest.raises(CheckpointError):
        checkpoint.load(raw, {"k1": b"old-secret"})


def test_a_version_of_another_feature_schema_starts_fresh() -> None:
    store = MemoryStateStore()
    trainer = Trainer()
    header = {"feature_schema": "something-else", "version": 1, "training_offset": 0}
    raw = checkpoint.dump(
        {"models": trainer.models, "rfm": trainer.rfm, "trainer": None},
        key_id="k1",
        key=b"secret",
        header=header,
    )
    store.put_blob(BLOB, raw)
    assert lineage(store, checkpoint_key="secret").restore() is None


def _legacy(trainer: Trainer, key: bytes = b"secret") -> bytes:
    """The ``models`` checkpoint a process of the previous release wrote (format 2)."""
    payload = pickle.dumps({"models": trainer.models, "rfm": trainer.rfm})
    header: dict[str, Any] = {
        "model_version": trainer.models.version,
        "feature_schema": FEATURE_SCHEMA,
        "offsets": {"0": 5},
        "predicts": {"churn_horizon_days": 14.0, "value_horizon_days": 30.0,
                     "purchase_activity": False},
        "format": 2,
        "min_reader": 2,
        "key_id": "k1",
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }  # fmt: skip
    header["hmac"] = checkpoint._mac(key, header, payload)
    return join(header, payload)


def test_an_earlier_releases_checkpoint_starts_the_lineage_at_the_topics_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Upgrading keeps what the models had learnt: the first trainer resumes them, reading
    # training-examples (new with this release) from its start.
    old = Trainer()
    old.models.generation = 9
    old.models.churn.learnt = 123
    store = MemoryStateStore()
    store.put_blob(LEGACY_BLOB, _legacy(old))
    with caplog.at_level("INFO"):
        restored = lineage(store, checkpoint_key="secret").restore()
    assert restored is not None
    assert (restored.version, restored.next_offset, restored.window) == (9, 0, None)
    assert restored.trainer.models.churn_learnt == 123
    assert "an earlier streamscore's checkpoint" in caplog.text


class _FlakyStore(MemoryStateStore):
    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    def get_blob(self, name: str) -> bytes | None:
        if self.failures:
            self.failures -= 1
            raise TransientError(f"Redis loading blob {name!r} failed: connection refused")
        return super().get_blob(name)


def test_a_scorer_follows_new_versions_and_rides_out_a_store_hiccup(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _FlakyStore()
    served = ServedLineage(Models(), RfmScorer())
    now = [0.0]
    follower = ModelFollower(lineage(store, checkpoint_key="secret"), served, 10.0, lambda: now[0])
    assert follower.refresh(force=True) is False  # nothing published yet: fresh models
    assert (served.version, served.created_unix) == (0, 0.0)
    k, trainer = published_by(store, version=1, checkpoint_key="secret")
    now[0] = 5.0
    assert follower.refresh() is False, "checked again before model_staleness_seconds"
    now[0] = 10.0
    assert follower.refresh() is True
    assert (served.version, served.writer) == (1, k.writer)
    assert served.models.version == trainer.models.version
    trainer.models.generation = 2
    k.publish(trainer, RecentIds(10), 30, 2)
    store.failures = 1
    now[0] = 20.0
    assert follower.refresh() is False
    assert "cannot check for a newer model version" in caplog.text
    now[0] = 30.0
    assert follower.refresh() is True
    assert served.version == 2
    now[0] = 40.0
    assert follower.refresh() is False, "same head: nothing loaded"


# -- formats: a v1 checkpoint upgrades, a newer one is refused ------------------------

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoint_v1"


def _fixture() -> tuple[bytes, dict[str, Any]]:
    return (FIXTURE / "models.ckpt").read_bytes(), orjson.loads(
        (FIXTURE / "expected.json").read_bytes()
    )


def test_a_v1_checkpoint_loads_upgraded() -> None:
    # The v1 fixture holds the models of the v3 input set (scaled linear models); this
    # version's models take other inputs, so it reads the checkpoint (format upgraded,
    # header and RFM quantiles intact) but does not restore those models (next test).
    blob, want = _fixture()
    assert "format" not in split(blob)[0], "the fixture is a v1 checkpoint"
    ckpt = checkpoint.load(blob, {want["key_id"]: want["key"].encode()})
    assert ckpt.stored_format == 1
    assert (ckpt.header["format"], ckpt.header["min_reader"]) == (3, 3)
    assert ckpt.header["offsets"] == want["offsets"]
    assert ckpt.header["model_version"] == want["model_version"]
    assert ckpt.header["feature_schema"] != FEATURE_SCHEMA
    assert ckpt.header["training_offset"] == 0
    assert ckpt.state["trainer"] is None
    for row in want["rfm"]:
        assert list(ckpt.state["rfm"].scores(*row["probe"])) == row["scores"]


def test_a_checkpoint_of_other_model_inputs_starts_fresh_models_and_is_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    blob, want = _fixture()
    store = MemoryStateStore()
    store.put_blob(LEGACY_BLOB, blob)
    k = lineage(store, checkpoint_key=want["key"])
    with caplog.at_level("WARNING"):
        assert k.restore() is None
    assert "made for other model inputs" in caplog.text
    k.publish(Trainer(), RecentIds(10), 0, 1)
    raw = store.get_blob(BLOB)
    assert raw is not None
    again = checkpoint.load(raw, {"k1": want["key"].encode()})
    assert again.stored_format == checkpoint.FORMAT
    assert again.header["feature_schema"] == FEATURE_SCHEMA


def test_a_version_that_predicts_other_horizons_is_not_restored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStateStore()
    published_by(store, checkpoint_key="secret")
    other = lineage(store, checkpoint_key="secret", churn_horizon_days=30)
    with caplog.at_level("WARNING"):
        assert_fresh(other.restore(), 1)
    assert "a horizon or churn_activity changed" in caplog.text
    assert lineage(store, checkpoint_key="secret").restore() is not None


def _signed_newer(state: Any, key: bytes = KEY) -> bytes:
    """A checkpoint as a version with checkpoint format 4 (readers of 4 and later) writes it."""
    payload = pickle.dumps(state)
    header: dict[str, Any] = {
        **HEADER,
        "format": 4,
        "min_reader": 4,
        "key_id": "k1",
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    header["hmac"] = checkpoint._mac(key, header, payload)
    return join(header, payload)


def test_a_checkpoint_only_a_newer_version_reads_is_refused_before_unpickling() -> None:
    UNPICKLED.clear()
    with pytest.raises(CheckpointTooNew) as info:
        checkpoint.load(_signed_newer(_Boom()), KEYS)
    assert UNPICKLED == []
    message = str(info.value)
    assert "checkpoint format v4" in message and "reads up to v3" in message
    assert "rolling upgrade" in message


def test_restoring_a_newer_version_fails_clearly_or_starts_fresh() -> None:
    store = MemoryStateStore()
    store.put_blob(BLOB, _signed_newer(STATE, b"secret"))
    with pytest.raises(CheckpointTooNew, match="STREAMSCORE_ON_BAD_CHECKPOINT=fresh"):
        lineage(store, checkpoint_key="secret").restore()
    assert lineage(store, checkpoint_key="secret", on_bad_checkpoint="fresh").restore() is None


def test_an_older_version_never_overwrites_a_newer_one(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStateStore()
    newer = _signed_newer(STATE, b"secret")
    store.put_blob(BLOB, newer)
    store.put_blob(HEAD, Head(5, "newer:1:x", 1.0, 99, 4).to_bytes())
    k = lineage(store, checkpoint_key="secret", on_bad_checkpoint="fresh")
    assert_fresh(k.restore(), 5)
    k.publish(Trainer(), RecentIds(10), 0, 6)
    assert store.get_blob(BLOB) == newer
    assert "newer than this streamscore's v3" in caplog.text
