"""Drift watch: per line and product, a rolling window of scores compared with the bundle's calibration.

A sink (the loop needs no change): ``write`` stages every scored image, ``flush`` adds them to their
window, tests each window it touched and publishes the changes of state. Two tests per window, both
against the calibration of the bundle that scored it:

1. flag rate: of n images k are flagged, and a normal image is flagged with probability p0 (the
   bundle's target false-positive rate, or the share of its calibration normals above the threshold
   where that is larger). One-sided binomial p-value P(X >= k | n, p0), so only a real excess fires.
2. score shift: two-sample Kolmogorov-Smirnov test of the window's scores against the calibration
   normals' scores stored in the bundle (calibration_scores.json; without it this test is off, logged
   once per bundle version).

A window of at least ``min_count`` images turns "drifting" when a test's p-value is below
``p_threshold``, and back to "ok" when every p-value is at least sqrt(p_threshold) (halfway to 1 on a
log scale), so a window on the edge does not flap. A change writes the status hash
``{prefix}:drift:{line}:{product}`` and adds one drift entry to the alert stream, in one Lua script that
compares with the stored state first (schemas.redis_layout.DRIFT_ONCE_LUA): a replayed batch, a
restarted worker or two workers seeing the same change add one entry. A worker reads the stored state
of a line the first time it sees it, so it resumes "drifting" after a restart instead of re-alerting.

Windows are keyed by image_id, so a redelivered image replaces itself instead of counting twice, and
restart when the model version of a line's records changes (another calibration). ``statuses()`` is
the hook for a gauge.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import numpy as np
import redis.exceptions as rerrors
import structlog

from schemas import DRIFT_ONCE_LUA, DriftEntry, RedisLayout, drift_event_id
from worker.common import redis_client

from .redis_sink import check_at_start, classify_redis_error, close_client, worker_client
from .sinks import ScoredImage

log = structlog.get_logger("invad.pipeline.drift")

OK, DRIFTING = "ok", "drifting"
FLAG_RATE, SCORE_SHIFT = "flag_rate", "score_shift"
MIN_CALIBRATION_SCORES = 10  # fewer calibration normals cannot say what a normal score range is


@dataclass(frozen=True)
class Baseline:
    """What a bundle's calibration says of normal images: its target false-positive rate and, when the
    bundle stores them, its calibration normals' scores (sorted)."""
    version: str
    target_fpr: float
    scores: np.ndarray | None


def registry_baselines(registry: Any) -> Callable[[str], Baseline | None]:
    """product -> the Baseline of the bundle that scores it (None where the detector has no calibration,
    e.g. the benchmarks' null detector)."""
    def baseline(product: str) -> Baseline | None:
        route = registry.route(product)
        detector = route.detector
        config = getattr(detector, "config", None)
        if config is None or not hasattr(config, "target_fpr"):
            return None
        classes = tuple(getattr(detector, "classes", ()) or ())
        cls = route.cls or (classes[0] if classes else None)
        stored = (getattr(detector, "calibration_scores", None) or {}).get(cls)
        scores = np.sort(np.asarray(stored, dtype=np.float64)) if stored else None
        return Baseline(str(getattr(detector, "version", "unknown")), float(config.target_fpr), scores)
    return baseline


@dataclass(frozen=True)
class DriftSettings:
    """Window length, the fewest images tested, and the p-value below which a test fires (their defaults
    and documentation: INVAD_DRIFT_* in config.py)."""
    window: int
    min_count: int
    p_threshold: float

    def __post_init__(self) -> None:
        if not 1 <= self.min_count <= self.window:
            raise ValueError(f"drift min_count must be in [1, window={self.window}], got {self.min_count}")
        if not 0.0 < self.p_threshold < 0.5:
            raise ValueError(f"drift p_threshold must be in (0, 0.5), got {self.p_threshold}")

    @property
    def recover_p(self) -> float:
        return math.sqrt(self.p_threshold)

    @classmethod
    def from_config(cls, config: Any) -> "DriftSettings":
        return cls(config.drift_window, config.drift_min_count, config.drift_p_value)


@dataclass(frozen=True)
class DriftStatus:
    """The last evaluation of one line and product (what a gauge reads).

    ``flag_rate_p``/``score_shift_p`` are None until the window holds ``min_count`` images (and
    ``score_shift_p`` also where the bundle stores no calibration scores)."""
    line_id: str
    product: str
    state: str
    window: int
    flagged: int
    expected_fpr: float
    flag_rate_p: float | None = None
    score_shift_p: float | None = None
    score_shift_statistic: float | None = None
    tests: tuple[str, ...] = ()
    model_version: str = ""

    @property
    def drifting(self) -> bool:
        return self.state == DRIFTING


def window_p_values(scores: np.ndarray, flagged: int, expected_fpr: float,
                calibration: np.ndarray | None) -> tuple[float, float | None, float | None]:
    """(flag-rate p-value, score-shift p-value or None, KS statistic D or None) of one window.

    ``scores``: (n,) the window's scores; ``flagged``: how many of them were flagged;
    ``calibration``: (m,) the calibration normals' scores, or None (test 2 skipped)."""
    from scipy.stats import binom, ks_2samp  # here: only a worker that watches drift pays for scipy.stats

    n = int(scores.size)
    # 1. P(X >= k) for X ~ Binomial(n, p0): sf(k - 1) = 1 - cdf(k - 1)
    flag_p = float(binom.sf(flagged - 1, n, expected_fpr)) if flagged > 0 else 1.0
    if calibration is None:
        return flag_p, None, None
    # 2. two-sided two-sample KS: the largest gap between the two empirical CDFs, D, and its p-value
    result = ks_2samp(scores, calibration, alternative="two-sided")
    return flag_p, float(result.pvalue), float(result.statistic)


@dataclass
class _Window:
    version: str
    size: int
    items: "OrderedDict[str, tuple[float, bool]]" = field(default_factory=OrderedDict)

    def add(self, image_id: str, score: float, flagged: bool) -> None:
        self.items[image_id] = (score, flagged)  # a redelivered image replaces its own entry
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def arrays(self) -> tuple[np.ndarray, int]:
        values = np.fromiter((score for score, _ in self.items.values()), dtype=np.float64, count=len(self.items))
        return values, sum(flag for _, flag in self.items.values())


class DriftSink:
    """Watches every (line, product) for drift; publishes state changes to Redis (see the module docstring)."""

    def __init__(self, url: str, layout: RedisLayout, baselines: Callable[[str], Baseline | None],
                 settings: DriftSettings, *, client: Any = None, socket_timeout_s: float = 5.0,
                 tls: dict[str, str | None] | None = None):
        self.layout, self.settings, self._baseline_of = layout, settings, baselines
        self._client = client or worker_client(url, socket_timeout_s, tls)
        self._script = self._client.register_script(DRIFT_ONCE_LUA)
        self._pending: dict[str, Any] = {}  # image_id -> ScoreRecord
        self._windows: dict[tuple[str, str], _Window] = {}
        self._states: dict[tuple[str, str], str] = {}  # as stored in Redis, read at first sight
        self._status: dict[tuple[str, str], DriftStatus] = {}  # read by a metrics thread: under _lock
        self._lock = threading.Lock()
        self._baselines: dict[str, Baseline | None] = {}
        self._warned: set[tuple[str, str]] = set()

    @classmethod
    def from_config(cls, config: Any, registry: Any) -> "DriftSink":
        layout = RedisLayout(prefix=config.redis_prefix, record_ttl_s=config.record_ttl_s,
                             alerts_maxlen=config.alert_stream_maxlen)
        return cls(config.redis_url, layout, registry_baselines(registry), DriftSettings.from_config(config),
                   tls=redis_client.tls_settings(config))

    # -- the gauge hook -----------------------------------------------------------------------------
    def statuses(self) -> list[DriftStatus]:
        """The latest status of every (line, product) this worker has seen, sorted by line and product;
        safe to call from any thread (a gauge: ``invad_drift_state{line_id, product} = status.drifting``)."""
        with self._lock:
            return [self._status[key] for key in sorted(self._status)]

    # -- the sink -----------------------------------------------------------------------------------
    def write(self, batch: Sequence[ScoredImage]) -> None:
        for item in batch:
            self._pending[item.record.image_id] = item.record

    def flush(self) -> None:
        """Add the staged records to their windows, test the windows touched, publish changes.

        Raises:
            DependencyDown: Redis is down; the staged records stay, and a retry is idempotent (windows
                are keyed by image_id, the change script compares with the stored state).
            Misconfigured: Redis refused our credentials or the script.
        """
        if not self._pending:
            return
        touched: dict[tuple[str, str], Baseline] = {}
        for record in self._pending.values():
            baseline = self._baseline(record)
            if baseline is None:
                continue
            key = (record.line_id, record.product)
            window = self._windows.get(key)
            if window is None or window.version != record.model_version:
                if window is not None:
                    log.info("drift_window_restarted", line_id=key[0], product=key[1], reason="model version changed",
                             old=window.version, new=record.model_version)
                window = self._windows[key] = _Window(record.model_version, self.settings.window)
            window.add(record.image_id, float(record.score), bool(record.is_anomaly))
            touched[key] = baseline
        threshold = {(r.line_id, r.product): float(r.threshold) for r in self._pending.values()}
        try:
            self._load_states([key for key in touched if key not in self._states])
            for key in sorted(touched):
                self._evaluate(key, touched[key], threshold[key])
        except rerrors.RedisError as error:
            meaning = classify_redis_error(error)
            if meaning is None:
                raise
            raise meaning from error
        self._pending.clear()

    def check(self) -> None:
        """At start: prove this user may read and write the drift status hashes and run the drift script
        (a probe hash under the prefix, deleted again, and SCRIPT LOAD).

        Raises:
            DependencyDown: Redis is unreachable or loading (the caller waits and retries).
            Misconfigured: Redis refused the credentials or the commands.
        """
        probe = f"{self.layout.prefix}:probe:drift"

        def commands() -> None:
            self._client.pipeline(transaction=False).hset(probe, "state", OK).hget(probe, "state").delete(probe) \
                .execute()
            self._client.script_load(DRIFT_ONCE_LUA)
        check_at_start(commands)

    def close(self) -> None:
        close_client(self._client)

    # -- internals ----------------------------------------------------------------------------------
    def _baseline(self, record: Any) -> Baseline | None:
        """The calibration of the bundle that scored ``record``; None (logged once) when there is none."""
        cached = self._baselines.get(record.product)
        if cached is None or cached.version != record.model_version:
            cached = self._baselines[record.product] = self._baseline_of(record.product)
        warn = (record.product, record.model_version)
        if cached is None or cached.version != record.model_version:
            if warn not in self._warned:
                self._warned.add(warn)
                log.warning("drift_watch_off", product=record.product, model_version=record.model_version,
                            reason="the bundle serving it has no calibration, or is not the one that scored it")
            return None
        if (cached.scores is None or cached.scores.size < MIN_CALIBRATION_SCORES) and warn not in self._warned:
            self._warned.add(warn)
            log.warning("drift_score_shift_test_off", product=record.product, model_version=record.model_version,
                        reason=f"the bundle stores fewer than {MIN_CALIBRATION_SCORES} calibration scores (saved "
                               "before they were kept); recalibrate it with `invad calibrate` to enable the test")
        return cached

    def _load_states(self, keys: list[tuple[str, str]]) -> None:
        if not keys:
            return
        pipe = self._client.pipeline(transaction=False)
        for line_id, product in keys:
            pipe.hget(self.layout.drift_key(line_id, product), "state")
        for key, stored in zip(keys, pipe.execute()):
            self._states[key] = stored.decode() if isinstance(stored, bytes) else (stored or OK)

    def _evaluate(self, key: tuple[str, str], baseline: Baseline, threshold: float) -> None:
        line_id, product = key
        scores, flagged = self._windows[key].arrays()
        calibration = baseline.scores if baseline.scores is not None and baseline.scores.size >= MIN_CALIBRATION_SCORES \
            else None
        expected = baseline.target_fpr
        if calibration is not None:  # an F1-max threshold may flag more normals than the target rate
            expected = max(expected, float((calibration > threshold).mean()))
        state = self._states[key]
        status = DriftStatus(line_id, product, state, int(scores.size), flagged, expected,
                             model_version=baseline.version)
        if scores.size >= self.settings.min_count:
            flag_p, shift_p, statistic = window_p_values(scores, flagged, expected, calibration)
            p_values = {FLAG_RATE: flag_p, SCORE_SHIFT: shift_p}
            tests = tuple(name for name, p in p_values.items() if p is not None and p < self.settings.p_threshold)
            recovered = all(p is None or p >= self.settings.recover_p for p in p_values.values())
            new_state = DRIFTING if tests else (OK if recovered else state)
            status = DriftStatus(line_id, product, state, status.window, flagged, expected, flag_p, shift_p, statistic,
                                 tests, baseline.version)
            if new_state != state:
                self._publish(status, new_state)
                state = new_state
        with self._lock:
            self._status[key] = dataclasses.replace(status, state=state)

    def _publish(self, status: DriftStatus, new_state: str) -> None:
        since = datetime.now(timezone.utc)
        event_id = drift_event_id(status.line_id, status.product, new_state, since)
        entry = DriftEntry(
            event_id=event_id, line_id=status.line_id, product=status.product, state=new_state,
            previous_state=status.state, since=since, tests=status.tests if new_state == DRIFTING else (),
            window=status.window, flagged=status.flagged, expected_fpr=status.expected_fpr,
            flag_rate_p=status.flag_rate_p, score_shift_p=status.score_shift_p,
            score_shift_statistic=status.score_shift_statistic, p_threshold=self.settings.p_threshold,
            model_version=status.model_version, status_key=self.layout.drift_key(status.line_id, status.product),
            record_key=self.layout.score_key(event_id))
        keys, args = self.layout.drift_script_args(status.line_id, status.product, new_state, entry.status_fields(),
                                                   entry.to_fields())
        added = self._script(keys=keys, args=args)
        self._states[(status.line_id, status.product)] = new_state
        (log.warning if new_state == DRIFTING else log.info)(
            "drift_state_changed", line_id=status.line_id, product=status.product, state=new_state,
            previous_state=status.state, tests=list(entry.tests), window=status.window, flagged=status.flagged,
            expected_fpr=status.expected_fpr, flag_rate_p=status.flag_rate_p, score_shift_p=status.score_shift_p,
            alert_id=added.decode() if isinstance(added, bytes) else added, already_recorded=added is None)
