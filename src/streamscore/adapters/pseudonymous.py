"""A state store that never sees a user id (``pseudonym_key``; ``core/pseudonym.py``).

It wraps any store: the store underneath gets tokens for user ids (its keys and due-queue
members) and state bytes prefixed with the sealed id, so the runtime, which works with real
ids, is unchanged. Due users are the one place a token must become an id again: ``due``
reads their states (one more round trip, only in batches with due users), opens the sealed
ids, and keeps the states for the ``load`` that follows in the same batch. A due token whose
state has expired is handed out as it is, so the runtime's removal of it finds it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Protocol

from streamscore.config import Settings
from streamscore.core.pseudonym import Pseudonyms
from streamscore.errors import ConfigError, StoredFormatError
from streamscore.ports import ErasureStore, StateStore


class _Inner(StateStore, ErasureStore, Protocol):
    def due_count(self) -> int:
        """Users waiting in due queues."""
        ...


class PseudonymousStore:
    """``StateStore`` and ``ErasureStore`` over another one, with tokens for user ids."""

    def __init__(self, inner: _Inner, pseudonyms: Pseudonyms) -> None:
        self.inner = inner
        self.pseudonyms = pseudonyms
        self._fetched: dict[str, bytes] = {}  # states ``due`` read, for the next ``load``
        self._opaque: set[str] = set()  # due tokens without a state, handed out as they are

    # -- ids, tokens and the sealed id in front of each state ---------------------------------

    def _token(self, user_id: str) -> str:
        return user_id if user_id in self._opaque else self.pseudonyms.token(user_id)

    def _wrap(self, user_id: str, state: bytes) -> bytes:
        sealed = self.pseudonyms.seal(user_id)
        return len(sealed).to_bytes(2, "big") + sealed + state

    def _unwrap(self, token: str, blob: bytes) -> tuple[str, bytes]:
        n = int.from_bytes(blob[:2], "big")
        try:
            return self.pseudonyms.open(blob[2 : 2 + n]), blob[2 + n :]
        except ValueError:
            raise StoredFormatError(
                f"the state under token {token} was not sealed with this pseudonym_key: was the "
                "key changed, or pseudonymisation turned on over an existing key prefix?"
            ) from None

    # -- StateStore ----------------------------------------------------------------------------

    def load(self, user_ids: Collection[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        tokens: dict[str, str] = {}
        for uid in user_ids:
            if uid in self._fetched:
                out[uid] = self._fetched.pop(uid)
            else:
                tokens[self._token(uid)] = uid
        for token, blob in self.inner.load(list(tokens)).items():
            out[tokens[token]] = self._unwrap(token, blob)[1]
        return out

    def save(
        self,
        states: Mapping[str, bytes],
        due: Mapping[int, Mapping[str, int | None]],
        watermarks: Mapping[int, int],
    ) -> None:
        self._fetched.clear()
        self.inner.save(
            {self._token(u): self._wrap(u, b) for u, b in states.items()},
            {p: {self._token(u): at for u, at in e.items()} for p, e in due.items()},
            watermarks,
        )
        self._opaque.clear()

    def due(self, up_to: Mapping[int, int], limit: int) -> dict[int, list[str]]:
        found = self.inner.due(up_to, limit)
        blobs = self.inner.load([t for tokens in found.values() for t in tokens])
        out: dict[int, list[str]] = {}
        for partition, tokens in found.items():
            ids = []
            for token in tokens:
                blob = blobs.get(token)
                if blob is None:  # expired: the runtime drops the entry by this name
                    self._opaque.add(token)
                    ids.append(token)
                    continue
                uid, state = self._unwrap(token, blob)
                self._fetched[uid] = state
                ids.append(uid)
            out[partition] = ids
        return out

    def watermarks(self, partitions: Iterable[int]) -> dict[int, int]:
        return self.inner.watermarks(partitions)

    def get_blob(self, name: str) -> bytes | None:
        return self.inner.get_blob(name)

    def put_blob(self, name: str, data: bytes) -> None:
        self.inner.put_blob(name, data)

    def close(self) -> None:
        self.inner.close()

    def due_count(self) -> int:
        """Users waiting in due queues."""
        return self.inner.due_count()

    # -- ErasureStore --------------------------------------------------------------------------

    def erase(
        self,
        users: Mapping[str, int | None],
        marks: Mapping[int, Mapping[str, bytes | None]],
        offsets: Mapping[int, int],
    ) -> None:
        self.inner.erase({self._token(u): p for u, p in users.items()}, marks, offsets)

    def erasure_log(
        self, partitions: Iterable[int]
    ) -> tuple[dict[int, int], dict[int, dict[str, bytes]]]:
        return self.inner.erasure_log(partitions)


def pseudonyms_of(settings: Settings) -> Pseudonyms | None:
    """The configured pseudonyms, or None when ``pseudonym_key`` is not set."""
    if settings.pseudonym_key is None:
        return None
    try:
        return Pseudonyms(settings.pseudonym_key.get_secret_value().encode())
    except ValueError as exc:
        raise ConfigError(f"STREAMSCORE_PSEUDONYM_KEY: {exc}") from None


def maybe_pseudonymous(store: _Inner, settings: Settings) -> _Inner | PseudonymousStore:
    """``store`` itself, or wrapped when ``pseudonym_key`` is set."""
    pseudonyms = pseudonyms_of(settings)
    return store if pseudonyms is None else PseudonymousStore(store, pseudonyms)
