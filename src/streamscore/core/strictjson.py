"""JSON parsing that refuses duplicate object keys, at close to orjson's speed.

RFC 8259 leaves objects with repeated names to the implementation; orjson, like most
parsers, keeps the last value silently, so ``{"amount": 5, "amount": 5000}`` would be read as
a 5000 purchase while another consumer of the same topic reads 5. The ``user-events``
contract refuses such records instead.

Checking costs one more C call, not a second parse in Python. A colon outside a string is
only ever a name separator, and in UTF-8 the byte 0x3A is only ever ':'. So the raw document
holds one colon per member plus the colons inside its strings. orjson's re-serialisation of
the parsed value (which never escapes ':') holds the same, less the members it dropped for a
repeated key (and the colons in their strings): the two counts are equal exactly when no key
was repeated. A colon written as the escape ``\\u003a`` is in a parsed
string but not among the raw bytes; documents with such an escape take the exact path, a
second parse that sees every key pair (that path also names the repeated key).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


class DuplicateKeyError(ValueError):
    """An object in the document names the same key twice."""

    def __init__(self, key: str) -> None:
        shown = key if len(key) <= 64 else key[:60] + "..."
        super().__init__(f"key {shown!r} appears more than once in one object")
        self.key = key


def loads(raw: bytes) -> Any:
    """Parse like ``orjson.loads``; raise ``DuplicateKeyError`` for a repeated object key."""
    value = orjson.loads(raw)
    if type(value) is dict or type(value) is list:
        try:
            same = b"\\u003" not in raw and raw.count(b":") == orjson.dumps(value).count(b":")
        except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels)
            same = False
        if not same:
            _exact(raw)
    return value


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, item in pairs:
        if key in seen:
            raise DuplicateKeyError(key)
        seen[key] = item
    return seen


def _exact(raw: bytes) -> None:
    """Raise ``DuplicateKeyError`` if any object of ``raw`` (valid JSON) repeats a key."""
    try:
        json.loads(raw, object_pairs_hook=_refuse_repeats)
    except RecursionError:
        raise NestingError from None


class NestingError(ValueError):
    """A document nested too deeply to check for repeated keys."""

    def __init__(self) -> None:
        super().__init__("nested too deeply (hundreds of levels) to check for repeated keys")
