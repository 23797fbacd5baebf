"""Model roll-out without a restart: follow each product's active-version pointer.

At start, :meth:`ModelRollout.start` loads the version each watched product's pointer names (or, when
that one is refused, the newest earlier one in its history that passes) before the first message.
Then a thread reads the pointers every INVAD_MODEL_WATCH_S. When one names another version:

1. download it to INVAD_MODEL_CACHE_DIR, every file checked against the manifest, the manifest
   against the sha256 in the pointer (:mod:`worker.pipeline.model_store`);
2. load it beside the bundle in service (``Detector.from_pretrained``);
3. score its smoke images (:mod:`worker.pipeline.model_smoke`);
4. swap it into the :class:`~worker.pipeline.models.LiveRegistry`: the next batch the loop decodes is
   routed to it; batches already in flight finish with the detector they were routed to, which is
   released when the last of them is committed (logged as ``model_released``).

A version that fails 1-3 for a reason of its own is refused: a ``model_refused`` log line,
``invad_model_refused_total{product, reason}`` + 1, the old bundle keeps serving, and that pointer is
not tried again until it changes. A dependency that fails (Redis, S3) is only retried at the next poll.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import structlog

from worker.common import s3client

from . import s3
from .errors import BadRecord, DependencyDown, Misconfigured
from .metrics import NoMetrics
from .model_pointers import Pointer, PointerStore
from .model_smoke import smoke_check
from .model_store import ModelStore, Refused, prune_cache
from .models import LiveRegistry, ModelRegistry, default_loader

log = structlog.get_logger("invad.pipeline.model_watch")


@dataclass(frozen=True)
class _Serving:
    pointer: Pointer
    folder: Path


class ModelRollout:
    """Loads, checks and switches the bundles of the products in ``config.model_pointers``."""

    def __init__(self, config: Any, pointers: PointerStore, s3_client: Any, metrics: NoMetrics | None = None,
                 loader: Callable[[str, str | None], Any] = default_loader):
        self.products = tuple(config.model_pointers)
        self.cache_dir, self.device, self.watch_s = config.model_cache_dir, config.device, config.model_watch_s
        self.pointers, self.s3_client, self.loader = pointers, s3_client, loader
        self.metrics = metrics or NoMetrics()
        self.live: LiveRegistry | None = None
        self._serving: dict[str, _Serving] = {}
        self._refused: dict[str, Pointer] = {}
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: Any, metrics: NoMetrics | None = None) -> "ModelRollout":
        return cls(config, PointerStore.from_settings(config), s3.client_from_config(config),
                   metrics)

    # -- start ----------------------------------------------------------------------------------
    def start(self, live: LiveRegistry) -> LiveRegistry:
        """Load every watched product's version into ``live`` before the first message; the bundles
        ``live`` holds already (INVAD_MODELS) serve the products no pointer names. Returns ``live``.

        Raises:
            DependencyDown: Redis or S3 is unreachable (the caller waits and calls again).
            Misconfigured: a named product has no active version, or no version of it passes the
                checks; or Redis or S3 refuses our credentials.
        """
        products = self._watched()
        if not products:
            raise Misconfigured("models", "INVAD_MODEL_POINTERS=* but no product has an active model version",
                                "publish and activate one (`invad models publish`, `invad models activate`)")
        mapping = live.by_product()
        releases: dict[str, str] = {}
        for product in products:
            mapping[product], releases[product] = self._start_product(product)
        live.replace(ModelRegistry(mapping, releases))
        self.live = live
        self.metrics.models_loaded(live)
        return live

    def _start_product(self, product: str) -> tuple[Any, str]:
        active = self.pointers.active(product)
        if active is None:
            raise Misconfigured("models", f"product {product!r} has no active model version",
                                f"`invad models activate {product} VERSION` (`invad models list {product}` shows "
                                "what is published), or remove it from INVAD_MODEL_POINTERS")
        candidates: list[Pointer] = []
        for pointer in [active, *self.pointers.history(product)]:
            if not any(pointer.same_target(seen) for seen in candidates):
                candidates.append(pointer)
        for pointer in candidates:
            try:
                detector, folder = self._prepare(product, pointer)
            except Refused as error:
                self._refuse(product, pointer, error)
                continue
            if pointer is not active:
                log.error("model_fallback_at_start", product=product, active=active.version, serving=pointer.version,
                          hint="the active version was refused; roll back or activate a good version")
            self._serving[product] = _Serving(pointer, folder)
            return detector, pointer.version
        raise Misconfigured("models", f"no version of product {product!r} passes the checks (tried "
                            f"{[p.version for p in candidates]}; the model_refused log lines say why)",
                            f"publish a good bundle and `invad models activate {product} VERSION`")

    # -- watching -------------------------------------------------------------------------------
    def watch(self) -> None:
        """Poll the pointers every ``watch_s`` in a thread until :meth:`close`."""
        self._thread = threading.Thread(target=self._run, name="invad-models", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.wait(self.watch_s):
            try:
                self.poll_once()
            except DependencyDown as error:
                log.warning("model_watch_waiting", dependency=error.dependency, error=error.message)
            except Misconfigured as error:
                log.error("model_watch_refused", dependency=error.dependency, problem=error.problem, fix=error.fix)
            except Exception as error:  # noqa: BLE001 - the watcher must outlive a bad pointer or a bug here
                log.error("model_watch_failed", error=repr(error), exc_info=error)

    def poll_once(self) -> None:
        """Read the pointers once; switch every product whose pointer names a new version that passes."""
        assert self.live is not None, "start() first"
        for product, pointer in self.pointers.active_many(self._watched()).items():
            serving = self._serving.get(product)
            if pointer is None or pointer.same_target(serving.pointer if serving else None):
                self._refused.pop(product, None)
                continue
            if pointer.same_target(self._refused.get(product)):
                continue  # refused already: not again until the pointer changes
            self._refused.pop(product, None)
            try:
                detector, folder = self._prepare(product, pointer)
            except Refused as error:
                self._refuse(product, pointer, error)
                continue
            self._switch(product, pointer, detector, folder)

    def _switch(self, product: str, pointer: Pointer, detector: Any, folder: Path) -> None:
        assert self.live is not None
        old = self.live.swap(product, detector, pointer.version)
        previous = self._serving.get(product)
        self._serving[product] = _Serving(pointer, folder)
        log.info("model_switched", product=product, version=pointer.version, model_version=detector.version,
                 previous=previous.pointer.version if previous else None, location=pointer.location)
        self.metrics.model_switched(product, pointer.version)
        self.metrics.models_loaded(self.live)
        if old is not None and old not in self.live.detectors():
            # The batches in flight hold the old detector; it goes when the last of them is committed.
            weakref.finalize(old, log.info, "model_released", product=product,
                             version=previous.pointer.version if previous else None,
                             model_version=getattr(old, "version", None))
        prune_cache(self.cache_dir, product, {folder} | ({previous.folder} if previous else set()))

    def _watched(self) -> list[str]:
        return self.pointers.products() if self.products == ("*",) else list(self.products)

    # -- one version ----------------------------------------------------------------------------
    def _prepare(self, product: str, pointer: Pointer) -> tuple[Any, Path]:
        """Download, verify, load and smoke-check ``pointer``'s version: (detector, its folder).

        Raises:
            Refused: the version itself cannot be served.
            DependencyDown: S3 is unreachable. Misconfigured: S3 refuses us, or the cache is unwritable.
        """
        log.info("model_loading", product=product, version=pointer.version, location=pointer.location)
        store = ModelStore(self.s3_client, pointer.bucket)
        try:
            manifest, folder = store.download(pointer.manifest_key, product, pointer.version, pointer.manifest_sha256,
                                              self.cache_dir)
        except s3client.S3_ERRORS as error:
            if s3client.is_transient(error):
                raise s3.as_dependency_down(error, f"downloading {pointer.location}") from error
            raise Misconfigured("s3", f"cannot read {pointer.location} ({s3client.error_code(error)}: {error})",
                                "grant the worker s3:GetObject on the model prefix, or fix INVAD_MODEL_BUCKET") \
                from error
        except OSError as error:
            raise Misconfigured("models", f"cannot write the model cache {self.cache_dir} ({error})",
                                "point INVAD_MODEL_CACHE_DIR at a writable folder with room for two bundles") \
                from error
        try:
            detector = self.loader(str(folder / "bundle"), self.device)
        except Exception as error:  # noqa: BLE001 - whatever a broken bundle raises, it is refused
            raise Refused("bundle_invalid", f"{pointer.location}: {error}") from error
        if getattr(detector, "version", None) != manifest.bundle_version:
            raise Refused("bundle_invalid", f"{pointer.location}: loaded bundle {getattr(detector, 'version', None)}, "
                          f"the manifest says {manifest.bundle_version}")
        try:
            route = ModelRegistry({product: detector}).route(product)
        except (ValueError, BadRecord) as error:
            raise Refused("wrong_product", f"{pointer.location}: {error}") from error
        seen = smoke_check(route, [folder / name for name in manifest.smoke_files()])
        log.info("model_verified", product=product, version=pointer.version, model_version=detector.version, **seen)
        return detector, folder

    def _refuse(self, product: str, pointer: Pointer, error: Refused) -> None:
        self._refused[product] = pointer
        serving = self._serving.get(product)
        log.error("model_refused", product=product, version=pointer.version, reason=error.reason, error=error.message,
                  serving=serving.pointer.version if serving else None, location=pointer.location)
        self.metrics.model_refused(product, error.reason)

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.pointers.close()
