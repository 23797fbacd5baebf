"""A real HTTP server on loopback (http.server in a thread) standing in for a webhook receiver: it records
every POST it receives and answers with a scripted sequence of status codes, optionally slowly."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookServer:
    """``statuses``: the status of each request in turn (then ``default``); ``delay_s``: wait before
    answering. ``received`` holds (headers, JSON body) per request, recorded on arrival."""

    def __init__(self, statuses: list[int] | None = None, default: int = 200, delay_s: float = 0.0):
        self.statuses, self.default, self.delay_s = list(statuses or []), default, delay_s
        self.received: list[tuple[dict[str, str], Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with server._lock:
                    server.received.append((dict(self.headers), json.loads(body)))
                    status = server.statuses.pop(0) if server.statuses else server.default
                if server.delay_s:
                    time.sleep(server.delay_s)
                self.send_response(status)
                if status in (429, 503):
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else f"status {status}".encode())

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def image_ids(self) -> list[str]:
        with self._lock:
            return [body["image_id"] for _, body in self.received]

    def __enter__(self) -> "WebhookServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
