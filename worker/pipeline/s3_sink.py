"""Flagged images to S3: original bytes, overlay PNG and the ScoreRecord JSON, under deterministic keys
``{prefix}/{product}/{line_id}/{image_id}/{original.ext|overlay.png|record.json}``.

PUTs of the same key with the same bytes are idempotent, so a redelivered batch changes nothing.
The sink goes before Redis in the sink list, so an alert never points at an object not yet written.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from worker.common import s3client

from . import s3
from .errors import DependencyDown, Misconfigured
from .sinks import ScoredImage, artefact_key, artefact_keys

_CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "bmp": "image/bmp", "tif": "image/tiff",
                  "webp": "image/webp", "gif": "image/gif"}


class S3Sink:
    """Uploads the artefacts of flagged images; ``write`` uploads (concurrently), ``flush`` is a no-op."""

    def __init__(self, client: Any, bucket: str, prefix: str = "invad", *, create_bucket: bool = False,
                 concurrency: int = 8):
        self.client, self.bucket, self.prefix = client, bucket, prefix
        self._create = create_bucket
        self._ready = False
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="invad-s3")

    @classmethod
    def from_config(cls, config: Any, client: Any = None) -> "S3Sink":
        return cls(client or s3.client_from_config(config), config.s3_bucket, config.s3_prefix,
                   create_bucket=config.s3_create_bucket, concurrency=config.fetch_concurrency)

    def setup(self) -> None:
        """Create the bucket when asked to (idempotent); raises DependencyDown while S3 is down."""
        if self._create and not self._ready:
            s3.ensure_bucket(self.client, self.bucket)
        self._ready = True

    def check(self, probe_name: str) -> None:
        """At start: the bucket exists (or is created when asked to) and this identity may write to it:
        a probe object under the prefix is put and deleted.

        Raises:
            DependencyDown: S3 is unreachable, throttling or failing with 5xx (the caller retries).
            Misconfigured: no such bucket, bad credentials, or no permission to write.
        """
        key = artefact_key(self.prefix, ".invad-probe", "start", probe_name, "probe")
        try:
            self.setup()
            self.client.head_bucket(Bucket=self.bucket)
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"probe", ContentType="text/plain")
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (Misconfigured, DependencyDown):
            raise
        except Exception as error:  # noqa: BLE001 - classified below
            if s3client.is_transient(error):
                raise s3.as_dependency_down(error, f"start-up check of bucket {self.bucket}") from error
            code = s3client.error_code(error)
            if code in ("NoSuchBucket", "404", "NotFound"):
                raise Misconfigured("s3", f"bucket {self.bucket!r} does not exist",
                                    "set INVAD_S3_BUCKET to an existing bucket, create it, or set "
                                    "INVAD_S3_CREATE_BUCKET=true") from error
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                        "AuthorizationHeaderMalformed"):
                raise Misconfigured("s3", f"credentials refused ({code})",
                                    "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the pod's role) to an "
                                    "identity of this store") from error
            if code in ("AccessDenied", "403", "AllAccessDisabled", "AccountProblem"):
                raise Misconfigured("s3", f"no permission to write s3://{self.bucket}/{self.prefix} ({code})",
                                    "grant s3:PutObject, s3:GetObject and s3:DeleteObject on the prefix "
                                    "(deploy/README.md has the policy)") from error
            raise Misconfigured("s3", f"start-up check failed ({type(error).__name__}: {error})",
                                "check INVAD_S3_ENDPOINT, INVAD_S3_REGION and the bucket name") from error

    def ping(self) -> bool:
        """True when the bucket answers a HEAD (the readiness check; any failure is False, never raised)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return True
        except Exception:  # noqa: BLE001 - unreachable, refused or missing: not ready, whatever the cause
            return False

    def key(self, product: str, line_id: str, image_id: str, name: str) -> str:
        return artefact_key(self.prefix, product, line_id, image_id, name)

    def artefact_uris(self, product: str, line_id: str, image_id: str, original_ext: str) -> dict[str, str]:
        keys = artefact_keys(self.prefix, product, line_id, image_id, original_ext)
        return {kind: f"s3://{self.bucket}/{key}" for kind, key in keys.items()}

    def write(self, batch: Sequence[ScoredImage]) -> None:
        """Upload every flagged image's three objects.

        Raises:
            DependencyDown: S3 unreachable, throttling or failing with 5xx (the loop retries the batch).
        """
        self.setup()
        puts = []
        for item in batch:
            if not item.flagged:
                continue
            r = item.record
            keys = artefact_keys(self.prefix, r.product, r.line_id, r.image_id, item.original_ext)
            puts.append((keys["original"], item.original or b"",
                         _CONTENT_TYPES.get(item.original_ext, "application/octet-stream")))
            puts.append((keys["overlay"], item.overlay or b"", "image/png"))
            puts.append((keys["record"], r.to_json(), "application/json"))
        errors = [error for error in self._pool.map(self._put, puts) if error is not None]
        if errors:
            transient = [e for e in errors if s3client.is_transient(e)]
            if transient:
                raise s3.as_dependency_down(transient[0], f"{len(errors)} of {len(puts)} uploads failed") from transient[0]
            raise errors[0]

    def _put(self, put: tuple[str, bytes, str]) -> BaseException | None:
        key, body, content_type = put
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)
            return None
        except Exception as error:  # noqa: BLE001 - returned and classified by write()
            return error

    def flush(self) -> None:
        """Nothing buffered: write() returns only after every PUT was acknowledged."""

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
