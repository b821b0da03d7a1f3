"""Pseudonymous state: a user id stored only as a keyed token, and sealed where it must come back.

With ``pseudonym_key`` set, the state store never sees a user id: keys and due-queue members
are ``token(id)``, a truncated HMAC-SHA256 of it; the scorer still needs the id of a user it
rescores without an event of theirs (outputs carry the real id), so the state carries the id
sealed with a deterministic authenticated encryption (the SIV construction: the token is the
synthetic IV, the id is XORed with an HMAC-SHA256 keystream derived from it, and opening
checks that the id found hashes to the token again). Two keys are derived from the one
setting, one per purpose. Only HMAC-SHA256 from the standard library is used.
"""

from __future__ import annotations

import hashlib
import hmac

TOKEN_BYTES = 16


class Pseudonyms:
    """Tokens and sealed ids under one secret key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a pseudonym key needs at least 16 bytes")
        self._token_key = hmac.new(key, b"streamscore pseudonym token", hashlib.sha256).digest()
        self._seal_key = hmac.new(key, b"streamscore pseudonym seal", hashlib.sha256).digest()

    def _mac(self, uid: bytes) -> bytes:
        return hmac.new(self._token_key, uid, hashlib.sha256).digest()[:TOKEN_BYTES]

    def token(self, user_id: str) -> str:
        """The id as stored: 32 hex characters, the same for the same id and key."""
        return self._mac(user_id.encode()).hex()

    def _stream(self, iv: bytes, n: int) -> bytes:
        out = b""
        block = 0
        while len(out) < n:
            out += hmac.new(self._seal_key, iv + block.to_bytes(4, "big"), hashlib.sha256).digest()
            block += 1
        return out[:n]

    def seal(self, user_id: str) -> bytes:
        """The id encrypted under its own token (which comes first)."""
        data = user_id.encode()
        iv = self._mac(data)
        return iv + bytes(a ^ b for a, b in zip(data, self._stream(iv, len(data)), strict=True))

    def open(self, sealed: bytes) -> str:
        """The id back; ``ValueError`` for bytes not sealed with this key."""
        iv, body = sealed[:TOKEN_BYTES], sealed[TOKEN_BYTES:]
        data = bytes(a ^ b for a, b in zip(body, self._stream(iv, len(body)), strict=True))
        if len(iv) != TOKEN_BYTES or not hmac.compare_digest(self._mac(data), iv):
            raise ValueError("a sealed user id that this pseudonym key did not seal")
        return data.decode()
