"""Product key -> Detector, each bundle loaded once per process.

A mapping is ``(("bottle", "/models/a"), ("*", "/models/b"))``: an explicit product uses its bundle,
``*`` serves every other product. A class-conditional bundle (``detector.classes`` non-empty) serves
exactly its classes: a product it does not know is an ``unknown_product`` dead letter, never a
silent fallback to another class. A single-class bundle serves every product mapped to it.

A :class:`ModelRegistry` never changes. A worker that follows the active-version pointers
(INVAD_MODEL_POINTERS, :mod:`worker.pipeline.model_watch`) holds a :class:`LiveRegistry`, whose
registry is replaced whole when a new bundle is switched in; the loop takes :meth:`current` once per
batch, so one batch is routed by one registry and a batch in flight keeps the detector it was routed to.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import structlog

from .errors import UNKNOWN_PRODUCT, BadRecord

log = structlog.get_logger("invad.pipeline.models")


@dataclass(frozen=True)
class Route:
    """How one product is scored: by ``detector`` with class ``cls`` (None for an unconditional bundle);
    ``release`` is the version the bundle was activated under (None for a bundle configured by path)."""
    detector: Any
    cls: str | None
    release: str | None = None


def default_loader(path: str, device: str | None) -> Any:
    # Imported here, not at the top: torch takes seconds to load, and every `invad` command (produce,
    # --help) builds this package's CLI; only a worker that loads a bundle needs it.
    from worker.core.detector import Detector
    return Detector.from_pretrained(path, device=device)


class ModelRegistry:
    """Resolves a product key to a :class:`Route`; built once at start, read-only afterwards."""

    def __init__(self, mapping: Mapping[str, Any], releases: Mapping[str, str] | None = None):
        """``mapping``: product (or "*") -> loaded Detector; ``releases``: product -> the version its
        bundle was activated under, for products that follow a pointer. Raises ValueError when an
        explicitly mapped product is not a class of its class-conditional bundle."""
        self._explicit: dict[str, Any] = {k: v for k, v in mapping.items() if k != "*"}
        self._fallback = mapping.get("*")
        self._releases: dict[str, str] = dict(releases or {})
        if not self._explicit and self._fallback is None:
            raise ValueError("INVAD_MODELS is empty: give a bundle path, or product=path pairs")
        for product, detector in self._explicit.items():
            classes = tuple(getattr(detector, "classes", ()) or ())
            if len(classes) > 1 and product not in classes:
                raise ValueError(f"INVAD_MODELS: product {product!r} is mapped to bundle "
                                 f"{getattr(detector, 'name', '?')!r}, whose classes are {list(classes)}")

    @classmethod
    def load(cls, models: Iterable[tuple[str, str]], device: str | None = None,
             loader: Callable[[str, str | None], Any] = default_loader) -> "ModelRegistry":
        """Load every distinct bundle path once. Raises ValueError naming a bad bundle and its product."""
        by_path: dict[str, Any] = {}
        mapping: dict[str, Any] = {}
        for product, path in models:
            if path not in by_path:
                try:
                    by_path[path] = loader(path, device)
                except (ValueError, OSError) as error:
                    raise ValueError(f"INVAD_MODELS: cannot load bundle {path!r} for product {product!r}: {error}") from error
                detector = by_path[path]
                log.info("model_loaded", product=product, path=path, model_name=getattr(detector, "name", None),
                         model_version=getattr(detector, "version", None),
                         classes=list(getattr(detector, "classes", ()) or ()), device=str(getattr(detector, "device", "")))
            mapping[product] = by_path[path]
        return cls(mapping)

    def route(self, product: str) -> Route:
        """The detector and class for ``product``.

        Raises:
            BadRecord: ``unknown_product`` when no bundle serves it (the message names what is served).
        """
        detector = self._explicit.get(product, self._fallback)
        if detector is None:
            raise BadRecord(UNKNOWN_PRODUCT, f"product {product!r} has no model; served: {self.served()}")
        release = self._releases.get(product if product in self._explicit else "*")
        classes = tuple(getattr(detector, "classes", ()) or ())
        if product in classes:
            return Route(detector, product, release)
        if len(classes) <= 1:  # a single-class bundle serves every product mapped to it
            return Route(detector, None, release)
        raise BadRecord(UNKNOWN_PRODUCT, f"product {product!r} is not a class of bundle "
                        f"{getattr(detector, 'name', '?')!r}; served: {self.served()}")

    def current(self) -> "ModelRegistry":
        """The registry to route one batch with: this one (it never changes)."""
        return self

    def with_model(self, product: str, detector: Any, release: str | None) -> "ModelRegistry":
        """A new registry in which ``product`` is served by ``detector``, activated as ``release``.
        Raises ValueError like the constructor."""
        mapping = {**self.by_product(), product: detector}
        releases = {**self._releases, product: release} if release else \
            {k: v for k, v in self._releases.items() if k != product}
        return ModelRegistry(mapping, releases)

    def release(self, product: str) -> str | None:
        """The version ``product``'s bundle was activated under (None for a bundle configured by path)."""
        return self._releases.get(product)

    def served(self) -> list[str]:
        """Human-readable list of the products served ("*" when any product is)."""
        names = set(self._explicit)
        if self._fallback is not None:
            classes = tuple(getattr(self._fallback, "classes", ()) or ())
            names.update(classes if len(classes) > 1 else ("*",))
        return sorted(names)

    def by_product(self) -> dict[str, Any]:
        """Each configured product key ("*" for the fallback) -> its detector, for logging and metrics."""
        mapping = dict(self._explicit)
        if self._fallback is not None:
            mapping["*"] = self._fallback
        return mapping

    def detectors(self) -> list[Any]:
        """Every distinct detector, for warm-up and logging."""
        seen: dict[int, Any] = {}
        for detector in [*self._explicit.values(), self._fallback]:
            if detector is not None:
                seen.setdefault(id(detector), detector)
        return list(seen.values())


class LiveRegistry:
    """The registry of a worker whose bundles can change while it runs: :meth:`replace` and
    :meth:`swap` replace the current :class:`ModelRegistry` whole (under a lock); readers take
    :meth:`current` and keep it. Made empty or with the static bundles (INVAD_MODELS) before the
    pointers are read, so the sinks can be given it before the first model is loaded."""

    def __init__(self, registry: ModelRegistry | None = None):
        self._current = registry
        self._lock = threading.Lock()

    def current(self) -> ModelRegistry:
        """The registry now; route a whole batch with it. Raises RuntimeError before any model is loaded."""
        current = self._current
        if current is None:
            raise RuntimeError("no model is loaded yet: ModelRollout.start() fills this registry")
        return current

    def replace(self, registry: ModelRegistry) -> None:
        """Serve ``registry`` from the next batch on."""
        with self._lock:
            self._current = registry

    def swap(self, product: str, detector: Any, release: str | None) -> Any:
        """Serve ``product`` with ``detector`` from the next batch on; returns the detector it replaced
        (None when the product was new). Raises ValueError like :class:`ModelRegistry`."""
        with self._lock:
            old = self.current().by_product().get(product)
            self._current = self.current().with_model(product, detector, release)
        return old

    def route(self, product: str) -> Route:
        return self.current().route(product)

    def release(self, product: str) -> str | None:
        return self.current().release(product)

    def served(self) -> list[str]:
        return self.current().served()

    def by_product(self) -> dict[str, Any]:
        return self._current.by_product() if self._current is not None else {}

    def detectors(self) -> list[Any]:
        return self._current.detectors() if self._current is not None else []
