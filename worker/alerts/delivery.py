"""Where ``invad alerts`` hands each alert: one JSON line on stdout, or an HTTP POST to a webhook.

A webhook POST carries the alert as JSON (``AlertEntry.to_dict()`` / ``DriftEntry.to_dict()`` plus the
stream id as ``entry_id``) with the header ``Idempotency-Key: <image_id>`` (a drift entry's event id):
delivery is at-least-once, so a receiver drops a key it has seen. Outcomes:

- 2xx: delivered.
- 408, 429, 5xx, a timeout or a connection error: retried up to ``max_retries`` times, waiting a capped
  exponential backoff with full jitter (at least the ``Retry-After`` seconds a 429/503 asks, within
  the cap); then :class:`Undeliverable` ("retries_exhausted").
- any other status, 3xx included (redirects are not followed: a POST must not turn into a GET):
  :class:`Undeliverable` ("rejected") at once, since repeating the same request cannot help.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import urllib.error
import urllib.request
from typing import IO, Any, Callable
from urllib.parse import urlsplit

import structlog

from worker import __version__
from worker.pipeline.backoff import backoff_delay
from worker.pipeline.redact import redact_text

log = structlog.get_logger("invad.alerts.delivery")
RETRYABLE_STATUS = (408, 429)  # and every 5xx


class Undeliverable(Exception):
    """The alert cannot be delivered: ``reason`` "rejected" (a 4xx or 3xx) or "retries_exhausted"."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


class Interrupted(Exception):
    """A stop was requested while waiting to retry: the alert stays pending, to be delivered after a restart."""


def payload(entry_id: str, alert: Any) -> dict[str, Any]:
    """The JSON object delivered for ``alert`` read at stream id ``entry_id``."""
    return {"entry_id": entry_id, **alert.to_dict()}


class PrintDelivery:
    """Each alert as one JSON line on ``out`` (stdout), flushed before the alert is acknowledged."""

    def __init__(self, out: IO[str] | None = None):
        self._out = out

    def deliver(self, entry_id: str, alert: Any, keepalive: Callable[[], None]) -> None:
        out = self._out or sys.stdout
        out.write(json.dumps(payload(entry_id, alert), separators=(",", ":")) + "\n")
        out.flush()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


def check_webhook_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host. Raises ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--webhook {redact_text(url)!r} is not an http:// or https:// URL with a host, "
                         "e.g. https://alerts.example.com/invad")
    return url


class WebhookDelivery:
    """POSTs each alert to ``url`` (see the module docstring for what is retried)."""

    def __init__(self, url: str, *, timeout_s: float, max_retries: int, backoff_max_s: float,
                 stop: threading.Event):
        self.url = check_webhook_url(url)
        self.timeout_s, self.max_retries, self.backoff_max_s, self.stop = timeout_s, max_retries, backoff_max_s, stop
        self._opener = urllib.request.build_opener(_NoRedirect())
        self._shown = redact_text(url)

    def deliver(self, entry_id: str, alert: Any, keepalive: Callable[[], None]) -> None:
        """POST until delivered. ``keepalive`` is called before each retry (the consumer keeps the entry
        claimed while it waits).

        Raises:
            Undeliverable: rejected, or still failing after ``max_retries`` retries.
            Interrupted: the stop flag was set while waiting to retry.
        """
        body = json.dumps(payload(entry_id, alert), separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": "application/json", "Idempotency-Key": alert.to_dict()["image_id"],
                   "X-Invad-Alert-Kind": alert.kind, "User-Agent": f"invad-alerts/{__version__}"}
        attempt = 0
        while True:
            error, retry_after = self._post(body, headers)
            if error is None:
                return
            attempt += 1
            if attempt > self.max_retries:
                raise Undeliverable("retries_exhausted", f"{error} after {self.max_retries} retries")
            delay = max(backoff_delay(attempt, self.backoff_max_s), min(retry_after, self.backoff_max_s))
            log.warning("webhook_retry", entry_id=entry_id, error=error, attempt=attempt, retry_in_s=round(delay, 2))
            if self.stop.wait(delay):
                raise Interrupted(error)
            keepalive()

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[str | None, float]:
        """One POST: (None, 0) when delivered, (what failed, Retry-After seconds) for a retryable failure.

        Raises:
            Undeliverable: "rejected" for a status that retrying cannot change."""
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read(65536)  # the receiver's answer is not used; read some so the connection closes cleanly
                return None, 0.0
        except urllib.error.HTTPError as error:
            status, detail = error.code, _snippet(error)
            if status in RETRYABLE_STATUS or status >= 500:
                return f"HTTP {status} {detail}".strip(), _retry_after(error.headers.get("Retry-After"))
            hint = " (redirects are not followed: set --webhook to the final URL)" if 300 <= status < 400 else ""
            raise Undeliverable("rejected", f"{self._shown} answered HTTP {status}{hint} {detail}".strip()) from None
        except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, resets, bad status lines
            reason = getattr(error, "reason", error)
            return f"{type(error).__name__}: {redact_text(str(reason))}", 0.0


def _snippet(error: urllib.error.HTTPError) -> str:
    try:
        text = error.read(300).decode("utf-8", "replace").strip()
    except Exception:  # noqa: BLE001 - only a detail for the log
        text = ""
    finally:
        error.close()
    return repr(text) if text else ""


def _retry_after(value: str | None) -> float:
    """Seconds of a ``Retry-After: <seconds>`` header (an HTTP date is ignored: the backoff applies)."""
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0
