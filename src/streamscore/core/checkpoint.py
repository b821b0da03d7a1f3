"""Signed model checkpoints.

A checkpoint is a pickle, and unpickling runs code: so the bytes are signed with HMAC-SHA256
under a named key, and the signature is checked before anything is unpickled. Key ids let a
key be rotated: new checkpoints use the current key, old ones still verify under the old key
for as long as it is configured.

Layout: ``MAGIC`` · header length (4 bytes, big endian) · header JSON · payload. The HMAC
covers the header (without the signature) and the payload.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import struct
from dataclasses import dataclass
from typing import Any

import orjson

from streamscore.errors import CheckpointError

MAGIC = b"STREAMSCORE-CKPT\x01"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a verified checkpoint holds."""

    header: dict[str, Any]
    state: Any


def _mac(key: bytes, header: dict[str, Any], payload: bytes) -> str:
    body = orjson.dumps(
        {k: v for k, v in header.items() if k != "hmac"}, option=orjson.OPT_SORT_KEYS
    )
    return hmac.new(key, body + b"\x00" + payload, hashlib.sha256).hexdigest()


def dump(state: Any, *, key_id: str, key: bytes, header: dict[str, Any]) -> bytes:
    """Pickle ``state`` and sign it under ``key_id``."""
    payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    head = {**header, "key_id": key_id, "payload_sha256": hashlib.sha256(payload).hexdigest()}
    head["hmac"] = _mac(key, head, payload)
    raw_head = orjson.dumps(head)
    return MAGIC + struct.pack(">I", len(raw_head)) + raw_head + payload


def load(blob: bytes, keys: dict[str, bytes]) -> Checkpoint:
    """Verify and unpickle; ``CheckpointError`` for anything unsigned, unknown or tampered."""
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
    return Checkpoint(header, pickle.loads(payload))
