"""What the loop reports, as Prometheus metrics; and the liveness and readiness state the HTTP server reads.

The loop calls the hooks of :class:`NoMetrics` at fixed points (a batch polled, a stage finished, a
message scored or dead-lettered, a dependency down or back, a batch committed). :class:`NoMetrics`
does nothing; :class:`WorkerMetrics` keeps the counts in its own registry (one per worker, so several
workers in one process never collide) for :mod:`worker.pipeline.health_http` to serve.

Labels stay bounded: ``line_id`` and ``product`` come from messages, so each keeps at most
:data:`MAX_LABEL_VALUES` distinct values and reports later ones as ``_other``; image ids never
become labels. Counts are taken when a batch is committed, so a batch retried after an outage is
counted once.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, Iterable

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = structlog.get_logger("invad.pipeline.metrics")

STAGES = ("decode", "fetch", "score", "sinks", "dead_letters", "commit")
DEPENDENCIES = ("kafka", "redis", "s3")  # always exported (0 when up); others (https, file) once seen
MAX_LABEL_VALUES = {"line_id": 1000, "product": 200}
UNKNOWN, OTHER = "unknown", "_other"
# Stage latency: 1 ms (decoding a small batch) to 2 min (a slow fetch or a large CPU batch).
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = tuple(2 ** i for i in range(13))  # 1 .. 4096, the range of INVAD_BATCH_SIZE


class NoMetrics:
    """The loop's hooks, doing nothing: the default of :class:`~worker.pipeline.loop.Loop`."""

    def alive(self) -> None:
        """The loop turned (or is waiting out a dependency): the process is not stuck."""

    def source_ready(self, ready: bool) -> None:
        """The source is (not) a stable member of its consumer group."""

    def batch_polled(self, size: int) -> None:
        """A batch of ``size`` messages was polled and is now in flight."""

    def stage_done(self, stage: str, seconds: float) -> None:
        """``stage`` (one of :data:`STAGES`) of one batch finished in ``seconds``."""

    def scored(self, line_id: str, product: str, flagged: bool) -> None:
        """One message was scored (and flagged when ``flagged``); called once its batch is committed."""

    def dead_lettered(self, reason: str, line_id: str | None, product: str | None) -> None:
        """One message was dead-lettered for ``reason``; line and product are None when it did not decode."""

    def dependency_down(self, dependency: str) -> None:
        """``dependency`` (kafka, redis, s3, https, file) failed; the batch waits for it."""

    def dependency_up(self, dependency: str) -> None:
        """``dependency`` answered again after :meth:`dependency_down`."""

    def batch_committed(self, size: int) -> None:
        """A batch of ``size`` messages was committed and is no longer in flight."""

    def models_loaded(self, registry: Any) -> None:
        """The registry serves these bundles now (at start, and after each switch)."""

    def model_switched(self, product: str, release: str) -> None:
        """``product`` is served by the bundle activated as ``release`` from the next batch on."""

    def model_refused(self, product: str, reason: str) -> None:
        """A version activated for ``product`` was refused (``reason``: model_store.REFUSAL_REASONS)."""


class _Bounded:
    """Maps a label's values to themselves, up to ``limit`` distinct ones; later ones become ``_other``."""

    def __init__(self, name: str, limit: int):
        self.name, self.limit = name, limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        value = value or UNKNOWN
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
            if len(self._seen) == self.limit:  # warn once
                self._seen.add(OTHER)
                log.warning("metric_label_values_capped", label=self.name, limit=self.limit, reported_as=OTHER)
            return OTHER


class WorkerMetrics(NoMetrics):
    """Counts, latencies and gauges of one worker in :attr:`registry`, plus the liveness and readiness
    state the health endpoints read (:meth:`alive_age_s`, :attr:`models_ok`, :attr:`source_ok`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=r)
        where = ("line_id", "product")
        self.consumed = Counter("invad_messages_consumed", "Messages polled from the source (redeliveries "
                                "included)", registry=r)
        self.scored_total = Counter("invad_messages_scored", "Messages scored and committed", where, registry=r)
        self.flagged_total = Counter("invad_messages_flagged", "Messages scored as anomalous and committed", where,
                                     registry=r)
        self.dead_total = Counter("invad_messages_dead_lettered", "Messages sent to the dead-letter topic and "
                                  "committed, by reason", ("reason", *where), registry=r)
        self.batch_size = Histogram("invad_batch_size", "Messages per polled batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.stage_seconds = Histogram("invad_stage_seconds", "Time one batch spent in each stage (s)", ("stage",),
                                       buckets=STAGE_BUCKETS, registry=r)
        self.in_flight = Gauge("invad_batches_in_flight", "Batches polled and not yet committed", registry=r)
        self.committed = Counter("invad_batches_committed", "Batches committed", registry=r)
        self.last_commit = Gauge("invad_last_commit_timestamp_seconds", "Unix time of the last batch commit",
                                 registry=r)
        self.model = Info("invad_model", "The model bundle serving each product key (model_release: the version "
                          "it was activated under, for products that follow a pointer)", ("product",), registry=r)
        self.model_switches = Counter("invad_model_switches", "Bundles switched in without a restart (a new active "
                                      "version that passed its checks)", ("product",), registry=r)
        self.model_refused_total = Counter("invad_model_refused", "Activated versions refused (corrupt, wrong "
                                           "format or product, failed smoke check); the old bundle kept serving",
                                           ("product", "reason"), registry=r)
        for stage in STAGES:  # every series exists from the start, so rates and alerts see zeros
            self.stage_seconds.labels(stage)
        self._line, self._product = (_Bounded(name, MAX_LABEL_VALUES[name]) for name in where)
        self._down = _DependencyDown(DEPENDENCIES)
        self._lag_of: Callable[[], dict[tuple[str, int], int]] | None = None
        self._drift_of: Callable[[], Iterable[Any]] | None = None
        self._last_alive = time.monotonic()  # the start counts as a turn: loading models is not being stuck
        self.models_ok = False
        self.source_ok = False
        r.register(self._down)
        r.register(_Callback(self._collect_lag))
        r.register(_Callback(self._collect_drift))
        r.register(_Callback(self._collect_loop))
        r.register(_Callback(_collect_gpu))

    # -- set up by the command ------------------------------------------------------------------
    def models_loaded(self, registry: Any) -> None:
        """Export each product key's bundle name and version (:class:`ModelRegistry`); models now count as loaded."""
        current = registry.current()
        for product, detector in current.by_product().items():
            self.model.labels(product).info({"model_name": str(getattr(detector, "name", UNKNOWN)),
                                             "model_version": str(getattr(detector, "version", UNKNOWN)),
                                             "model_release": current.release(product) or ""})
        self.models_ok = True

    def model_switched(self, product: str, release: str) -> None:
        self.model_switches.labels(self._product(product)).inc()

    def model_refused(self, product: str, reason: str) -> None:
        self.model_refused_total.labels(self._product(product), reason).inc()

    def watch_lag(self, lag: Callable[[], dict[tuple[str, int], int]]) -> None:
        """``lag()`` gives ``{(topic, partition): messages behind}`` from a cache, safe from any thread."""
        self._lag_of = lag

    def watch_drift(self, statuses: Callable[[], Iterable[Any]]) -> None:
        """``statuses()`` gives the drift watch's latest status per (line, product), each with
        ``line_id``, ``product`` and ``drifting`` (:meth:`DriftSink.statuses`), safe from any thread."""
        self._drift_of = statuses

    def alive_age_s(self) -> float:
        """Seconds since the loop last turned (or since start, before its first turn)."""
        return time.monotonic() - self._last_alive

    # -- the loop's hooks -----------------------------------------------------------------------
    def alive(self) -> None:
        self._last_alive = time.monotonic()

    def source_ready(self, ready: bool) -> None:
        self.source_ok = bool(ready)

    def batch_polled(self, size: int) -> None:
        self.consumed.inc(size)
        self.batch_size.observe(size)
        self.in_flight.inc()

    def stage_done(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)

    def scored(self, line_id: str, product: str, flagged: bool) -> None:
        labels = (self._line(line_id), self._product(product))
        self.scored_total.labels(*labels).inc()
        flagged_child = self.flagged_total.labels(*labels)  # created at 0, so flag rates have a series
        if flagged:
            flagged_child.inc()

    def dead_lettered(self, reason: str, line_id: str | None, product: str | None) -> None:
        self.dead_total.labels(reason, self._line(line_id), self._product(product)).inc()

    def dependency_down(self, dependency: str) -> None:
        self._down.down(dependency)

    def dependency_up(self, dependency: str) -> None:
        self._down.up(dependency)

    def batch_committed(self, size: int) -> None:
        self.in_flight.dec()
        self.committed.inc()
        self.last_commit.set_to_current_time()

    # -- collected at scrape time ---------------------------------------------------------------
    def _collect_lag(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("invad_consumer_lag", "Messages in each assigned partition not yet polled "
                                   "(end offset - position), refreshed every few seconds", labels=["topic", "partition"])
        lag = self._lag_of() if self._lag_of is not None else {}
        for (topic, partition), behind in sorted(lag.items()):
            family.add_metric([topic, str(partition)], behind)
        yield family

    def _collect_drift(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("invad_drift_state", "1 while a line and product drift from the bundle's "
                                   "calibration (flag rate or score distribution), 0 while calibrated",
                                   labels=["line_id", "product"])
        for status in (self._drift_of() if self._drift_of is not None else ()):
            family.add_metric([self._line(status.line_id), self._product(status.product)], int(bool(status.drifting)))
        yield family

    def _collect_loop(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("invad_loop_idle_seconds", "Seconds since the loop last turned",
                                value=self.alive_age_s())


class _Callback:
    """A collector made of one function (registered with its names, since the registry describes it)."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]):
        self.collect = collect


class _DependencyDown:
    """``invad_dependency_down`` (1 while down) and ``invad_dependency_down_seconds_total``, which grows
    during an outage, not only once it ends."""

    def __init__(self, names: Iterable[str]):
        self._lock = threading.Lock()
        self._since: dict[str, float | None] = {name: None for name in names}
        self._total: dict[str, float] = {name: 0.0 for name in names}

    def down(self, name: str) -> None:
        with self._lock:
            if self._since.get(name) is None:
                self._since[name] = time.monotonic()
                self._total.setdefault(name, 0.0)

    def up(self, name: str) -> None:
        with self._lock:
            since = self._since.get(name)
            if since is not None:
                self._total[name] += time.monotonic() - since
                self._since[name] = None

    def collect(self) -> Iterable[Metric]:
        now = time.monotonic()
        state = GaugeMetricFamily("invad_dependency_down", "1 while the dependency is down and the batch waits",
                                  labels=["dependency"])
        seconds = CounterMetricFamily("invad_dependency_down_seconds", "Seconds the worker waited for each "
                                      "dependency", labels=["dependency"])
        with self._lock:
            for name in sorted(self._total):
                since = self._since.get(name)
                state.add_metric([name], 0 if since is None else 1)
                seconds.add_metric([name], self._total[name] + (0 if since is None else now - since))
        yield state
        yield seconds


def _collect_gpu() -> Iterable[Metric]:
    """CUDA memory per device, only in a process that already uses CUDA (torch is never imported here)."""
    family = GaugeMetricFamily("invad_gpu_memory_bytes", "CUDA memory by device and kind (allocated, reserved "
                               "by the caching allocator, total)", labels=["device", "kind"])
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            for index in range(torch.cuda.device_count()):
                device = f"cuda:{index}"
                family.add_metric([device, "allocated"], torch.cuda.memory_allocated(index))
                family.add_metric([device, "reserved"], torch.cuda.memory_reserved(index))
                family.add_metric([device, "total"], torch.cuda.get_device_properties(index).total_memory)
    except Exception as error:  # noqa: BLE001 - a scrape must never fail for a GPU query
        log.debug("gpu_metrics_failed", error=repr(error))
    yield family
