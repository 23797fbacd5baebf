"""One small HTTP server per worker: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz`` (readiness).

- ``/healthz`` is 200 while the loop has turned within ``INVAD_HEALTH_STALE_S`` (it also turns while it
  waits out a dependency: waiting is not being stuck), else 503.
- ``/readyz`` is 200 when the models are loaded, the consumer is a stable group member (and, holding
  no partition, has not found partitions of the topic that no member owns), the loop is
  alive, no stop was requested, and every dependency check passes (Redis PING, S3 HEAD bucket). The
  checks run in the server's thread, at most once per ``INVAD_READY_CHECK_S``; a request that
  arrives while one is running gets the previous answer, so a black-holed dependency never makes
  probes pile up, and the loop is never blocked.

Both answer JSON naming each check, for whoever reads them by hand. The server runs on daemon
threads; the file-based probes (``INVAD_HEALTH_DIR``) keep working beside it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping

import structlog
from prometheus_client.exposition import choose_encoder

from .errors import Misconfigured
from .metrics import WorkerMetrics

log = structlog.get_logger("invad.pipeline.health_http")

Check = Callable[[], bool]  # True when the dependency answered; must not raise


class DependencyChecks:
    """Runs ``checks`` at most once per ``interval_s`` and remembers the answers."""

    def __init__(self, checks: Mapping[str, Check], interval_s: float):
        self.checks, self.interval_s = dict(checks), interval_s
        self._results: dict[str, bool] | None = None
        self._at = float("-inf")
        self._running = threading.Lock()

    def results(self) -> dict[str, bool]:
        """``{name: reachable}``, fresh or at most ``interval_s`` old (older while a slow check runs)."""
        if time.monotonic() - self._at >= self.interval_s and self._running.acquire(blocking=self._results is None):
            try:
                self._results = {name: _safe(name, check) for name, check in self.checks.items()}
                self._at = time.monotonic()
            finally:
                self._running.release()
        return dict(self._results or {})


def _safe(name: str, check: Check) -> bool:
    try:
        return bool(check())
    except Exception as error:  # noqa: BLE001 - an unexpected failure of a check is "not reachable"
        log.warning("ready_check_failed", dependency=name, error=repr(error))
        return False


class HealthServer:
    """Serves one :class:`WorkerMetrics`; :meth:`start` it, :meth:`close` it."""

    def __init__(self, metrics: WorkerMetrics, *, stale_s: float, checks: DependencyChecks,
                 stop: threading.Event | None = None):
        self.metrics, self.stale_s, self.checks = metrics, stale_s, checks
        self.stop = stop or threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @classmethod
    def start(cls, config: Any, metrics: WorkerMetrics, *, checks: Mapping[str, Check] | None = None,
              stop: threading.Event | None = None) -> "HealthServer | None":
        """Listen on ``config.metrics_bind``:``config.metrics_port`` (None when the port is 0).

        Raises:
            Misconfigured: the address cannot be bound (port taken, unknown address); exit code 2.
        """
        if not config.metrics_port:
            return None
        server = cls(metrics, stale_s=config.health_stale_s, stop=stop,
                     checks=DependencyChecks(checks or {}, config.ready_check_s))
        server.listen(config.metrics_bind, config.metrics_port)
        return server

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def listen(self, host: str, port: int) -> None:
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server_class = type("_Server", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
            self._server = server_class((host, port), _handler(self))
        except OSError as error:
            raise Misconfigured("config", f"the metrics and health server cannot listen on {host}:{port} ({error})",
                                "set INVAD_METRICS_PORT to a free port (0: no server) or INVAD_METRICS_BIND to an "
                                "address of this machine") from error
        threading.Thread(target=self._server.serve_forever, name="invad-health-http", daemon=True).start()
        log.info("health_server_listening", address=f"{host}:{self.port}", paths=["/metrics", "/healthz", "/readyz"])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- answers --------------------------------------------------------------------------------
    def healthz(self) -> tuple[bool, dict[str, Any]]:
        age = self.metrics.alive_age_s()
        return age <= self.stale_s, {"loop_idle_s": round(age, 3), "stale_after_s": self.stale_s}

    def readyz(self) -> tuple[bool, dict[str, Any]]:
        checks = {"models_loaded": self.metrics.models_ok, "in_consumer_group": self.metrics.source_ok,
                  "loop_alive": self.healthz()[0], "not_stopping": not self.stop.is_set()}
        checks.update({f"{name}_reachable": ok for name, ok in self.checks.results().items()})
        return all(checks.values()), {"checks": checks}


def _handler(health: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._reply(200, content_type, encoder(health.metrics.registry))
            elif path in ("/healthz", "/readyz"):
                ok, detail = health.healthz() if path == "/healthz" else health.readyz()
                body = json.dumps({"ok": ok, **detail}, sort_keys=True).encode()
                self._reply(200 if ok else 503, "application/json", body)
            else:
                self._reply(404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n")

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - probes every few seconds: no log
            pass

    return Handler
