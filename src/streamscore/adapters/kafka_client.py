"""Connecting to Kafka with kafka-python 3.x: client options, start-up errors a person can act
on, and one view per process of whether the brokers answer (``BrokerWatch``).

kafka-python retries a lost connection on its own and logs every attempt (dozens of lines a
second at ERROR during an outage), but tells its caller nothing: polls return empty, sends
queue up. So streamscore keeps its own account, fed by what its calls see (a flush or commit
that fails or times out, a periodic offsets lookup), says once when the brokers stop
answering and once when they answer again, and keeps kafka-python's connection noise out of
the log meanwhile.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from kafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    SaslAuthenticationFailedError,
)

from streamscore.config import Settings
from streamscore.errors import ConfigError

log = logging.getLogger("streamscore.kafka")
T = TypeVar("T")


def client_config(settings: Settings) -> dict[str, Any]:
    """Connection and security options shared by consumer, producer and admin client."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "client_id": settings.kafka_client_id,
        "security_protocol": settings.kafka_security_protocol,
        # kafka-python backs off up to 30 s between reconnects by default, so a broker back
        # from an outage was seen up to half a minute late; the Java client's default is 1 s.
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
    }
    if settings.kafka_sasl_mechanism:
        cfg["sasl_mechanism"] = settings.kafka_sasl_mechanism
        cfg["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        cfg["sasl_plain_password"] = password.get_secret_value() if password else None
    if settings.kafka_security_protocol in {"SSL", "SASL_SSL"}:
        for key, value in (
            ("ssl_cafile", settings.kafka_ssl_cafile),
            ("ssl_certfile", settings.kafka_ssl_certfile),
            ("ssl_keyfile", settings.kafka_ssl_keyfile),
        ):
            if value is not None:
                cfg[key] = str(value)
    return cfg


UNREACHABLE = (KafkaTimeoutError, KafkaConnectionError)
# How long any one blocking Kafka call may wait for an unavailable broker before it is
# reported as a TransientError (logged, counted in streamscore_transient_errors_total,
# retried with backoff): a flush, a synchronous commit, a send waiting for metadata, a
# close, the start-up topic lookup. Without a bound an outage blocked the loop silently
# inside kafka-python (commit: 30 s; flush and metadata: 60 s; topic listing: for ever).
BROKER_WAIT_S = 10.0
RECONNECT_BACKOFF_MAX_MS = 1000
# The periodic offsets lookup that notices an outage while no records flow waits this long.
PROBE_WAIT_S = 2.0


def accepts_connections(servers: str, timeout_s: float = 2.0) -> bool:
    """True when a TCP connection to one of the bootstrap servers succeeds."""
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


def bounded(what: str, call: Callable[[], T], timeout_s: float = BROKER_WAIT_S) -> T:
    """Run a kafka-python call that takes no timeout, giving up after ``timeout_s``.

    ``KafkaConsumer.topics()`` waits for a metadata answer for ever, and so hung the start of
    a scorer whose broker went away after the bootstrap. The call runs on a daemon thread;
    on timeout the caller gets ``KafkaTimeoutError`` and must not use the client again (the
    start-up then fails with a clear error, ending the process and the thread).
    """
    done = threading.Event()
    result: list[Any] = []

    def run() -> None:
        try:
            result.append((True, call()))
        except BaseException as exc:  # handed to the caller below
            result.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name=f"kafka: {what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise KafkaTimeoutError(f"{what} got no answer in {timeout_s:.0f}s")
    ok, value = result[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


def unreachable_error(settings: Settings, exc: Exception) -> ConfigError:
    where = settings.kafka_bootstrap_servers
    credentials = (
        "check STREAMSCORE_KAFKA_SASL_USERNAME, STREAMSCORE_KAFKA_SASL_PASSWORD and "
        "STREAMSCORE_KAFKA_SASL_MECHANISM"
    )
    if isinstance(exc, SaslAuthenticationFailedError):
        return ConfigError(f"Kafka at {where} refused our SASL login ({exc}); {credentials}")
    if (
        settings.kafka_security_protocol.startswith("SASL")
        and isinstance(exc, KafkaTimeoutError)
        and accepts_connections(where)
    ):
        # The broker often closes a refused login before kafka-python reads its answer: all
        # that is left is a bootstrap timeout against a broker that accepts connections.
        return ConfigError(
            f"Kafka at {where} refused our SASL login (it accepts connections, but no login "
            f"completed before the bootstrap timeout); {credentials} (and "
            "STREAMSCORE_KAFKA_SECURITY_PROTOCOL)"
        )
    tls = ""
    if settings.kafka_security_protocol.endswith("SSL"):
        tls = (
            "; with TLS, also check STREAMSCORE_KAFKA_SSL_CAFILE (the CA that signed the "
            "broker's certificate, which must name the host in the bootstrap address)"
        )
    return ConfigError(
        f"cannot reach Kafka at {settings.kafka_bootstrap_servers} ({exc}); "
        "start it with scripts/stack up, or set STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS "
        f"and the STREAMSCORE_KAFKA_SECURITY_PROTOCOL / SASL settings{tls}"
    )


class _AuthFailureWatch(logging.Filter):
    """Remembers a refused SASL login that kafka-python only logs.

    kafka-python 3.0 retries a bootstrap connection whose SASL login the broker refused, logs
    the ``SaslAuthenticationFailedError`` (logger ``kafka.net.manager``, at ERROR and WARNING)
    and, once ``bootstrap_timeout_ms`` has passed, raises a bare ``KafkaTimeoutError``. This
    filter picks the refusal out of those log records, so the error can name the credentials
    instead of calling Kafka unreachable. It never drops a record.
    """

    def __init__(self) -> None:
        super().__init__()
        self.failure: SaslAuthenticationFailedError | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, SaslAuthenticationFailedError):
                self.failure = arg
        return True


@contextmanager
def watch_auth_failures() -> Iterator[_AuthFailureWatch]:
    watch = _AuthFailureWatch()
    logger = logging.getLogger("kafka.net.manager")
    logger.addFilter(watch)
    try:
        yield watch
    finally:
        logger.removeFilter(watch)


class _RedactSaslBytes(logging.Filter):
    """Keeps SASL secrets out of kafka-python's DEBUG request log.

    At DEBUG, kafka-python logs every request and response object, SASL logins included: a
    PLAIN login carries the password in clear and a SCRAM one its salt and proof (enough to
    guess the password offline). Those records keep their text with the bytes redacted.
    """

    _BYTES = re.compile(r"""auth_bytes=b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG:
            text = record.getMessage()
            if "auth_bytes=" in text:
                record.msg, record.args = self._BYTES.sub("auth_bytes=<redacted>", text), ()
        return True


logging.getLogger("kafka.net.connection").addFilter(_RedactSaslBytes())
# kafka-python's wire dump (the raw bytes of every request and response, SASL logins and
# their passwords included) stays off even when streamscore logs at DEBUG.
logging.getLogger("kafka.protocol.parser").setLevel(logging.INFO)


class BrokerWatch:
    """Whether the brokers answer, as this process's Kafka calls see it; logs the changes.

    ``failed`` is told of every call that could not reach Kafka (a flush or commit that timed
    out, a refused connection, a periodic offsets lookup that got no answer) and ``answered``
    of every call that got an answer. The first failure after an answer logs one warning
    (``Kafka at ... is unreachable``), the first answer after failures one line (``Kafka at ...
    is back``), whatever kafka-python retries in between.
    """

    def __init__(self, servers: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.servers = servers
        self.clock = clock
        self.down_since: float | None = None
        self.answered_at = float("-inf")
        self.outages = 0

    @property
    def down(self) -> bool:
        """True between a failure and the next answer."""
        return self.down_since is not None

    def failed(self, what: str, cause: object, sent_at: float | None = None) -> None:
        """A Kafka call could not reach the brokers.

        ``sent_at`` (this watch's clock) is when an asynchronous request went out: one sent
        before the brokers last answered says nothing new (its connection died earlier, its
        answer only arrives now), so it is not taken as a new outage.
        """
        if sent_at is not None and sent_at < self.answered_at:
            return
        if self.down_since is not None:
            return
        self.down_since = self.clock()
        self.outages += 1
        _DOWN.add(self)
        log.warning(
            "Kafka at %s is unreachable (%s: %s); outputs and offset commits wait, and are "
            "retried, until it answers again",
            self.servers,
            what,
            cause,
        )

    def answered(self) -> None:
        """A Kafka call got an answer."""
        self.answered_at = self.clock()
        if self.down_since is None:
            return
        took = self.clock() - self.down_since
        self.down_since = None
        _DOWN.discard(self)
        log.info("Kafka at %s is back: it answered again after %.1fs", self.servers, took)

    def reachable(self) -> bool:
        """A quick check of our own: does any bootstrap server accept a TCP connection?"""
        return accepts_connections(self.servers, timeout_s=1.0)


# Watches that currently see Kafka as down: while there is one, kafka-python's own messages
# about lost connections are dropped (the watch has said it once).
_DOWN: weakref.WeakSet[BrokerWatch] = weakref.WeakSet()
_NOISE_ERRORS = (KafkaConnectionError, NodeNotReadyError, KafkaTimeoutError, OSError)
_NOISE_MESSAGES = frozenset(
    {
        "%s: socket disconnected",
        "No node available for metadata refresh - backoff/retry",
        "%s: Request timed out after %d ms. Closing connection.",
        "Heartbeat session expired, marking coordinator dead",
    }
)
# kafka-python modules that log a line per failed connection attempt, request or retry.
_NOISY_LOGGERS = (
    "kafka.net.transport",
    "kafka.net.connection",
    "kafka.net.manager",
    "kafka.net.selector",
    "kafka.cluster",
    "kafka.coordinator",
    "kafka.coordinator.heartbeat",
    "kafka.coordinator.consumer",
    "kafka.consumer.fetcher",
    "kafka.consumer.group",
    "kafka.producer.sender",
    "kafka.producer.producer_batch",
    "kafka.producer.record_accumulator",
    "kafka.producer.kafka",
    "kafka.admin.client",
)


class _ConnectionNoise(logging.Filter):
    """Thins out kafka-python's per-attempt connection errors.

    While a ``BrokerWatch`` reports Kafka down, they are all dropped. Otherwise one passes per
    ``every_s``, so a connection problem that does not stop the brokers from answering (one
    broker of several restarting) still shows. Any other message, and any at DEBUG, passes;
    a refused SASL login always passes (``_AuthFailureWatch`` reads it).
    """

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self.next_pass = 0.0
        self.dropped = 0

    @staticmethod
    def is_noise(record: logging.LogRecord) -> bool:
        """A message about a failed connection or request, as kafka-python logs them."""
        if record.levelno < logging.WARNING:
            return False
        if record.msg in _NOISE_MESSAGES:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        if any(isinstance(a, SaslAuthenticationFailedError) for a in args):
            return False
        if any(isinstance(a, _NOISE_ERRORS) for a in args):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        return isinstance(exc, _NOISE_ERRORS)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.is_noise(record):
            return True
        now = time.monotonic()
        if not _DOWN and now >= self.next_pass:
            self.next_pass = now + self.every_s
            return True
        self.dropped += 1
        return False


CONNECTION_NOISE = _ConnectionNoise()
for _name in _NOISY_LOGGERS:
    logging.getLogger(_name).addFilter(CONNECTION_NOISE)
