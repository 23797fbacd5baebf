"""Concurrent image fetch and decode, with byte and pixel caps and an allow-list per URI scheme.

Every outcome is classified for the loop:
- a permanent failure of one image (missing object, not an image, too large, URI not allowed)
  becomes a :class:`BadRecord` with the dead-letter reason, in place of that image's result;
- a transient failure (connection refused, timeout, throttling, 5xx) raises :class:`DependencyDown`
  for the whole call, so the loop waits and retries the batch without committing.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image

from worker.common import s3client
from worker.core.images import ImageDecodeError, decode_image, model_input

from . import s3
from .errors import (FETCH_FAILED, IMAGE_INVALID, IMAGE_TOO_LARGE, OBJECT_MISSING, URI_NOT_ALLOWED, BadRecord,
                     DependencyDown)

# Errors of a local or network file system that say it, not the path, is failing (EIO, a stale NFS
# handle, a timeout, exhausted descriptors); anything else (a name too long, a loop of links, no
# permission, missing) is the message's own fault and is dead-lettered.
_STORAGE_ERRNOS = frozenset({errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN, errno.EBUSY, errno.EINTR,
                             errno.ENOLCK, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.ENOTCONN,
                             errno.ECONNRESET, errno.EHOSTDOWN, errno.ENETDOWN, errno.EREMOTEIO})

_MAGIC = ((b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpg"), (b"BM", "bmp"), (b"II*\x00", "tif"), (b"MM\x00*", "tif"),
          (b"GIF8", "gif"))


def sniff_extension(data: bytes) -> str:
    """File extension for encoded image bytes, from their magic number ("bin" when unknown)."""
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


@dataclass(frozen=True)
class Fetched:
    """One fetched and decoded image: the bytes as stored, the RGB image, the model's input when a shape
    was asked for (a (height, width, 3) uint8 array, see :func:`worker.core.images.model_input`), and
    stage timings (ms; ``decode_ms`` includes the resize)."""
    data: bytes
    image: Image.Image
    ext: str
    fetch_ms: float
    decode_ms: float
    pixels: np.ndarray | None = None


class PendingFetch:
    """The fetches of one batch, running in the fetch pool; :meth:`result` waits for them all."""

    def __init__(self, futures: list[Future]):
        self.futures = futures

    def done(self) -> bool:
        return all(future.done() for future in self.futures)

    def result(self) -> list["Fetched | BadRecord"]:
        """One outcome per URI, in order, once every fetch has finished.

        Raises:
            DependencyDown: when any fetch failed transiently.
        """
        outcomes = [future.result() for future in self.futures]
        for outcome in outcomes:
            if isinstance(outcome, DependencyDown):
                raise outcome
        return outcomes  # type: ignore[return-value]


def host_allowed(host_port: str, allow: Sequence[str]) -> bool:
    """``host[:port]`` matches an entry ``host``, ``host:port`` or ``*.domain`` of ``allow``."""
    host = host_port.lower().rsplit("@", 1)[-1]
    bare = host.split(":", 1)[0] if not host.startswith("[") else host
    for entry in allow:
        if entry.startswith("*."):
            if bare.endswith(entry[1:]) and bare != entry[2:]:
                return True
        elif entry == host or entry == bare:
            return True
    return False


class _NoForeignRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to allow-listed https hosts, so the allow-list cannot be bypassed."""

    def __init__(self, allow: Sequence[str]):
        self.allow = allow

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401 - stdlib signature
        parts = urlsplit(newurl)
        if parts.scheme != "https" or not host_allowed(parts.netloc, self.allow):
            raise BadRecord(URI_NOT_ALLOWED, f"redirect to {newurl!r} leaves the https allow-list")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Fetcher:
    """Fetches ``s3://``, ``file://`` and ``https://`` images in a thread pool and decodes them."""

    def __init__(self, *, max_bytes: int, max_pixels: int, concurrency: int = 8, timeout_s: float = 10.0,
                 file_roots: Sequence[str] = (), https_allow: Sequence[str] = (), s3_allow_buckets: Sequence[str] = (),
                 s3_client_factory: Callable[[], Any] | None = None):
        """``s3_client_factory`` builds the S3 client on first use (None: ``s3://`` is not allowed)."""
        self.max_bytes, self.max_pixels, self.timeout_s = max_bytes, max_pixels, timeout_s
        self.file_roots = tuple(os.path.realpath(root) for root in file_roots)
        self.https_allow = tuple(https_allow)
        self.s3_allow_buckets = tuple(s3_allow_buckets)
        self._s3_factory, self._s3, self._s3_lock = s3_client_factory, None, threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="invad-fetch")
        self._opener = urllib.request.build_opener(_NoForeignRedirects(self.https_allow))

    @classmethod
    def from_config(cls, config: Any) -> "Fetcher":
        def s3_factory() -> Any:
            return s3.client_from_config(config)
        return cls(max_bytes=config.max_image_bytes, max_pixels=config.max_image_pixels,
                   concurrency=config.fetch_concurrency, timeout_s=config.fetch_timeout_s,
                   file_roots=config.file_roots, https_allow=config.https_allow,
                   s3_allow_buckets=config.s3_allow_buckets, s3_client_factory=s3_factory)

    def submit(self, uris: Sequence[str], shapes: Sequence[tuple[int, int] | None] | None = None) -> PendingFetch:
        """Start fetching and decoding every URI in the pool and return at once. ``shapes[i]``, when
        given, also prepares image ``i`` as the model's input of that (height, width), in the pool thread."""
        shapes = list(shapes) if shapes is not None else [None] * len(uris)
        if len(shapes) != len(uris):
            raise ValueError(f"got {len(shapes)} shapes for {len(uris)} URIs")
        return PendingFetch([self._pool.submit(self._fetch_one, uri, shape) for uri, shape in zip(uris, shapes)])

    def fetch_all(self, uris: Sequence[str],
                  shapes: Sequence[tuple[int, int] | None] | None = None) -> list[Fetched | BadRecord]:
        """Fetch and decode every URI concurrently; result ``i`` belongs to ``uris[i]``.

        Raises:
            DependencyDown: when any fetch failed transiently (after every fetch has finished).
        """
        return self.submit(uris, shapes).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _fetch_one(self, uri: str, shape: tuple[int, int] | None = None) -> Fetched | BadRecord | DependencyDown:
        started = time.perf_counter()
        try:
            scheme = uri.split(":", 1)[0].lower()
            reader = {"s3": self._read_s3, "file": self._read_file, "https": self._read_https}.get(scheme)
            if reader is None:
                raise BadRecord(URI_NOT_ALLOWED, f"{uri!r}: scheme {scheme!r} is not one of s3, file, https")
            try:
                data = reader(uri)
            except (BadRecord, DependencyDown):
                raise
            except Exception as error:  # noqa: BLE001 - e.g. a URI no client can parse: this message only
                raise BadRecord(FETCH_FAILED, f"{uri!r}: {type(error).__name__}: {error}") from error
            fetched = time.perf_counter()
            try:
                image = decode_image(data, max_pixels=self.max_pixels, name=uri)
                pixels = model_input(image, shape) if shape is not None else None
            except ImageDecodeError as error:
                raise BadRecord(error.reason, error.message) from error
            except Exception as error:  # noqa: BLE001 - a decoder bug on hostile bytes: this image only
                raise BadRecord(IMAGE_INVALID, f"{uri}: decoder failed: {type(error).__name__}: {error}") from error
            return Fetched(data, image, sniff_extension(data), (fetched - started) * 1e3,
                           (time.perf_counter() - fetched) * 1e3, pixels)
        except (BadRecord, DependencyDown) as outcome:
            return outcome

    def _too_large(self, uri: str, size: int | None) -> BadRecord:
        shown = f"{size} bytes" if size is not None else "more bytes"
        return BadRecord(IMAGE_TOO_LARGE, f"{uri}: {shown} exceeds INVAD_MAX_IMAGE_BYTES={self.max_bytes}")

    def _read_file(self, uri: str) -> bytes:
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise BadRecord(URI_NOT_ALLOWED, f"{uri!r}: file:// URIs must name a local path (no host)")
        if "%00" in parts.path:  # a NUL cannot be in a path; open() would raise on it
            raise BadRecord(URI_NOT_ALLOWED, f"{uri!r}: the path holds an encoded NUL byte (%00)")
        path = os.path.realpath(unquote(parts.path))
        if not any(path == root or path.startswith(root.rstrip("/") + "/") for root in self.file_roots):
            raise BadRecord(URI_NOT_ALLOWED, f"{uri!r}: {path} is outside INVAD_FILE_ROOTS={list(self.file_roots)}")
        try:
            # O_NONBLOCK: a FIFO or device under a root must not hang the worker in open()
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    kind = OBJECT_MISSING if stat.S_ISDIR(info.st_mode) else FETCH_FAILED
                    raise BadRecord(kind, f"{uri}: {path} is not a regular file")
                if info.st_size > self.max_bytes:
                    raise self._too_large(uri, info.st_size)
                return handle.read(self.max_bytes + 1)
        except OSError as error:
            if error.errno in _STORAGE_ERRNOS:  # the storage, not the message, is at fault: wait and retry
                raise DependencyDown("file", f"{uri}: {error}") from error
            reason = OBJECT_MISSING if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR) else FETCH_FAILED
            raise BadRecord(reason, f"{uri}: {error.strerror or error}") from error

    def _read_https(self, uri: str) -> bytes:
        parts = urlsplit(uri)
        if not host_allowed(parts.netloc, self.https_allow):
            raise BadRecord(URI_NOT_ALLOWED, f"{uri!r}: host {parts.netloc!r} is not in INVAD_HTTPS_ALLOW="
                                             f"{list(self.https_allow)}")
        request = urllib.request.Request(uri, headers={"User-Agent": "invad-worker"})
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                length = response.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > self.max_bytes:
                    raise self._too_large(uri, int(length))
                data = response.read(self.max_bytes + 1)
        except urllib.error.HTTPError as error:
            if error.code in (404, 410):
                raise BadRecord(OBJECT_MISSING, f"{uri}: HTTP {error.code}") from error
            if error.code in (408, 425, 429) or error.code >= 500:
                raise DependencyDown("https", f"{uri}: HTTP {error.code}") from error
            raise BadRecord(FETCH_FAILED, f"{uri}: HTTP {error.code}") from error
        except (urllib.error.URLError, OSError) as error:  # refused, DNS, timeout, reset
            raise DependencyDown("https", f"{uri}: {error}") from error
        if len(data) > self.max_bytes:
            raise self._too_large(uri, None)
        return data

    def _read_s3(self, uri: str) -> bytes:
        bucket, _, key = uri[len("s3://"):].partition("/")
        if self.s3_allow_buckets and bucket not in self.s3_allow_buckets:
            raise BadRecord(URI_NOT_ALLOWED, f"{uri!r}: bucket {bucket!r} is not in INVAD_S3_ALLOW_BUCKETS")
        if self._s3_factory is None:
            raise BadRecord(URI_NOT_ALLOWED, f"{uri!r}: s3:// references need an S3 client (INVAD_S3_* settings)")
        with self._s3_lock:  # boto3 clients are thread-safe once built, but not while building
            if self._s3 is None:
                self._s3 = self._s3_factory()
        try:
            response = self._s3.get_object(Bucket=bucket, Key=key)
            size = response.get("ContentLength")
            if size is not None and size > self.max_bytes:
                response["Body"].close()
                raise self._too_large(uri, size)
            data = response["Body"].read(self.max_bytes + 1)
        except BadRecord:
            raise
        except Exception as error:  # noqa: BLE001 - classified just below
            if s3client.is_missing(error):
                raise BadRecord(OBJECT_MISSING, f"{uri}: {s3client.error_code(error)}") from error
            if s3client.is_transient(error):
                raise s3.as_dependency_down(error, f"get {uri}") from error
            code = s3client.error_code(error)
            if code is not None:  # AccessDenied, InvalidObjectState, ...: permanent for this message
                raise BadRecord(FETCH_FAILED, f"{uri}: {code}") from error
            raise
        if len(data) > self.max_bytes:
            raise self._too_large(uri, None)
        return data

