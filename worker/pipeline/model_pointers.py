"""Each product's active model version, a pointer in Redis that workers poll (schemas/REDIS_LAYOUT.md).

    {prefix}:model:{product}:active    the active version: JSON of :class:`Pointer`
    {prefix}:model:{product}:history   activations, newest first; the first is the active one
    {prefix}:model:products            products that have an active version

Redis rather than S3 for the pointer: reading every product's pointer is one MGET, cheap enough for
every worker to do every few seconds, and activation and roll-back change pointer and history in one
MULTI/EXEC. A pointer names its version's manifest and that manifest's sha256, so a worker loads
exactly what was activated even if someone overwrites the objects in S3 afterwards.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

import redis.exceptions as rerrors

from schemas import RedisLayout
from worker.common import redis_client

from .redis_sink import classify_redis_error, worker_client

HISTORY_MAX = 50  # activations kept per product: how far `invad models rollback` can go back
T = TypeVar("T")


@dataclass(frozen=True)
class Pointer:
    """One activation of a published version."""

    product: str
    version: str
    bucket: str
    manifest_key: str
    manifest_sha256: str
    activated_at: str
    activated_by: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> "Pointer":
        """Raises ValueError naming what is wrong with a stored pointer."""
        try:
            body = json.loads(raw)
            return cls(**{name: str(body[name]) for name in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"model pointer {raw!r:.200} is not valid: {error!r}; activate a version again "
                             "with `invad models activate`") from error

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.manifest_key}"

    def same_target(self, other: "Pointer | None") -> bool:
        """True when ``other`` activates the very same manifest (whenever and by whom)."""
        return other is not None and (self.version, self.bucket, self.manifest_key, self.manifest_sha256) == \
            (other.version, other.bucket, other.manifest_key, other.manifest_sha256)

    @classmethod
    def now(cls, product: str, version: str, bucket: str, manifest_key: str, manifest_sha256: str,
            by: str) -> "Pointer":
        """An activation made now by ``by``."""
        return cls(product, version, bucket, manifest_key, manifest_sha256,
                   datetime.now(timezone.utc).isoformat(timespec="seconds"), by)

    def renewed(self, by: str) -> "Pointer":
        """This pointer activated again now, by ``by``."""
        return Pointer.now(self.product, self.version, self.bucket, self.manifest_key, self.manifest_sha256, by)


class NothingToRollBack(ValueError):
    """The product has no earlier activation to return to."""


class PointerStore:
    """Reads and changes the pointers. Every Redis failure is raised classified: DependencyDown while
    Redis is unreachable or loading, Misconfigured when it refuses the credentials or a command."""

    def __init__(self, client: Any, layout: RedisLayout):
        self.client, self.layout = client, layout

    @classmethod
    def from_settings(cls, settings: Any, timeout_s: float = 5.0) -> "PointerStore":
        """From ``redis_url``, ``redis_prefix`` and the Redis TLS files of ``settings`` (a WorkerConfig,
        or ``read_settings`` of those names)."""
        client = worker_client(settings.redis_url, timeout_s, redis_client.tls_settings(settings))
        return cls(client, RedisLayout(prefix=settings.redis_prefix))

    def _call(self, what: Callable[[], T]) -> T:
        try:
            return what()
        except rerrors.RedisError as error:
            meaning = classify_redis_error(error)
            if meaning is None:
                raise
            raise meaning from error

    def active(self, product: str) -> Pointer | None:
        raw = self._call(lambda: self.client.get(self.layout.model_active_key(product)))
        return Pointer.from_json(raw) if raw else None

    def active_many(self, products: list[str]) -> dict[str, Pointer | None]:
        """Each product's active pointer (None when it has none) in one round trip. Raises ValueError
        for a pointer that is not valid JSON of a Pointer."""
        if not products:
            return {}
        raws = self._call(lambda: self.client.mget([self.layout.model_active_key(p) for p in products]))
        return {product: Pointer.from_json(raw) if raw else None for product, raw in zip(products, raws)}

    def products(self) -> list[str]:
        """Products that have an active version."""
        return sorted(m.decode() for m in self._call(lambda: self.client.smembers(self.layout.model_products_key)))

    def history(self, product: str) -> list[Pointer]:
        """Activations of ``product``, newest first (the first is the active one)."""
        raws = self._call(lambda: self.client.lrange(self.layout.model_history_key(product), 0, -1))
        return [Pointer.from_json(raw) for raw in raws]

    def activate(self, pointer: Pointer) -> Pointer | None:
        """Make ``pointer`` the product's active version and the newest history entry; nothing changes
        when that very manifest is active already. Returns the pointer it replaced (or None)."""
        layout, product = self.layout, pointer.product
        previous = self.active(product)
        if pointer.same_target(previous):
            return previous

        def write() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.set(layout.model_active_key(product), pointer.to_json())
            pipe.lpush(layout.model_history_key(product), pointer.to_json())
            pipe.ltrim(layout.model_history_key(product), 0, HISTORY_MAX - 1)
            pipe.sadd(layout.model_products_key, product)
            pipe.execute()
        self._call(write)
        return previous

    def rollback(self, product: str, by: str) -> tuple[Pointer, Pointer]:
        """Return ``product`` to the version active before the current one: (from, to). The current
        activation leaves the history, so a second roll-back goes one further back.

        Raises:
            NothingToRollBack: no active version, or no earlier one in the history.
        """
        active_key, history_key = self.layout.model_active_key(product), self.layout.model_history_key(product)

        def attempt() -> tuple[Pointer, Pointer] | None:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.watch(active_key, history_key)
                raw = pipe.get(active_key)
                if not raw:
                    raise NothingToRollBack(f"product {product!r} has no active version: nothing to roll back "
                                            "(`invad models list` shows what is published)")
                current = Pointer.from_json(raw)
                history = [Pointer.from_json(entry) for entry in pipe.lrange(history_key, 0, -1)]
                skip = 0
                while skip < len(history) and history[skip].same_target(current):
                    skip += 1
                if skip >= len(history):
                    raise NothingToRollBack(f"product {product!r} has no version before {current.version} in its "
                                            "history; activate one by name with `invad models activate`")
                target = history[skip].renewed(by)
                pipe.multi()
                pipe.set(active_key, target.to_json())
                pipe.ltrim(history_key, skip, -1)
                pipe.lset(history_key, 0, target.to_json())
                try:
                    pipe.execute()
                except rerrors.WatchError:
                    return None  # changed meanwhile: read again
                return current, target

        for _ in range(10):
            done = self._call(attempt)
            if done is not None:
                return done
        raise NothingToRollBack(f"the pointer of {product!r} kept changing during the roll-back; try again")

    def close(self) -> None:
        self.client.close()
