"""Redis state store: per-user states, per-partition due queues, watermarks and blobs.

Every batch costs one round trip per call: ``load`` and ``save`` pipeline all their commands
(``transaction=False``, so the keys may live in different Redis Cluster slots), and the
watermark "never go back" rule runs server-side in a Lua script inside the same pipeline.

Retrying a failed ``save`` is safe: every command in it is idempotent (HSET of the same bytes,
EXPIRE, ZADD/ZREM of the same entries, max of the same watermarks). redis-py may re-send a
pipeline after a dropped connection for the same reason. Watermarks are written last, so a
pipeline cut short by a lost connection never advances a watermark past states it did not
save. (Without MULTI, which Redis Cluster refuses across slots, a command Redis *refuses*
mid-pipeline, e.g. OOM, does not stop the later ones; ``save`` then raises and is retried.)

Errors are translated once, here: connection trouble becomes ``TransientError`` (the runtime
retries the batch), refused credentials or permissions become ``ConfigError``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import redis
from redis import exceptions as rex
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from streamscore.errors import ConfigError, StreamscoreError, TransientError

if TYPE_CHECKING:
    from redis.client import Pipeline

    from streamscore.config import Settings

log = logging.getLogger("streamscore.redis")

# -- keys and scripts: the whole Redis layout ----------------------------------------------
# ``{...}`` is a Redis Cluster hash tag: only the part inside the braces picks the slot.
DEFAULT_PREFIX = "ss"
USER_KEY = "{prefix}:u:{{{user_id}}}"  # HASH, one per user, TTL = retention
USER_STATE_FIELD = "s"  #   field: the serialized UserState (opaque bytes); no other field
#   yet: the port hands the store opaque bytes, so a last-event-time field would mean parsing.
DUE_KEY = "{prefix}:due:{{p{partition}}}"  # ZSET per input partition: user_id -> due time ms
WATERMARKS_KEY = "{prefix}:wm"  # HASH: partition -> watermark ms
BLOB_KEY = "{prefix}:blob:{name}"  # STRING: named blobs (model checkpoints)
# Erasures (``erasures.py``): per partition, a HASH of erasure marks (a fingerprint of the
# user id -> "erasure time:keep until", never the id), and one HASH of the next erasure offset
# to read per partition of the user-erasures topic.
ERASURE_MARKS_KEY = "{prefix}:er:{{p{partition}}}"
ERASURE_OFFSETS_KEY = "{prefix}:eo"
USER_KEY_GLOB = "{prefix}:u:{{*}}"  # SCAN patterns (prefix glob-escaped)
DUE_KEY_GLOB = "{prefix}:due:{{p*}}"

# Raise each watermark field in KEYS[1] to the given value, never lower it.
# ARGV = partition, watermark, partition, watermark, ...; the value written is ARGV verbatim
# (Lua numbers are doubles: comparing is exact for epoch ms, printing one back is not).
WATERMARK_MAX_LUA = """
local changed = 0
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if (not cur) or tonumber(ARGV[i + 1]) > tonumber(cur) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    changed = changed + 1
  end
end
return changed
"""
WATERMARK_MAX_SHA = hashlib.sha1(WATERMARK_MAX_LUA.encode()).hexdigest()

# -- connection settings -------------------------------------------------------------------
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 3.0
HEALTH_CHECK_INTERVAL_S = 30
# redis-py's own retry (reconnect and re-send) before an error reaches us; kept short because
# the runtime retries whole steps with its own backoff and logging.
CLIENT_RETRIES = 2
CLIENT_BACKOFF_BASE_S = 0.05
CLIENT_BACKOFF_CAP_S = 0.5
LOADING_WAIT_S = 120.0  # how long ``from_settings`` waits for a Redis that loads its dataset
DAY_S = 86_400

CREDENTIALS_HINT = "check STREAMSCORE_REDIS_USERNAME/STREAMSCORE_REDIS_PASSWORD"
_AUTH_CODES = ("NOAUTH", "WRONGPASS")


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=f"{user}:***@{host}").geturl()
    except ValueError:
        if "@" not in url:
            return url
        scheme = url.partition("://")[0]
        return f"{scheme}://***@{url.rpartition('@')[2]}"


def client_from_url(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: dict[str, str] | None = None,
) -> redis.Redis:
    """A redis-py client with streamscore's timeouts; ``rediss://`` gives TLS.

    ``tls`` holds redis-py's ``ssl_*`` file options (CA, client certificate and key); the
    server's certificate is always verified, hostname included. No I/O happens here.
    Raises ``ValueError`` for a URL redis-py cannot use.
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "retry": Retry(
            ExponentialWithJitterBackoff(cap=CLIENT_BACKOFF_CAP_S, base=CLIENT_BACKOFF_BASE_S),
            retries=CLIENT_RETRIES,
        ),
        "decode_responses": False,
    }
    if username:
        kwargs["username"] = username
    if password is not None:
        kwargs["password"] = password
    if url.startswith("rediss://"):
        kwargs.update(tls or {})
    return redis.Redis.from_url(url, **kwargs)


def tls_options(settings: Settings) -> dict[str, str]:
    """redis-py's ``ssl_*`` keyword arguments from the ``redis_ssl_*`` settings."""
    return {
        option: str(path)
        for option, path in (
            ("ssl_ca_certs", settings.redis_ssl_ca_certs),
            ("ssl_certfile", settings.redis_ssl_certfile),
            ("ssl_keyfile", settings.redis_ssl_keyfile),
        )
        if path is not None
    }


def _glob_escape(text: str) -> str:
    """``text`` as a literal inside a SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _is_auth_error(exc: BaseException) -> bool:
    if isinstance(
        exc,
        rex.AuthenticationError | rex.AuthorizationError | rex.AuthenticationWrongNumberOfArgsError,
    ):
        return True
    text = str(exc)
    return isinstance(exc, rex.ResponseError) and any(code in text for code in _AUTH_CODES)


def _describe(client: redis.Redis) -> str:
    kw = client.get_connection_kwargs()
    if kw.get("path"):
        return f"unix:{kw['path']}"
    return f"{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


class RedisStateStore:
    """A ``StateStore`` in Redis (layout in the constants at the top of this module)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        retention_days: float = 400.0,
        where: str | None = None,
    ) -> None:
        """Wrap a client (no I/O happens here); ``where`` names the server in messages."""
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError(
                f"redis_key_prefix {prefix!r} must be non-empty and contain no braces (they "
                "would take over the per-user Redis Cluster hash tag); fix "
                "STREAMSCORE_REDIS_KEY_PREFIX"
            )
        if not retention_days > 0:
            raise ConfigError("state_retention_days must be > 0 (STREAMSCORE_STATE_RETENTION_DAYS)")
        self._client = client
        self.prefix = prefix
        self.ttl_s = max(1, round(retention_days * DAY_S))
        self.where = where or _describe(client)
        self._wm_key = WATERMARKS_KEY.format(prefix=prefix)
        self._wm_sha = WATERMARK_MAX_SHA

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisStateStore:
        """Connect as configured; ``ConfigError`` when Redis is unreachable or refuses us."""
        shown = redact_url(settings.redis_url)
        password = settings.redis_password
        try:
            client = client_from_url(
                settings.redis_url,
                username=settings.redis_username,
                password=password.get_secret_value() if password is not None else None,
                tls=tls_options(settings),
            )
        except ValueError as exc:
            raise ConfigError(
                f"invalid STREAMSCORE_REDIS_URL {shown}: {exc} "
                "(expected redis://host:port/db, rediss:// for TLS, or unix:///path)"
            ) from None
        store = cls(
            client,
            prefix=settings.redis_key_prefix,
            retention_days=settings.state_retention_days,
            where=shown,
        )
        try:
            store._ping_waiting_for_load()
            # Register the watermark script now, so the first save needs no reload.
            store._wm_sha = client.script_load(WATERMARK_MAX_LUA)
        except rex.RedisError as exc:
            client.close()
            if _is_auth_error(exc) or isinstance(exc, rex.NoPermissionError):
                raise ConfigError(
                    f"Redis at {shown} refused to connect: {exc}; {CREDENTIALS_HINT} "
                    "(and the user's ACL permissions)"
                ) from None
            if isinstance(exc, rex.ConnectionError | rex.TimeoutError):
                reason = str(exc).rstrip(".")
                # Over TLS, a server that answers but fails or drops the handshake (an
                # unverifiable certificate, a client certificate it wanted) shows up as a
                # certificate error, an SSL error or a bare EOF, depending on who gives up.
                handshake = "refused" not in reason.lower() and not isinstance(
                    exc, rex.TimeoutError
                )
                if settings.redis_url.startswith("rediss://") and handshake:
                    raise ConfigError(
                        f"TLS with Redis at {shown} failed: {reason}; check "
                        "STREAMSCORE_REDIS_SSL_CA_CERTS (the CA that signed the server's "
                        "certificate, which must name the host in the URL) and, if the server "
                        "asks for client certificates, STREAMSCORE_REDIS_SSL_CERTFILE and "
                        "STREAMSCORE_REDIS_SSL_KEYFILE"
                    ) from None
                raise ConfigError(
                    f"cannot reach Redis at {shown}: {reason}; start it with scripts/stack up or "
                    "set STREAMSCORE_REDIS_URL"
                ) from None
            raise ConfigError(f"Redis at {shown} does not work as expected: {exc}") from None
        log.info("state store: Redis at %s, key prefix %r", shown, store.prefix)
        return store

    def _ping_waiting_for_load(self) -> None:
        deadline = time.monotonic() + LOADING_WAIT_S
        while True:
            try:
                self._client.ping()
                return
            except rex.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                log.info("Redis at %s is loading its dataset; waiting", self.where)
                time.sleep(1.0)

    # -- keys ------------------------------------------------------------------------------

    def user_key(self, user_id: str) -> str:
        """The key of one user's state hash."""
        return USER_KEY.format(prefix=self.prefix, user_id=user_id)

    def due_key(self, partition: int) -> str:
        """The key of one partition's due queue."""
        return DUE_KEY.format(prefix=self.prefix, partition=partition)

    def blob_key(self, name: str) -> str:
        """The key of a named blob."""
        return BLOB_KEY.format(prefix=self.prefix, name=name)

    # -- errors ----------------------------------------------------------------------------

    def _translate(self, what: str, exc: rex.RedisError) -> StreamscoreError:
        where = self.where
        if _is_auth_error(exc):
            return ConfigError(f"Redis at {where} refused {what}: {exc}; {CREDENTIALS_HINT}")
        if isinstance(exc, rex.NoPermissionError):
            return ConfigError(
                f"Redis at {where} refused {what}: {exc}; the Redis user lacks an ACL "
                f"permission ({CREDENTIALS_HINT} and the user's ACL rules)"
            )
        if isinstance(exc, rex.OutOfMemoryError):
            return TransientError(
                f"Redis at {where} is out of memory during {what} ({exc}); will be retried. "
                "Raise its maxmemory, or lower STREAMSCORE_STATE_RETENTION_DAYS"
            )
        if isinstance(
            exc,
            rex.ConnectionError
            | rex.TimeoutError
            | rex.ReadOnlyError
            | rex.TryAgainError
            | rex.ClusterDownError
            | rex.InvalidResponse,
        ):
            return TransientError(f"Redis {what} failed at {where}: {exc}; will be retried")
        if "WRONGTYPE" in str(exc):
            return ConfigError(
                f"Redis {what} failed at {where}: {exc}; a key under prefix {self.prefix!r} "
                "holds another type: is another application using this prefix? Set "
                "STREAMSCORE_REDIS_KEY_PREFIX"
            )
        return StreamscoreError(f"Redis {what} failed at {where}: {exc}")

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except rex.RedisError as exc:
            raise self._translate(what, exc) from exc

    def _pipeline(self) -> Pipeline:
        return self._client.pipeline(transaction=False)

    # -- StateStore ------------------------------------------------------------------------

    def load(self, user_ids: Collection[str]) -> dict[str, bytes]:
        """States of the users that have one: one pipelined HGET per user, one round trip."""
        ids = list(user_ids)
        if not ids:
            return {}
        with self._errors(f"loading {len(ids)} user states"), self._pipeline() as pipe:
            for u in ids:
                pipe.hget(self.user_key(u), USER_STATE_FIELD)
            values = pipe.execute()
        return {u: v for u, v in zip(ids, values, strict=True) if v is not None}

    def save(
        self,
        states: Mapping[str, bytes],
        due: Mapping[int, Mapping[str, int | None]],
        watermarks: Mapping[int, int],
    ) -> None:
        """States (TTL refreshed), due entries (None removes) and then watermarks (never
        lowered), in one round trip."""
        what = f"saving {len(states)} user states"
        with self._errors(what), self._pipeline() as pipe:
            for u, data in states.items():
                key = self.user_key(u)
                pipe.hset(key, USER_STATE_FIELD, data)
                pipe.expire(key, self.ttl_s)
            for partition, entries in due.items():
                key = self.due_key(partition)
                add = {u: at for u, at in entries.items() if at is not None}
                drop = [u for u, at in entries.items() if at is None]
                if add:
                    pipe.zadd(key, add)
                if drop:
                    pipe.zrem(key, *drop)
            wm_args = [x for p, wm in watermarks.items() for x in (str(p), str(int(wm)))]
            if wm_args:  # last: never ahead of the states it covers
                pipe.evalsha(self._wm_sha, 1, self._wm_key, *wm_args)
            if not len(pipe):
                return
            results = pipe.execute(raise_on_error=False)
        errors = [r for r in results if isinstance(r, rex.RedisError)]
        if not errors:
            return
        if wm_args and isinstance(results[-1], rex.NoScriptError) and len(errors) == 1:
            # Redis restarted or its script cache was flushed: load the script, redo the max.
            log.info("watermark script missing in Redis at %s; loading it again", self.where)
            with self._errors("saving watermarks"):
                self._wm_sha = self._client.script_load(WATERMARK_MAX_LUA)
                self._client.evalsha(self._wm_sha, 1, self._wm_key, *wm_args)
            return
        first = errors[0]
        raise self._translate(what, first) from first

    def erase(
        self,
        users: Mapping[str, int | None],
        marks: Mapping[int, Mapping[str, bytes | None]],
        offsets: Mapping[int, int],
    ) -> None:
        """Marks first (an erased user's events stay out even if the rest is cut short), then
        the users' states and due entries, then the offsets: one round trip, idempotent."""
        with self._errors(f"erasing {len(users)} users"), self._pipeline() as pipe:
            for partition, entries in marks.items():
                key = ERASURE_MARKS_KEY.format(prefix=self.prefix, partition=partition)
                add = {fp: m for fp, m in entries.items() if m is not None}
                drop = [fp for fp, m in entries.items() if m is None]
                if add:
                    pipe.hset(key, mapping=add)  # type: ignore[arg-type]
                if drop:
                    pipe.hdel(key, *drop)
            for user, due_partition in users.items():
                pipe.delete(self.user_key(user))
                if due_partition is not None:
                    pipe.zrem(self.due_key(due_partition), user)
            if offsets:
                pipe.hset(
                    ERASURE_OFFSETS_KEY.format(prefix=self.prefix),
                    mapping={str(p): o for p, o in offsets.items()},
                )
            if len(pipe):
                pipe.execute()

    def erasure_log(
        self, partitions: Iterable[int]
    ) -> tuple[dict[int, int], dict[int, dict[str, bytes]]]:
        """Next erasure offsets and erasure marks of these partitions, in one round trip."""
        parts = list(partitions)
        if not parts:
            return {}, {}
        with self._errors("loading erasure offsets and marks"), self._pipeline() as pipe:
            pipe.hmget(ERASURE_OFFSETS_KEY.format(prefix=self.prefix), [str(p) for p in parts])
            for p in parts:
                pipe.hgetall(ERASURE_MARKS_KEY.format(prefix=self.prefix, partition=p))
            offsets_raw, *marks_raw = pipe.execute()
        offsets = {p: int(v) for p, v in zip(parts, offsets_raw, strict=True) if v is not None}
        marks = {
            p: {fp.decode(): m for fp, m in found.items()}
            for p, found in zip(parts, marks_raw, strict=True)
            if found
        }
        return offsets, marks

    def due(self, up_to: Mapping[int, int], limit: int) -> dict[int, list[str]]:
        """Per partition, up to ``limit`` users due at or before its watermark, earliest first.

        Entries stay queued: the next save moves or removes them.
        """
        parts = list(up_to.items())
        if not parts or limit <= 0:
            return {}
        with self._errors("querying due users"), self._pipeline() as pipe:
            for partition, wm in parts:
                pipe.zrangebyscore(self.due_key(partition), "-inf", wm, start=0, num=limit)
            results = pipe.execute()
        out: dict[int, list[str]] = {}
        for (partition, _), members in zip(parts, results, strict=True):
            if members:
                out[partition] = [m.decode() for m in members]
        return out

    def watermarks(self, partitions: Iterable[int]) -> dict[int, int]:
        """Saved watermarks of these partitions (absent when never saved)."""
        parts = list(partitions)
        if not parts:
            return {}
        with self._errors("loading watermarks"):
            values = cast(
                list[bytes | None], self._client.hmget(self._wm_key, [str(p) for p in parts])
            )
        return {p: int(v) for p, v in zip(parts, values, strict=True) if v is not None}

    def get_blob(self, name: str) -> bytes | None:
        """A named blob, or None."""
        with self._errors(f"loading blob {name!r}"):
            return cast(bytes | None, self._client.get(self.blob_key(name)))

    def put_blob(self, name: str, data: bytes) -> None:
        """Store a named blob; one SET, so readers see the old or the new bytes, never a mix."""
        with self._errors(f"saving blob {name!r}"):
            self._client.set(self.blob_key(name), data)

    def close(self) -> None:
        """Release the connections."""
        self._client.close()

    # -- measurements ----------------------------------------------------------------------

    def _scan(self, glob: str, limit: int | None = None) -> list[bytes]:
        pattern = glob.format(prefix=_glob_escape(self.prefix))
        keys: list[bytes] = []
        for key in self._client.scan_iter(match=pattern, count=1000):
            keys.append(key)
            if limit is not None and len(keys) >= limit:
                break
        return keys

    def bytes_per_user(self, sample: int = 200) -> float:
        """Mean ``MEMORY USAGE`` of up to ``sample`` user keys (0.0 without users).

        Covers key, value and object headers; not the per-key entry of the expires table
        (about 20-30 bytes more per user with a TTL) nor allocator fragmentation.
        """
        with self._errors("measuring memory per user"):
            keys = self._scan(USER_KEY_GLOB, sample)
            if not keys:
                return 0.0
            with self._pipeline() as pipe:
                for key in keys:
                    pipe.memory_usage(key, samples=0)
                sizes = [s for s in pipe.execute() if s is not None]
        return sum(sizes) / len(sizes) if sizes else 0.0

    def due_count(self) -> int:
        """How many users wait in due queues, over all partitions (for tests and metrics)."""
        with self._errors("counting due users"):
            keys = self._scan(DUE_KEY_GLOB)
            if not keys:
                return 0
            with self._pipeline() as pipe:
                for key in keys:
                    pipe.zcard(key)
                return sum(int(n) for n in pipe.execute())
