"""The service's one HTTP server: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

prometheus_client's own server answers every path with the metrics, so a probe of
``/healthz`` would always pass. This one routes by path (anything else is a 404), renders
the metrics with prometheus_client's exposition (OpenMetrics when the scraper asks for it),
and answers the probes from ``LoopStatus`` without touching Kafka or Redis.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import orjson
from prometheus_client.exposition import choose_encoder

from streamscore import metrics
from streamscore.config import Settings
from streamscore.errors import ConfigError
from streamscore.health import LoopStatus

log = logging.getLogger("streamscore.http")
PATHS = ("/metrics", "/healthz", "/readyz")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    status: LoopStatus


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, *, with_body: bool) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(metrics.REGISTRY), content_type, with_body)
            return
        if path == "/healthz":
            ok, doc = self.server.status.liveness()
        elif path == "/readyz":
            ok, doc = self.server.status.readiness()
        else:
            ok, doc = False, {"error": f"no such path {path!r}", "paths": list(PATHS)}
            self._json(404, doc, with_body)
            return
        self._json(200 if ok else 503, doc, with_body)

    def _json(self, code: int, doc: dict[str, Any], with_body: bool) -> None:
        body = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
        self._send(code, body, "application/json", with_body)

    def _send(self, code: int, body: bytes, content_type: str, with_body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: Prometheus and the probes call every few seconds."""


class HttpServer:
    """The running server, on its own daemon thread."""

    def __init__(self, host: str, port: int, status: LoopStatus) -> None:
        cls = _Server6 if ":" in host else _Server
        try:
            self.server = cls((host, port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "the port is already in use by another process"
            else:
                why = exc.strerror or str(exc)
            raise ConfigError(
                f"cannot serve /metrics, /healthz and /readyz on {host}:{port}: {why}; stop "
                "the other process or set STREAMSCORE_METRICS_PORT (0: no HTTP server) and "
                "STREAMSCORE_METRICS_HOST"
            ) from None
        self.server.status = status
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="streamscore-http", daemon=True
        )
        self._thread.start()
        metrics.UP_SINCE.set(time.time())

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()


def serve_http(settings: Settings, status: LoopStatus) -> HttpServer | None:
    """Start the server the settings ask for (none with ``metrics_port`` 0)."""
    if not settings.metrics_port:
        return None
    server = HttpServer(settings.metrics_host, settings.metrics_port, status)
    base = f"http://{settings.metrics_host}:{server.port}"
    log.info("serving %s/metrics, %s/healthz and %s/readyz", base, base, base)
    return server
