"""Signed model checkpoints (issue 5, item 4): ``core.checkpoint`` and ``ModelCheckpoints``.

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
from streamscore.core.models import Models
from streamscore.core.trainer import Trainer
from streamscore.errors import CheckpointError, CheckpointTooNew, ConfigError, TransientError
from streamscore.model_checkpoints import BLOB, ModelCheckpoints

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


# -- ModelCheckpoints ------------------------------------------------------------------------------


def settings(**kw: Any) -> Settings:
    return Settings(metrics_port=0, **kw)


def checkpoints(store: MemoryStateStore, **kw: Any) -> ModelCheckpoints:
    s = settings(**kw)
    return ModelCheckpoints(s, store, Trainer(Models(s.model_params())))


def saved_by(store: MemoryStateStore, **kw: Any) -> ModelCheckpoints:
    k = checkpoints(store, **kw)
    k.maybe_save({0: 5, 1: 9})  # interval not passed: remembers the offsets only
    k.save()
    return k


def test_checkpoints_saves_a_signed_checkpoint_with_offsets_and_versions() -> None:
    store = MemoryStateStore()
    k = saved_by(store, checkpoint_key="secret")
    raw = store.get_blob(BLOB)
    assert raw is not None
    ckpt = checkpoint.load(raw, {"k1": b"secret"})
    h = ckpt.header
    assert h["key_id"] == "k1"
    assert h["offsets"] == {"0": 5, "1": 9}
    assert h["model_version"] == k.trainer.models.version
    assert h["feature_schema"] == FEATURE_SCHEMA
    for lib in ("river", "kafka-python", "python", "streamscore"):
        assert isinstance(h[lib], str) and h[lib], lib
    assert set(ckpt.state) == {"models", "rfm"}


def test_checkpoints_restores_models_and_the_offsets_they_reflect() -> None:
    store = MemoryStateStore()
    before = saved_by(store, checkpoint_key="secret")
    after = checkpoints(store, checkpoint_key="secret")
    assert after.restore() is True
    assert after.trainer.models.version == before.trainer.models.version
    # A restarted process that only reads partition 1 still checkpoints partition 0's offset.
    after.maybe_save({1: 20})
    after.save()
    raw = store.get_blob(BLOB)
    assert raw is not None
    assert checkpoint.load(raw, {"k1": b"secret"}).header["offsets"] == {"0": 5, "1": 20}


def test_checkpoints_without_a_key_saves_nothing() -> None:
    store = MemoryStateStore()
    saved_by(store)
    assert store.get_blob(BLOB) is None


def test_no_checkpoint_starts_fresh() -> None:
    assert checkpoints(MemoryStateStore(), checkpoint_key="secret").restore() is False


def test_a_checkpoint_without_a_configured_key_is_a_config_error() -> None:
    store = MemoryStateStore()
    saved_by(store, checkpoint_key="secret")
    with pytest.raises(ConfigError, match="STREAMSCORE_CHECKPOINT_KEY is not set"):
        checkpoints(store).restore()


def _tamper(store: MemoryStateStore) -> None:
    raw = store.get_blob(BLOB)
    assert raw is not None
    store.put_blob(BLOB, raw[:-1] + bytes([raw[-1] ^ 0xFF]))


def test_tampered_checkpoint_fails_by_default_with_a_clear_message() -> None:
    store = MemoryStateStore()
    saved_by(store, checkpoint_key="secret")
    _tamper(store)
    k = checkpoints(store, checkpoint_key="secret")
    with pytest.raises(CheckpointError) as info:
        k.restore()
    message = str(info.value)
    assert "signature does not match" in message
    assert "STREAMSCORE_ON_BAD_CHECKPOINT=fresh" in message


def test_tampered_checkpoint_with_on_bad_fresh_starts_fresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStateStore()
    before = saved_by(store, checkpoint_key="secret")
    before.trainer.models.generation += 5
    before.save()
    _tamper(store)
    k = checkpoints(store, checkpoint_key="secret", on_bad_checkpoint="fresh")
    fresh_version = k.trainer.models.version
    assert k.restore() is False
    assert k.trainer.models.version == fresh_version != before.trainer.models.version
    assert "starting with fresh models" in caplog.text


def test_unknown_key_id_fails_or_starts_fresh_as_configured() -> None:
    store = MemoryStateStore()
    saved_by(store, checkpoint_key="secret", checkpoint_key_id="k7")
    with pytest.raises(CheckpointError, match="key id 'k7'"):
        checkpoints(store, checkpoint_key="secret").restore()
    assert checkpoints(store, checkpoint_key="secret", on_bad_checkpoint="fresh").restore() is False


def test_rotation_restores_under_the_old_key_and_saves_under_the_new() -> None:
    store = MemoryStateStore()
    saved_by(store, checkpoint_key="old-secret", checkpoint_key_id="k1")
    rotated = checkpoints(
        store,
        checkpoint_key="new-secret",
        checkpoint_key_id="k2",
        checkpoint_old_keys={"k1": "old-secret"},
    )
    assert rotated.restore() is True
    rotated.save()
    raw = store.get_blob(BLOB)
    assert raw is not None
    assert checkpoint.load(raw, {"k2": b"new-secret"}).header["key_id"] == "k2"
    with pytest.raises(CheckpointError):
        checkpoint.load(raw, {"k1": b"old-secret"})


def test_a_checkpoint_of_another_feature_schema_starts_fresh() -> None:
    store = MemoryStateStore()
    trainer = Trainer()
    header = {"feature_schema": "something-else", "offsets": {}}
    raw = checkpoint.dump(
        {"models": trainer.models, "rfm": trainer.rfm}, key_id="k1", key=b"secret", header=header
    )
    store.put_blob(BLOB, raw)
    assert checkpoints(store, checkpoint_key="secret").restore() is False


class _FlakyStore(MemoryStateStore):
    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def put_blob(self, name: str, data: bytes) -> None:
        if self.failures:
            self.failures -= 1
            raise TransientError("Redis saving blob 'models' failed: connection refused")
        super().put_blob(name, data)


def test_a_store_hiccup_during_a_periodic_checkpoint_does_not_stop_the_scorer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _FlakyStore()
    k = checkpoints(store, checkpoint_key="secret", checkpoint_interval_seconds=0.001)
    k.last_saved -= 1
    k.maybe_save({0: 1})  # fails, logs, carries on
    assert store.get_blob(BLOB) is None
    assert "model checkpoint failed" in caplog.text
    k.last_saved -= 1
    k.maybe_save({0: 2})
    assert store.get_blob(BLOB) is not None


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
    assert (ckpt.header["format"], ckpt.header["min_reader"]) == (2, 2)
    assert ckpt.header["offsets"] == want["offsets"]
    assert ckpt.header["model_version"] == want["model_version"]
    assert ckpt.header["feature_schema"] != FEATURE_SCHEMA
    for row in want["rfm"]:
        assert list(ckpt.state["rfm"].scores(*row["probe"])) == row["scores"]


def test_a_checkpoint_of_other_model_inputs_starts_fresh_models_and_is_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    blob, want = _fixture()
    store = MemoryStateStore()
    store.put_blob(BLOB, blob)
    k = checkpoints(store, checkpoint_key=want["key"])
    with caplog.at_level("WARNING"):
        assert k.restore() is False
    assert "made for other model inputs" in caplog.text
    assert k.trainer.models.churn_learnt == 0
    k.save()
    raw = store.get_blob(BLOB)
    assert raw is not None
    again = checkpoint.load(raw, {"k1": want["key"].encode()})
    assert again.stored_format == checkpoint.FORMAT
    assert again.header["feature_schema"] == FEATURE_SCHEMA


def test_a_checkpoint_that_predicts_other_horizons_is_not_restored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStateStore()
    k = checkpoints(store, checkpoint_key="secret")
    k.save()
    other = checkpoints(store, checkpoint_key="secret", churn_horizon_days=30)
    with caplog.at_level("WARNING"):
        assert other.restore() is False
    assert "a horizon or churn_activity changed" in caplog.text
    same = checkpoints(store, checkpoint_key="secret")
    assert same.restore() is True


def _signed_newer(state: Any, key: bytes = KEY) -> bytes:
    """A checkpoint as a version with checkpoint format 3 (readers of 3 and later) writes it."""
    payload = pickle.dumps(state)
    header: dict[str, Any] = {
        **HEADER,
        "format": 3,
        "min_reader": 3,
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
    assert "checkpoint format v3" in message and "reads up to v2" in message
    assert "rolling upgrade" in message


def test_restoring_a_newer_checkpoint_fails_clearly_or_starts_fresh() -> None:
    store = MemoryStateStore()
    store.put_blob(BLOB, _signed_newer(STATE, b"secret"))
    with pytest.raises(CheckpointTooNew, match="STREAMSCORE_ON_BAD_CHECKPOINT=fresh"):
        checkpoints(store, checkpoint_key="secret").restore()
    assert checkpoints(store, checkpoint_key="secret", on_bad_checkpoint="fresh").restore() is False


def test_an_older_version_never_overwrites_a_newer_checkpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStateStore()
    newer = _signed_newer(STATE, b"secret")
    store.put_blob(BLOB, newer)
    checkpoints(store, checkpoint_key="secret").save()
    assert store.get_blob(BLOB) == newer
    assert "newer than this streamscore's v2" in caplog.text
