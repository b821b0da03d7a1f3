"""Redis state store: per-user states, per-partition due queues, watermarks and blobs, on one
Redis or a Redis Cluster (``redis_connect.py`` says which from ``redis_url``).

Every command the store sends has exactly one key, so none can span Redis Cluster slots, and
every batch call pipelines its commands (``transaction=False``): one round trip on a single
Redis, one pipeline per master it touches on a cluster (``redis_cluster.ClusterBatches``).
The watermark "never go back" rule runs server-side in a Lua script on the one watermarks key.

A save sends one ``HSET`` per user, and an ``EXPIRE`` only where the key is new or its TTL
was not set for a while (``redis_ttl.py``): a state expires between ``state_retention_days``
minus an hour and ``state_retention_days`` after the user's last save.

Retrying a failed ``save`` is safe: every command in it is idempotent (HSET of the same bytes,
EXPIRE, ZADD/ZREM of the same entries, max of the same watermarks). Watermarks are written
after the states they cover, so a save cut short never leaves a watermark ahead of states it
did not save (a replayed batch would call their events late): on one Redis they come last in
the same pipeline, on a cluster (where pipelines to different masters apply in no order) in a
second round trip, once every master has acknowledged the states. (Without MULTI, which Redis
Cluster refuses across slots, a command Redis *refuses* mid-pipeline, e.g. OOM, does not stop
the later ones; ``save`` then raises and is retried.) With ``redis_wait_replicas`` every write
pipeline ends with ``WAIT``, so a save counts only once replicas hold it: a failover then
cannot lose a save whose offsets were committed.

Errors are translated once, here: connection trouble, a failover or moving slots become
``TransientError`` (the runtime retries the batch), refused credentials or permissions become
``ConfigError``; messages say "Redis" or "Redis Cluster" and where.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import redis
from redis import exceptions as rex
from redis.cluster import RedisCluster

from streamscore.adapters.redis_cluster import ClusterBatches, Command, node_name
from streamscore.adapters.redis_connect import (
    CREDENTIALS_HINT,
    RedisClient,
    connect,
    is_auth_error,
    redis_cause,
    start_errors,
)
from streamscore.adapters.redis_ttl import Clock, TtlMemo
from streamscore.errors import ConfigError, StreamscoreError, TransientError

if TYPE_CHECKING:
    from streamscore.config import Settings

log = logging.getLogger("streamscore.redis")

# -- keys and scripts: the whole Redis layout ----------------------------------------------
# ``{...}`` is a Redis Cluster hash tag: only the part inside the braces picks the slot.
DEFAULT_PREFIX = "ss"
USER_KEY = "{prefix}:u:{{{user_id}}}"  # HASH, one per user, TTL = retention (redis_ttl.py)
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

DAY_S = 86_400
WAIT_TIMEOUT_MS = 1000  # how long a write waits for its replicas (below the socket timeout)
# Errors of a cluster's topology that pass: no seed answered a refresh, a slot unserved.
_PASSING_TOPOLOGY = ("Redis Cluster cannot be connected", "slots are not covered")


def _glob_escape(text: str) -> str:
    """``text`` as a literal inside a SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _describe(client: RedisClient) -> str:
    if isinstance(client, RedisCluster):
        return "seed nodes " + ",".join(n.name for n in client.startup_nodes)
    kw = client.get_connection_kwargs()
    if kw.get("path"):
        return f"unix:{kw['path']}"
    return f"{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


class SingleBatches:
    """Runs a batch of commands on one Redis: one pipeline, in order, one round trip."""

    ordered = True  # one connection: later commands apply after earlier ones

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def run(self, commands: Sequence[Command], trailer: tuple[Any, ...] | None = None) -> list[Any]:
        """Each command's result or error, then the trailer's (e.g. ``WAIT``)."""
        with self.client.pipeline(transaction=False) as pipe:
            for _, args in commands:
                pipe.execute_command(*args)  # type: ignore[no-untyped-call]
            if trailer is not None:
                pipe.execute_command(*trailer)  # type: ignore[no-untyped-call]
            return pipe.execute(raise_on_error=False)


class RedisStateStore:
    """A ``StateStore`` in Redis (layout in the constants at the top of this module)."""

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = DEFAULT_PREFIX,
        retention_days: float = 400.0,
        where: str | None = None,
        wait_replicas: int = 0,
        clock: Clock = time.monotonic,
    ) -> None:
        """Wrap a client (no I/O happens here); ``where`` names the server in messages;
        ``wait_replicas``: replicas that must hold every write before it counts; ``clock``
        times the TTL refresh window (``redis_ttl.py``)."""
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError(
                f"redis_key_prefix {prefix!r} must be non-empty and contain no braces (they "
                "would take over the per-user Redis Cluster hash tag); fix "
                "STREAMSCORE_REDIS_KEY_PREFIX"
            )
        if not retention_days > 0:
            raise ConfigError("state_retention_days must be > 0 (STREAMSCORE_STATE_RETENTION_DAYS)")
        self._client = client
        self.cluster = isinstance(client, RedisCluster)
        self._batches: SingleBatches | ClusterBatches = (
            ClusterBatches(client) if isinstance(client, RedisCluster) else SingleBatches(client)
        )
        self.kind = "Redis Cluster" if self.cluster else "Redis"
        self.prefix = prefix
        self.ttl_s = max(1, round(retention_days * DAY_S))
        self._ttls = TtlMemo(self.ttl_s, clock)
        self.where = where or _describe(client)
        self.wait_replicas = wait_replicas
        self._wait = ("WAIT", wait_replicas, WAIT_TIMEOUT_MS) if wait_replicas else None
        self._wm_key = WATERMARKS_KEY.format(prefix=prefix)
        self._wm_sha = WATERMARK_MAX_SHA

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock = time.monotonic) -> RedisStateStore:
        """Connect as configured; ``ConfigError`` when Redis is unreachable or refuses us."""
        client, to = connect(settings)
        try:
            store = cls(
                client,
                prefix=settings.redis_key_prefix,
                retention_days=settings.state_retention_days,
                where=to.where,
                wait_replicas=settings.redis_wait_replicas,
                clock=clock,
            )
        except ConfigError:
            client.close()
            raise
        with start_errors(to, close=client):
            # Register the watermark script now (on every master), so the first save needs
            # no reload.
            store._wm_sha = client.script_load(WATERMARK_MAX_LUA)
        log.info("state store: %s at %s, key prefix %r", to.kind, to.where, store.prefix)
        return store

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

    def _translate(self, what: str, exc: BaseException) -> StreamscoreError:
        kind = self.kind
        node = node_name(exc) if self.cluster else None
        where = f"{self.where} (node {node})" if node else self.where
        if isinstance(exc, rex.RedisClusterException):
            if isinstance(exc, rex.SlotNotCoveredError) or any(
                text in str(exc) for text in _PASSING_TOPOLOGY
            ):
                return TransientError(
                    f"{kind} {what} failed at {where}: {exc}; a master is down or slots are "
                    "moving; will be retried"
                )
            cause = redis_cause(exc)
            if cause is None:
                return StreamscoreError(f"{kind} {what} failed at {where}: {exc}")
            exc = cause
        if is_auth_error(exc):
            return ConfigError(f"{kind} at {where} refused {what}: {exc}; {CREDENTIALS_HINT}")
        if isinstance(exc, rex.NoPermissionError):
            return ConfigError(
                f"{kind} at {where} refused {what}: {exc}; the Redis user lacks an ACL "
                f"permission ({CREDENTIALS_HINT} and the user's ACL rules)"
            )
        if isinstance(exc, rex.AskError) and not self.cluster:  # MOVED, or ASK
            return ConfigError(
                f"Redis at {where} answered {what} with a redirect ({exc}): it is a node of a "
                "Redis Cluster; set STREAMSCORE_REDIS_URL to redis+cluster://host:port,host:port"
            )
        if isinstance(exc, rex.OutOfMemoryError):
            return TransientError(
                f"{kind} at {where} is out of memory during {what} ({exc}); will be retried. "
                "Raise its maxmemory, or lower STREAMSCORE_STATE_RETENTION_DAYS"
            )
        if isinstance(
            exc,
            rex.ConnectionError
            | rex.TimeoutError
            | rex.ReadOnlyError
            | rex.TryAgainError
            | rex.ClusterError  # CLUSTERDOWN (a failover under way), too many redirects
            | rex.AskError  # slots still moving after the redirects a batch follows
            | rex.InvalidResponse,
        ):
            return TransientError(f"{kind} {what} failed at {where}: {exc}; will be retried")
        if "WRONGTYPE" in str(exc):
            return ConfigError(
                f"{kind} {what} failed at {where}: {exc}; a key under prefix {self.prefix!r} "
                "holds another type: is another application using this prefix? Set "
                "STREAMSCORE_REDIS_KEY_PREFIX"
            )
        return StreamscoreError(f"{kind} {what} failed at {where}: {exc}")

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (rex.RedisError, rex.RedisClusterException) as exc:
            raise self._translate(what, exc) from exc

    def _send(
        self,
        what: str,
        commands: Sequence[Command],
        *,
        write: bool = False,
        script: int | None = None,
    ) -> list[Any]:
        """Run one batch of commands; their results. Raises the first refusal (translated),
        or when a ``write`` reached fewer replicas than asked. ``script``: the index of a
        watermark script call, run again after loading the script if Redis forgot it."""
        with self._errors(what):
            out = self._batches.run(commands, self._wait if write else None)
        values, acks = out[: len(commands)], out[len(commands) :]
        for i, result in enumerate([*values, *acks]):
            if isinstance(result, Exception) and not (
                i == script and isinstance(result, rex.NoScriptError)
            ):
                raise self._translate(what, result) from result
        short = [n for n in acks if n < self.wait_replicas]
        if short:
            raise TransientError(
                f"{self.kind} {what} at {self.where}: only {min(short)} of "
                f"{self.wait_replicas} replicas acknowledged within {WAIT_TIMEOUT_MS} ms "
                "(STREAMSCORE_REDIS_WAIT_REPLICAS); will be retried"
            )
        if script is not None and isinstance(values[script], rex.NoScriptError):
            # Redis restarted, failed over or flushed its script cache: load it, redo the max.
            log.info(
                "watermark script missing in %s at %s; loading it again", self.kind, self.where
            )
            with self._errors(what):
                self._wm_sha = self._client.script_load(WATERMARK_MAX_LUA)
            key, args = commands[script]
            again = (key, ("EVALSHA", self._wm_sha, *args[2:]))
            values[script] = self._send(what, [again], write=write)[0]
        return values

    # -- StateStore ------------------------------------------------------------------------

    def load(self, user_ids: Collection[str]) -> dict[str, bytes]:
        """States of the users that have one: one HGET per user, pipelined."""
        ids = list(user_ids)
        if not ids:
            return {}
        commands = [(k, ("HGET", k, USER_STATE_FIELD)) for k in map(self.user_key, ids)]
        values = self._send(f"loading {len(ids)} user states", commands)
        return {u: v for u, v in zip(ids, values, strict=True) if v is not None}

    def save(
        self,
        states: Mapping[str, bytes],
        due: Mapping[int, Mapping[str, int | None]],
        watermarks: Mapping[int, int],
    ) -> None:
        """States (the TTL set where ``redis_ttl`` says), due entries (None removes), then
        watermarks (never lowered)."""
        commands: list[Command] = []
        fresh = self._ttls.current()
        expiring: list[str] = []  # users whose EXPIRE this save sends
        kept: list[tuple[int, str]] = []  # (index of the HSET, user) of the others
        for u, data in states.items():
            key = self.user_key(u)
            commands.append((key, ("HSET", key, USER_STATE_FIELD, data)))
            if u in fresh:
                kept.append((len(commands) - 1, u))
            else:
                commands.append((key, ("EXPIRE", key, self.ttl_s)))
                expiring.append(u)
        for partition, entries in due.items():
            key = self.due_key(partition)
            add = [x for u, at in entries.items() if at is not None for x in (at, u)]
            drop = [u for u, at in entries.items() if at is None]
            if add:
                commands.append((key, ("ZADD", key, *add)))
            if drop:
                commands.append((key, ("ZREM", key, *drop)))
        wm_args = [x for p, wm in watermarks.items() for x in (str(p), str(int(wm)))]
        what = f"saving {len(states)} user states"
        wm = (self._wm_key, ("EVALSHA", self._wm_sha, 1, self._wm_key, *wm_args))
        if wm_args and self._batches.ordered:  # last in the same pipeline
            values = self._write(what, [*commands, wm], script=len(commands))
        else:  # on a cluster, every master holds the states before the watermarks move
            values = self._write(what, commands) if commands else []
        # HSET answers the fields it added: 1 when the key was not there (a user key holds
        # one field), so it has no TTL now, though this process had set one.
        created = [u for i, u in kept if values[i] == 1]
        if created:
            self._expire_created(what, created)
        self._ttls.set(expiring)
        if wm_args and not self._batches.ordered:
            self._write(what, [wm], script=0)

    def _write(
        self, what: str, commands: Sequence[Command], script: int | None = None
    ) -> list[Any]:
        """``_send`` of a save's writes; when it fails, whatever it did to the user keys, the
        next save of every user sets their TTL again."""
        try:
            return self._send(what, commands, write=True, script=script)
        except BaseException:
            self._ttls.forget_all()
            raise

    def _expire_created(self, what: str, users: list[str]) -> None:
        """Set the TTL of user keys a save created although this process had set their TTL:
        someone deleted them meanwhile (an erasure elsewhere, an eviction, a flush)."""
        log.info(
            "%d user keys were gone from %s and written again (deleted, evicted or flushed "
            "elsewhere); setting their TTL",
            len(users),
            self.kind,
        )
        keys = [self.user_key(u) for u in users]
        self._write(what, [(k, ("EXPIRE", k, self.ttl_s)) for k in keys])
        self._ttls.set(users)

    def erase(
        self,
        users: Mapping[str, int | None],
        marks: Mapping[int, Mapping[str, bytes | None]],
        offsets: Mapping[int, int],
    ) -> None:
        """Marks first (an erased user's events stay out even if the rest is cut short), then
        the users' states and due entries, then the offsets; idempotent. One round trip on one
        Redis; on a cluster one per step, so that each step is on every master before the next
        begins (as ``save`` orders states before watermarks)."""
        mark_cmds: list[Command] = []
        for partition, entries in marks.items():
            key = ERASURE_MARKS_KEY.format(prefix=self.prefix, partition=partition)
            add = [v for fp, m in entries.items() if m is not None for v in (fp, m)]
            drop = [fp for fp, m in entries.items() if m is None]
            if add:
                mark_cmds.append((key, ("HSET", key, *add)))
            if drop:
                mark_cmds.append((key, ("HDEL", key, *drop)))
        user_cmds: list[Command] = []
        self._ttls.forget(users)  # saved again, they are new keys
        for user, due_partition in users.items():
            key = self.user_key(user)
            user_cmds.append((key, ("DEL", key)))
            if due_partition is not None:
                due = self.due_key(due_partition)
                user_cmds.append((due, ("ZREM", due, user)))
        offset_cmds: list[Command] = []
        if offsets:
            key = ERASURE_OFFSETS_KEY.format(prefix=self.prefix)
            pairs = [v for p, o in offsets.items() for v in (str(p), o)]
            offset_cmds.append((key, ("HSET", key, *pairs)))
        what = f"erasing {len(users)} users"
        steps = [mark_cmds, user_cmds, offset_cmds]
        if self._batches.ordered:
            steps = [[c for step in steps for c in step]]
        for step in steps:
            if step:
                self._send(what, step, write=True)

    def erasure_log(
        self, partitions: Iterable[int]
    ) -> tuple[dict[int, int], dict[int, dict[str, bytes]]]:
        """Next erasure offsets and erasure marks of these partitions, in one round trip."""
        parts = list(partitions)
        if not parts:
            return {}, {}
        offsets_key = ERASURE_OFFSETS_KEY.format(prefix=self.prefix)
        commands: list[Command] = [(offsets_key, ("HMGET", offsets_key, *(str(p) for p in parts)))]
        for p in parts:
            key = ERASURE_MARKS_KEY.format(prefix=self.prefix, partition=p)
            commands.append((key, ("HGETALL", key)))
        offsets_raw, *marks_raw = self._send("loading erasure offsets and marks", commands)
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
        commands = [
            (k, ("ZRANGEBYSCORE", k, "-inf", wm, "LIMIT", 0, limit))
            for k, wm in ((self.due_key(p), wm) for p, wm in parts)
        ]
        results = self._send("querying due users", commands)
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
        key = self.blob_key(name)
        self._send(f"saving blob {name!r}", [(key, ("SET", key, data))], write=True)

    def close(self) -> None:
        """Release the connections."""
        self._client.close()

    # -- measurements ----------------------------------------------------------------------

    def _scan(self, glob: str, limit: int | None = None) -> list[bytes]:
        """Keys matching ``glob`` (on every master of a cluster), each once."""
        pattern = glob.format(prefix=_glob_escape(self.prefix))
        keys: dict[bytes, None] = {}  # a key a reshard moves mid-scan may show up twice
        for key in self._client.scan_iter(match=pattern, count=1000):
            keys[key] = None
            if limit is not None and len(keys) >= limit:
                break
        return list(keys)

    def bytes_per_user(self, sample: int = 200) -> float:
        """Mean ``MEMORY USAGE`` of up to ``sample`` user keys (0.0 without users).

        Covers key, value and object headers; not the per-key entry of the expires table
        (about 20-30 bytes more per user with a TTL) nor allocator fragmentation.
        """
        with self._errors("measuring memory per user"):
            keys = self._scan(USER_KEY_GLOB, sample)
        if not keys:
            return 0.0
        commands = [(k.decode(), ("MEMORY USAGE", k, "SAMPLES", 0)) for k in keys]
        sizes = [s for s in self._send("measuring memory per user", commands) if s]
        return sum(sizes) / len(sizes) if sizes else 0.0

    def due_count(self) -> int:
        """How many users wait in due queues, over all partitions (for tests and metrics)."""
        with self._errors("counting due users"):
            keys = self._scan(DUE_KEY_GLOB)
        commands = [(k.decode(), ("ZCARD", k)) for k in keys]
        return sum(int(n) for n in self._send("counting due users", commands)) if keys else 0
