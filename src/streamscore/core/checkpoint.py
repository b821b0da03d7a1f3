"""Signed model checkpoints.

A checkpoint is a pickle, and unpickling runs code: so the bytes are signed with HMAC-SHA256
under a named key, and the signature is checked before anything is unpickled. Key ids let a
key be rotated: new checkpoints use the current key, old ones still verify under the old key
for as long as it is configured.

Layout: ``MAGIC`` · header length (4 bytes, big endian) · header JSON · payload. The HMAC
covers the header (without the signature) and the payload.

The header is read by name and says its format: ``format`` (what wrote it) and
``min_reader`` (the oldest format that can read it; absent: ``format``). The same rules as
for user states (``core/state.py``): a checkpoint only a newer version can read is refused
with ``CheckpointTooNew`` before anything is unpickled; an older one is upgraded on load by
``UPGRADES``. Format 1 (before versioned checkpoints) had no version fields; format 2 was
each process's own checkpoint of models and RFM quantiles (``models``); format 3 is a
published version of the one lineage: it adds the trainer's own state (validation figures,
drift detectors, recent ids; pickled apart, so a scorer unpickles only the models) and the
``training-examples`` offset it reflects.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from streamscore.errors import CheckpointError, CheckpointTooNew

MAGIC = b"STREAMSCORE-CKPT\x01"
FORMAT = 3
MIN_READER = 3


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a verified checkpoint holds, upgraded to the current format."""

    header: dict[str, Any]
    state: Any
    stored_format: int  # the format it was written with


def _v1_to_v2(header: dict[str, Any], state: Any) -> tuple[dict[str, Any], Any]:
    """v1: the same header and payload, without the version fields."""
    return {**header, "format": 2, "min_reader": 2}, state


def _v2_to_v3(header: dict[str, Any], state: Any) -> tuple[dict[str, Any], Any]:
    """v2: one process's models and RFM quantiles, from before training-examples existed: a
    lineage without a trainer's state, at the topic's start, under its models' generation."""
    models = state["models"] if isinstance(state, dict) else None
    generation = getattr(models, "generation", 0)
    return (
        {**header, "format": 3, "min_reader": 3, "version": generation, "training_offset": 0},
        {**state, "trainer": None},
    )


UPGRADES: dict[int, Callable[[dict[str, Any], Any], tuple[dict[str, Any], Any]]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
}


def versions(header: dict[str, Any]) -> tuple[int, int]:
    """(written with, oldest reader) of a checkpoint header."""
    written = header.get("format", 1)
    needs = header.get("min_reader", written)
    if not isinstance(written, int) or not isinstance(needs, int):
        raise CheckpointError("model checkpoint header has no readable format; refusing it")
    return written, needs


def peek_header(blob: bytes) -> dict[str, Any] | None:
    """The header of a checkpoint, unverified (to decide whether to overwrite it)."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
        return None
    (n,) = struct.unpack(">I", blob[len(MAGIC) : len(MAGIC) + 4])
    try:
        header = orjson.loads(blob[len(MAGIC) + 4 : len(MAGIC) + 4 + n])
    except orjson.JSONDecodeError:
        return None
    return header if isinstance(header, dict) else None


def _mac(key: bytes, header: dict[str, Any], payload: bytes) -> str:
    body = orjson.dumps(
        {k: v for k, v in header.items() if k != "hmac"}, option=orjson.OPT_SORT_KEYS
    )
    return hmac.new(key, body + b"\x00" + payload, hashlib.sha256).hexdigest()


def dump(state: Any, *, key_id: str, key: bytes, header: dict[str, Any]) -> bytes:
    """Pickle ``state`` and sign it under ``key_id``."""
    payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    head = {
        **header,
        "format": FORMAT,
        "min_reader": MIN_READER,
        "key_id": key_id,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    head["hmac"] = _mac(key, head, payload)
    raw_head = orjson.dumps(head)
    return MAGIC + struct.pack(">I", len(raw_head)) + raw_head + payload


def load(blob: bytes, keys: dict[str, bytes]) -> Checkpoint:
    """Verify, check the format, unpickle and upgrade.

    ``CheckpointError`` for anything unsigned, unknown or tampered; ``CheckpointTooNew``
    (before unpickling) for a checkpoint only a newer version can read.
    """
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
        raise CheckpointError(
            "model checkpoint is not a signed streamscore checkpoint; refusing it"
        )
    (n,) = struct.unpack(">I", blob[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        header = orjson.loads(blob[start : start + n])
    except orjson.JSONDecodeError:
        raise CheckpointError("model checkpoint header is corrupt; refusing it") from None
    payload = blob[start + n :]
    key_id = header.get("key_id")
    signature = header.get("hmac")
    if not isinstance(signature, str) or not isinstance(key_id, str):
        raise CheckpointError("model checkpoint carries no signature; refusing it")
    key = keys.get(key_id)
    if key is None:
        raise CheckpointError(
            f"model checkpoint is signed with key id {key_id!r}, which is not configured "
            "(STREAMSCORE_CHECKPOINT_KEY_ID / STREAMSCORE_CHECKPOINT_OLD_KEYS); refusing it"
        )
    if not hmac.compare_digest(_mac(key, header, payload), signature):
        raise CheckpointError(
            f"model checkpoint signature does not match under key {key_id!r}: it was altered "
            "or signed with another key; refusing it"
        )
    written, needs = versions(header)
    if needs > FORMAT:
        raise CheckpointTooNew(
            f"model checkpoint was written by checkpoint format v{written} and needs a reader "
            f"of v{needs} or later; this streamscore reads up to v{FORMAT}. A newer streamscore "
            "wrote it: finish the rolling upgrade or roll it back"
        )
    state = pickle.loads(payload)
    version = written
    while version < FORMAT:
        step = UPGRADES.get(version)
        if step is None:
            raise CheckpointError(f"model checkpoint format v{version} is no longer readable")
        header, state = step(header, state)
        version = header["format"]
    return Checkpoint(header, state, written)
