"""Connecting the state store: one Redis (``redis://``, ``rediss://``, ``unix://``) or a Redis
Cluster (``redis+cluster://host:port,host:port``, ``rediss+cluster://`` with TLS), with
streamscore's timeouts, and what a failure at start means (a ``ConfigError`` that names the
setting to fix). Credentials and TLS files come from the same settings for both kinds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import redis
from redis import exceptions as rex
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from streamscore.adapters.redis_cluster import (
    ClusterUrl,
    cluster_client,
    is_cluster_url,
    parse_cluster_url,
)
from streamscore.errors import ConfigError

if TYPE_CHECKING:
    from streamscore.config import Settings

log = logging.getLogger("streamscore.redis")
RedisClient = redis.Redis | RedisCluster
T = TypeVar("T")

SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 3.0
HEALTH_CHECK_INTERVAL_S = 30  # single Redis only: redis-py's cluster client drops the option
# redis-py's own retry (reconnect and re-send) before an error reaches us; kept short because
# the runtime retries whole steps with its own backoff and logging.
CLIENT_RETRIES = 2
CLIENT_BACKOFF_BASE_S = 0.05
CLIENT_BACKOFF_CAP_S = 0.5
LOADING_WAIT_S = 120.0  # how long a start waits for servers that load their dataset

CREDENTIALS_HINT = "check STREAMSCORE_REDIS_USERNAME/STREAMSCORE_REDIS_PASSWORD"
URL_FORMS = (
    "redis://host:port/db, rediss:// for TLS, unix:///path, or for a Redis Cluster "
    "redis+cluster://host:port,host:port (rediss+cluster:// for TLS)"
)
_AUTH_CODES = ("NOAUTH", "WRONGPASS")


@dataclass(frozen=True, slots=True)
class Target:
    """What ``redis_url`` points at, as messages name it."""

    kind: str  # "Redis" or "Redis Cluster"
    where: str  # the URL without its password, or "seed nodes host:port,host:port"
    tls: bool
    cluster: ClusterUrl | None = None


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


def target(url: str) -> Target:
    """Parse ``redis_url``; ``ConfigError`` when it is not a form streamscore takes."""
    if is_cluster_url(url):
        try:
            cluster = parse_cluster_url(url)
        except ValueError as exc:
            raise ConfigError(
                f"invalid STREAMSCORE_REDIS_URL {redact_url(url)}: {exc} (expected {URL_FORMS})"
            ) from None
        return Target("Redis Cluster", f"seed nodes {cluster.shown}", cluster.tls, cluster)
    return Target("Redis", redact_url(url), url.startswith("rediss://"))


def _retry() -> Retry:
    backoff = ExponentialWithJitterBackoff(cap=CLIENT_BACKOFF_CAP_S, base=CLIENT_BACKOFF_BASE_S)
    return Retry(backoff, retries=CLIENT_RETRIES)


def _options(username: str | None, password: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "decode_responses": False,
    }
    if username:
        options["username"] = username
    if password is not None:
        options["password"] = password
    return options


def client_from_url(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: dict[str, str] | None = None,
) -> redis.Redis:
    """A client of one Redis with streamscore's timeouts; ``rediss://`` gives TLS.

    ``tls`` holds redis-py's ``ssl_*`` file options (CA, client certificate and key); the
    server's certificate is always verified, hostname included. No I/O happens here.
    Raises ``ValueError`` for a URL redis-py cannot use.
    """
    kwargs = _options(username, password)
    kwargs.update(health_check_interval=HEALTH_CHECK_INTERVAL_S, retry=_retry())
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


def is_auth_error(exc: BaseException) -> bool:
    """Refused credentials, however redis-py and the server say it."""
    if isinstance(
        exc,
        rex.AuthenticationError | rex.AuthorizationError | rex.AuthenticationWrongNumberOfArgsError,
    ):
        return True
    text = str(exc)
    return isinstance(exc, rex.ResponseError) and any(code in text for code in _AUTH_CODES)


def redis_cause(exc: BaseException) -> rex.RedisError | None:
    """The Redis error behind a cluster client's ``RedisClusterException``, if any."""
    seen: BaseException | None = exc.__cause__ or exc.__context__
    while seen is not None:
        if isinstance(seen, rex.RedisError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def connect(settings: Settings) -> tuple[RedisClient, Target]:
    """A client that has answered PING (every master's, for a cluster), and what it is."""
    url = settings.redis_url
    to = target(url)
    secret = settings.redis_password
    password = secret.get_secret_value() if secret is not None else None
    options = _options(settings.redis_username, password)
    if to.cluster is not None:
        cluster = to.cluster
        with start_errors(to):
            client = _waiting_for_load(
                to,
                lambda: cluster_client(
                    cluster, retry=_retry(), options=options, tls=tls_options(settings)
                ),
            )
        with start_errors(to, close=client):  # every master answers, not only a seed
            _waiting_for_load(to, lambda: client.ping(target_nodes=RedisCluster.PRIMARIES))
        return client, to
    try:
        single = client_from_url(
            url,
            username=settings.redis_username,
            password=password,
            tls=tls_options(settings),
        )
    except ValueError as exc:
        raise ConfigError(
            f"invalid STREAMSCORE_REDIS_URL {to.where}: {exc} (expected {URL_FORMS})"
        ) from None
    with start_errors(to, close=single):
        _waiting_for_load(to, single.ping)
        _refuse_cluster_node(single, to)
    return single, to


def _waiting_for_load(to: Target, call: Callable[[], T]) -> T:
    """``call()``, again while the servers load their dataset (up to ``LOADING_WAIT_S``)."""
    deadline = time.monotonic() + LOADING_WAIT_S
    while True:
        try:
            return call()
        except (rex.BusyLoadingError, rex.RedisClusterException) as exc:
            loading = isinstance(exc, rex.BusyLoadingError) or isinstance(
                redis_cause(exc), rex.BusyLoadingError
            )
            if not loading or time.monotonic() > deadline:
                raise
            log.info("%s at %s is loading its dataset; waiting", to.kind, to.where)
            time.sleep(1.0)


def _refuse_cluster_node(client: redis.Redis, to: Target) -> None:
    """A plain client on a cluster node would fail at its first key with a bare MOVED."""
    try:
        enabled = client.info("cluster").get("cluster_enabled")
    except rex.ResponseError:
        return  # INFO refused (ACL) or renamed: the first MOVED says it instead (the store)
    if enabled in (1, "1"):
        kw = client.get_connection_kwargs()
        scheme = "rediss+cluster" if to.tls else "redis+cluster"
        raise ConfigError(
            f"Redis at {to.where} is a node of a Redis Cluster: set STREAMSCORE_REDIS_URL to "
            f"{scheme}://{kw.get('host', 'host')}:{kw.get('port', 'port')} (several nodes, "
            "comma-separated, are safer) so that streamscore uses a cluster client"
        )


@contextmanager
def start_errors(to: Target, close: RedisClient | None = None) -> Iterator[None]:
    """Turn what goes wrong while connecting into a ``ConfigError`` that says what to do."""
    try:
        yield
    except (rex.RedisError, rex.RedisClusterException) as exc:
        if close is not None:
            close.close()
        raise start_error(to, exc) from None
    except BaseException:
        if close is not None:
            close.close()
        raise


def start_error(to: Target, exc: BaseException) -> ConfigError:
    """The ``ConfigError`` for a failure to start on ``to``."""
    kind, where = to.kind, to.where
    text = str(exc)
    if isinstance(exc, rex.RedisClusterException):
        if "Cluster mode is not enabled" in text:
            return ConfigError(
                f"{kind} at {where}: a seed node is a single Redis, not a cluster node ({text}); "
                "for a single Redis set STREAMSCORE_REDIS_URL to redis://host:port/0"
            )
        if "slots are not covered" in text:
            return ConfigError(
                f"{kind} at {where} does not serve all 16384 slots ({text}); fix the cluster "
                "(redis-cli --cluster check host:port) or point STREAMSCORE_REDIS_URL at another"
            )
        cause = redis_cause(exc)
        if cause is None:
            return ConfigError(f"{kind} at {where} does not work as expected: {text}")
        exc = cause
    if is_auth_error(exc) or isinstance(exc, rex.NoPermissionError):
        return ConfigError(
            f"{kind} at {where} refused to connect: {exc}; {CREDENTIALS_HINT} "
            "(and the user's ACL permissions)"
        )
    if isinstance(exc, rex.ConnectionError | rex.TimeoutError):
        reason = str(exc).rstrip(".")
        # Over TLS, a server that answers but fails or drops the handshake (an unverifiable
        # certificate, a client certificate it wanted) shows up as a certificate error, an
        # SSL error or a bare EOF, depending on who gives up.
        handshake = "refused" not in reason.lower() and not isinstance(exc, rex.TimeoutError)
        if to.tls and handshake:
            return ConfigError(
                f"TLS with {kind} at {where} failed: {reason}; check "
                "STREAMSCORE_REDIS_SSL_CA_CERTS (the CA that signed the server's certificate, "
                "which must name the host in the URL) and, if the server asks for client "
                "certificates, STREAMSCORE_REDIS_SSL_CERTFILE and STREAMSCORE_REDIS_SSL_KEYFILE"
            )
        start = "scripts/stack up --with-redis-cluster" if to.cluster else "scripts/stack up"
        return ConfigError(
            f"cannot reach {kind} at {where}: {reason}; start it with {start} or set "
            "STREAMSCORE_REDIS_URL"
        )
    return ConfigError(f"{kind} at {where} does not work as expected: {exc}")
