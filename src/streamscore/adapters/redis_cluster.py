"""Redis Cluster under the state store: where it is, redis-py's cluster client, and batches.

``redis+cluster://host:port,host:port`` (``rediss+cluster://`` for TLS) names some nodes of
one cluster, its *seeds*: the client asks the first that answers for the slot map (CLUSTER
SLOTS) and talks to every master from then on, so one reachable seed is enough to start.

A batch is a list of single-key commands (the store never sends a command with two keys, so
none can span hash slots). ``ClusterBatches.run`` routes each by its key's slot and sends one
pipeline per master, every pipeline written before any is read: a batch costs one round trip
per master it touches. redis-py's ``ClusterPipeline`` does the per-node split; its handling of
trouble, which re-sends every failed command on its own, is replaced here:

- MOVED (a slot has a new owner: a reshard finished, or a replica took over): the slot map is
  patched from the answer and the moved commands go again, one pipeline per node;
- ASK (the slot is being migrated and the key already left): the commands go to the importing
  node, each after an ``ASKING``, again one pipeline per node; TRYAGAIN waits a moment;
- a lost connection, a timeout or CLUSTERDOWN: the slot map is refreshed, so the next attempt
  goes where the cluster now says, and the errors are returned for the store to raise as
  ``TransientError``. (redis-py would retry each of the dead node's commands one by one, each
  waiting out the connect timeout: minutes for a batch when a host is gone.)

A command that is refused for another reason (OOM, NOSCRIPT, WRONGTYPE) is returned as is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from redis import exceptions as rex
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.retry import Retry

log = logging.getLogger("streamscore.redis")

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS
DEFAULT_PORT = 6379
REDIRECT_ROUNDS = 5  # pipelines after the first, while slots move under a batch
TRYAGAIN_PAUSE_S = 0.05
REFRESH_AFTER = (rex.ConnectionError, rex.TimeoutError, rex.ClusterDownError)
TRAILER = -1  # what a position of a round's pipeline holds: the trailer,
ASKING = -2  # or the ASKING before a command to an importing node (else a command's index)

# One command of a batch: the key that routes it, and its arguments (the key among them).
Command = tuple[str, tuple[Any, ...]]


def is_cluster_url(url: str) -> bool:
    """True for ``redis+cluster://`` and ``rediss+cluster://`` URLs."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """What a ``redis+cluster://`` URL says: seed nodes, TLS, and credentials if any."""

    seeds: tuple[tuple[str, int], ...]
    tls: bool
    username: str | None = None
    password: str | None = None

    @property
    def shown(self) -> str:
        """The seeds as ``host:port,host:port``, for messages (never a password)."""
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.seeds)


def _host_port(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise ValueError(f"seed {item!r} has no host")
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"seed {item!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"seed {item!r}: port {port} is out of range")
    return host, port


def parse_cluster_url(url: str) -> ClusterUrl:
    """Seeds and options of a cluster URL; ``ValueError`` saying what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError("a Redis Cluster URL starts with redis+cluster:// or rediss+cluster://")
    if "?" in rest or "#" in rest:
        raise ValueError("a Redis Cluster URL takes no query string or fragment")
    netloc, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, not {path.strip('/')!r}")
    userinfo, _, hosts = netloc.rpartition("@")
    username, password = None, None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    seeds = tuple(_host_port(item.strip()) for item in hosts.split(",") if item.strip())
    if not seeds:
        raise ValueError("no seed node: list some of the cluster's nodes as host:port,host:port")
    return ClusterUrl(seeds, CLUSTER_SCHEMES[scheme.lower()], username, password)


def cluster_client(
    address: ClusterUrl, *, retry: Retry, options: dict[str, Any], tls: dict[str, str]
) -> RedisCluster:
    """redis-py's cluster client on these seeds. This does I/O: it fetches the slot map, and
    raises ``RedisClusterException`` when no seed answers or the slots are not all served.

    ``options`` are each node connection's (timeouts, credentials); ``tls`` the ``ssl_*``
    files, used when the URL says TLS. ``retry`` bounds the client's own retries of one
    command (the runtime retries whole steps with backoff).
    """
    kwargs = dict(options)
    if address.username:
        kwargs["username"] = address.username
    if address.password is not None:
        kwargs["password"] = address.password
    if address.tls:
        kwargs.update(ssl=True, **tls)
    seeds = [ClusterNode(host, port) for host, port in address.seeds]  # type: ignore[no-untyped-call]
    return RedisCluster(startup_nodes=seeds, retry=retry, require_full_coverage=True, **kwargs)


def node_name(exc: BaseException) -> str | None:
    """``host:port`` of the node an error came from, when redis-py says."""
    where = getattr(exc, "connection", None)
    host, port = getattr(where, "host", None), getattr(where, "port", None)
    return f"{host}:{port}" if host and port else None


class ClusterBatches:
    """Runs batches of single-key commands on a Redis Cluster, one pipeline per master."""

    ordered = False  # pipelines to different masters apply in no particular order

    def __init__(self, client: RedisCluster) -> None:
        self.client = client
        # A pipeline that cannot get a connection raises at once (redis-py has refreshed the
        # slot map by then) rather than re-sending the stack routed its own way.
        self._no_retry = Retry(NoBackoff(), retries=0)

    def run(self, commands: Sequence[Command], trailer: tuple[Any, ...] | None = None) -> list[Any]:
        """Each command's result or error, in order; with ``trailer`` (e.g. ``WAIT``), its
        results follow: one per pipeline that a node took commands of, each after the
        commands it covers."""
        results: list[Any] = [None] * len(commands)
        trailers: list[Any] = []
        pending = list(range(len(commands)))
        asked: dict[int, ClusterNode] = {}  # command -> the importing node of an ASK
        for round_no in range(REDIRECT_ROUNDS + 1):
            stack, positions = self._stack(commands, pending, asked, trailer)
            pipe = self.client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
            pipe.set_retry(self._no_retry)
            out = pipe.send_cluster_commands(stack, raise_on_error=False, allow_redirections=False)
            retry: list[int] = []
            refresh = None
            served = False  # the node of the commands read so far took one of them
            for position, result in enumerate(out):
                i = positions[position]
                if i == TRAILER:  # after its node's commands; meaningless where all moved
                    if served:  # (a replica that redirected everything refuses WAIT)
                        trailers.append(result)
                    served = False
                    continue
                if i == ASKING:
                    continue
                results[i] = result
                asked.pop(i, None)
                if not isinstance(result, rex.AskError | rex.TryAgainError):
                    served = True
                if isinstance(result, rex.MovedError):
                    self.client.nodes_manager.move_slot(result)
                    retry.append(i)
                elif isinstance(result, rex.AskError):
                    node = self.client.get_node(result.host, result.port)  # type: ignore[no-untyped-call]
                    asked[i] = node or ClusterNode(result.host, result.port)  # type: ignore[no-untyped-call]
                    retry.append(i)
                elif isinstance(result, rex.TryAgainError):
                    retry.append(i)
                elif isinstance(result, REFRESH_AFTER):
                    refresh = result
            if refresh is not None:
                self.refresh(refresh)
                break
            if not retry or round_no == REDIRECT_ROUNDS:
                break
            if any(isinstance(results[i], rex.TryAgainError) for i in retry):
                time.sleep(TRYAGAIN_PAUSE_S)
            pending = retry
        return [*results, *trailers]

    def _stack(
        self,
        commands: Sequence[Command],
        pending: Sequence[int],
        asked: dict[int, ClusterNode],
        trailer: tuple[Any, ...] | None,
    ) -> tuple[list[PipelineCommand], list[int]]:
        """The pipeline commands of one round, grouped by node, and what each position is."""
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i in pending:
            node = asked.get(i) or self.client.get_node_from_key(commands[i][0])  # type: ignore[no-untyped-call]
            by_node.setdefault(node.name, (node, []))[1].append(i)
        stack: list[PipelineCommand] = []
        positions: list[int] = []

        def add(args: tuple[Any, ...], node: ClusterNode, what: int) -> None:
            command = PipelineCommand(args, {"target_nodes": node}, len(stack))  # type: ignore[no-untyped-call]
            stack.append(command)
            positions.append(what)

        for node, members in by_node.values():
            for i in members:
                if i in asked:
                    add(("ASKING",), node, ASKING)
                add(commands[i][1], node, i)
            if trailer is not None:
                add(trailer, node, TRAILER)
        return stack, positions

    def refresh(self, cause: BaseException) -> None:
        """Fetch the slot map again, so the next attempt goes where the cluster now says."""
        try:
            self.client.nodes_manager.initialize()
        except (rex.RedisError, rex.RedisClusterException) as exc:
            log.info("Redis Cluster slot map not refreshed after %r: %s", cause, exc)
        else:
            log.info("Redis Cluster slot map refreshed after %s", type(cause).__name__)
