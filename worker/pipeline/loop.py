"""THE loop, shared by Kafka and embedded mode: poll -> decode -> fetch -> score -> sinks -> commit.

Per batch, stages run in order and remember what they finished, so a retry after a dependency
failure resumes at the failed stage with the same batch:

1. decode messages into ImageRefs and route each product to a model (bad record -> dead letter);
2. fetch, decode and resize the images in the fetch pool (permanent failure -> dead letter;
   transient -> retry);
3. score each (detector, class) group and build ScoreRecords;
4. render overlays, then every sink writes, then every sink flushes;
5. dead letters are sent and flushed;
6. offsets are committed: last message + 1 per partition, nothing past the batch.

Overlap: up to ``max_in_flight`` batches move through the stages at once. While batch N is scored
on this thread, batch N+1 is polled, decoded and fetched (the fetch pool) and batch N-1's overlays
and sinks are written (one writer thread, so batches are written in order). Only this thread
touches the source; it also sends a batch's dead letters, just before its commit. Commits stay in
batch order, each after its batch's sinks and dead letters flushed: the delivery guarantee is the
serial loop's.

Errors: BadRecord -> dead letter and continue; DependencyDown -> every running stage is let finish,
the source is paused, and the batches in flight are finished one at a time, in order, each retried
with capped exponential backoff and jitter (keeping the consumer alive) until its dependency is
back. Any other exception raised while handling ONE message (decoding it, scoring it, building its
record or overlay) is that message's failure: it is dead-lettered as "processing_failed" with the
exception named, so no message content can stop a worker. Exceptions outside per-message work (a
sink, the source, the commit) are bugs and propagate with the batches in flight uncommitted.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, defaultdict, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import structlog

from schemas import NO_ARTEFACTS, DeadLetter, ImageRef, SchemaError, ScoreRecord, embedded_source, kafka_source
from worker.core.overlay import overlay_png

from .backoff import backoff_delay
from .errors import PROCESSING_FAILED, BadRecord, DependencyDown
from .metrics import NoMetrics
from .sinks import ScoredImage, artefact_store

log = structlog.get_logger("invad.pipeline.loop")


@dataclass(frozen=True)
class Message:
    """One raw message. ``embedded`` sources report ``{"name", "position"}`` instead of a Kafka position."""
    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int
    embedded: bool = False

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, self.partition)

    def source_dict(self) -> dict[str, Any]:
        if self.embedded:
            return embedded_source(self.topic, self.offset)
        return kafka_source(self.topic, self.partition, self.offset)


class Source(Protocol):
    """What the loop consumes from: a Kafka consumer or an embedded reader."""
    exhausted: bool  # True when an embedded source has nothing more to give (Kafka: never)

    def poll_batch(self, max_records: int, max_wait_s: float) -> list[Message]: ...
    def commit(self, offsets: dict[tuple[str, int], int]) -> None: ...  # next offset per partition
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def keepalive(self) -> None: ...  # stay in the group while paused; must not consume records
    def keepalive_if_due(self) -> None: ...  # keepalive() when a long batch nears max.poll.interval.ms
    def healthy(self) -> bool: ...  # a working group member (Kafka) / always (embedded): the readiness signal
    def take_revoked(self) -> set[tuple[str, int]]: ...  # partitions lost since the last call
    def give_back(self, messages: list[Message]) -> None: ...  # dropped unprocessed: re-read if still ours
    def close(self) -> None: ...


class Abandoned(Exception):
    """A stop was requested and a dependency stayed down past the drain timeout; nothing was committed."""


@dataclass
class Item:
    """One message's journey through the stages."""
    message: Message
    ref: Any = None
    route: Any = None
    fetched: Any = None
    bad: BadRecord | None = None
    scored: ScoredImage | None = None
    overlay_input: Any = None  # (image, anomaly map) of a flagged image until its overlay is rendered


@dataclass
class BatchWork:
    items: list[Item]
    done: set[str] = field(default_factory=set)  # names of finished stages
    started: float = field(default_factory=time.perf_counter)
    fetching: Any = None  # the fetch stage running in the pool (a PendingFetch) and the items it serves
    fetch_items: list[Item] = field(default_factory=list)
    fetch_started: float = 0.0
    writing: Future | None = None  # the sink and dead-letter stages running in the writer thread


@dataclass
class LoopStats:
    batches: int = 0
    scored: int = 0
    flagged: int = 0
    dead_lettered: Counter = field(default_factory=Counter)
    retries: int = 0
    abandoned: bool = False
    scores: dict[str, float] = field(default_factory=dict)  # image_id -> score (bounded by keep_scores)


class Loop:
    """Runs batches from ``source`` through the stages until stopped or the source is exhausted."""

    def __init__(self, *, source: Source, fetcher: Any, registry: Any, sinks: Sequence[Any], dead_letters: Any,
                 config: Any, stop: threading.Event | None = None, keep_scores: int = 0, metrics: Any = None):
        self.source, self.fetcher, self.registry = source, fetcher, registry
        self.sinks, self.dead_letters, self.config = list(sinks), dead_letters, config
        self.stop = stop or threading.Event()
        self.metrics = metrics or NoMetrics()  # hooks: worker/pipeline/metrics.py
        self.stats = LoopStats()
        self._keep_scores = keep_scores
        self._store = artefact_store(self.sinks)
        self._stop_seen_at: float | None = None
        self._touched: dict[str, float] = {}
        self._health = Path(config.health_dir) if getattr(config, "health_dir", "") else None
        self._max_in_flight = max(1, int(getattr(config, "max_in_flight", 1)))
        self._inflight: deque[BatchWork] = deque()  # oldest first; committed strictly in this order
        self._writer: ThreadPoolExecutor | None = None
        self._source_done = False

    # -- driving --------------------------------------------------------------------------------
    def run(self) -> LoopStats:
        """Process batches until ``stop`` is set (the batches in flight finish) or the source is
        exhausted. Returns the stats; ``stats.abandoned`` is True when a drain gave up on a batch.
        Bugs propagate with nothing committed for the batches in flight."""
        try:
            while True:
                self.touch("alive")
                self.metrics.alive()
                if self._step():
                    continue
                if self._may_poll() and self._poll():
                    continue
                if not self._inflight:
                    if self.stop.is_set() or self._source_done:
                        break
                    continue
                self._wait_for_any(max(0.01, self.config.batch_wait_ms / 1000.0))
                self.source.keepalive_if_due()
                self._drop_revoked()
        except Abandoned:
            self.stats.abandoned = True
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None
        return self.stats

    def _may_poll(self) -> bool:
        return not self.stop.is_set() and not self._source_done and len(self._inflight) < self._max_in_flight

    def _poll(self) -> bool:
        """Poll one batch and start it (decode, then fetch in the pool); True when one came. With
        batches in flight the poll does not wait: they are what this thread should attend to."""
        wait_s = 0.0 if self._inflight else self.config.batch_wait_ms / 1000.0
        batch = self.source.poll_batch(self.config.batch_size, wait_s)
        ready = self.source.healthy()
        self.metrics.source_ready(ready)
        if ready:
            self.touch("ready")
        else:
            self.untouch("ready")
        self._drop_revoked()
        if not batch:
            self._source_done = bool(self.source.exhausted)
            return False
        self.metrics.batch_polled(len(batch))
        work = BatchWork([Item(message) for message in batch])
        self._inflight.append(work)
        log.debug("batch_started", size=len(batch), in_flight=len(self._inflight))
        try:
            self._run_stage("decode", work)
            work.done.add("decode")
            self._start_fetch(work)
        except DependencyDown as error:
            self._recover(work, error)
        return True

    def _step(self) -> bool:
        """Do the one most useful thing that is ready; False when everything waits on a thread."""
        current: BatchWork | None = None
        try:
            head = self._inflight[0] if self._inflight else None
            if head is not None and head.writing is not None and head.writing.done():
                current = head
                self._finish_write(head)
                # Dead letters here, not in the writer: after the revocations seen so far were
                # trimmed, so a moved partition's bad message is not dead-lettered by two owners
                # (the DLQ, unlike Redis and S3, is not idempotent).
                for stage in ("dead_letters", "commit"):
                    if stage not in head.done:
                        self._run_stage(stage, head)
                        head.done.add(stage)
                self._inflight.popleft()
                return True
            for work in self._inflight:
                current = work
                if work.fetching is not None and work.fetching.done():
                    self._finish_fetch(work)
                if "fetch" in work.done and "score" not in work.done:
                    self._run_stage("score", work)
                    work.done.add("score")
                    self._start_write(work)
                    self.source.keepalive_if_due()
                    self._drop_revoked()
                    return True
                if "score" not in work.done:
                    return False  # score in batch order: the oldest unscored batch is still fetching
            return False
        except DependencyDown as error:
            assert current is not None
            self._recover(current, error)
            return True

    def _submit_fetch(self, work: BatchWork) -> Any:
        """Start fetching the batch's live items in the pool (each prepared at its model's input shape)."""
        work.fetch_items = [item for item in work.items if item.bad is None]
        return self.fetcher.submit([item.ref.uri for item in work.fetch_items],
                                   [_input_shape(item) for item in work.fetch_items])

    def _start_fetch(self, work: BatchWork) -> None:
        work.fetch_started = time.perf_counter()
        work.fetching = self._submit_fetch(work)

    def _finish_fetch(self, work: BatchWork) -> None:
        pending, work.fetching = work.fetching, None
        self._apply_fetched(work.fetch_items, pending.result())
        self.metrics.stage_done("fetch", time.perf_counter() - work.fetch_started)
        work.done.add("fetch")

    def _start_write(self, work: BatchWork) -> None:
        if self._max_in_flight == 1:  # nothing to overlap with: write on this thread
            self._run_stage("sinks", work)
            work.writing = _done_future()  # marked written only once it succeeded
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="invad-sinks")
        work.writing = self._writer.submit(self._run_stage, "sinks", work)

    def _finish_write(self, work: BatchWork) -> None:
        writing, work.writing = work.writing, None
        writing.result()  # DependencyDown (retried) or a bug (propagates)
        work.done.add("sinks")

    def _wait_for_any(self, timeout: float) -> None:
        """Block until a fetch or a write of a batch in flight finishes, or ``timeout`` seconds."""
        futures: list[Future] = []
        for work in self._inflight:
            if work.writing is not None:
                futures.append(work.writing)
            if work.fetching is not None:
                futures.extend(work.fetching.futures)
        if futures:
            wait_futures(futures, timeout=timeout, return_when=FIRST_COMPLETED)

    def _settle(self) -> None:
        """Let every running fetch and write finish, keeping what succeeded (before serial retries)."""
        for work in self._inflight:
            for finish, running in ((self._finish_fetch, work.fetching), (self._finish_write, work.writing)):
                if running is None:
                    continue
                try:
                    finish(work)
                except DependencyDown:
                    pass  # that stage is not done; the serial retry runs it again

    def _recover(self, failed: BatchWork, error: DependencyDown) -> None:
        """A dependency failed while ``failed`` was in a stage: finish every batch in flight one at a
        time, in order, each retried with backoff until done. ``failed``'s first retry waits first."""
        self._settle()
        while self._inflight:
            work = self._inflight[0]
            self._run_serially(work, error if work is failed else None)
            self._inflight.popleft()

    def process(self, batch: Sequence[Message]) -> None:
        """Run one batch to commit on this thread, retrying dependency failures with capped
        exponential backoff (the loop's recovery path; also what tests drive directly)."""
        self.metrics.batch_polled(len(batch))
        work = BatchWork([Item(message) for message in batch])
        self._inflight.append(work)
        try:
            self._run_serially(work)
        finally:
            if self._inflight and self._inflight[0] is work:
                self._inflight.popleft()

    def _run_serially(self, work: BatchWork, failed: DependencyDown | None = None) -> None:
        attempt, down = 0, None
        while True:
            if failed is not None:
                if down is not None and down != failed.dependency:
                    self.metrics.dependency_up(down)  # got past it: another one failed further on
                down = failed.dependency
                self.metrics.dependency_down(down)
                attempt += 1
                self.stats.retries += 1
                self.source.pause()
                delay = self._backoff(attempt)
                log.warning("dependency_down", dependency=failed.dependency, error=failed.message, attempt=attempt,
                            retry_in_s=round(delay, 2), stage=self._next_stage(work),
                            partitions=sorted({f"{i.message.topic}:{i.message.partition}" for i in work.items}))
                self._wait(delay)
                self._drop_revoked()
            try:
                self._advance(work)
            except DependencyDown as error:
                failed = error
                continue
            if attempt:
                self.source.resume()
                self.metrics.dependency_up(down)
                log.info("dependency_recovered", attempts=attempt)
            return

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self.config.backoff_max_s)

    def _wait(self, delay: float) -> None:
        """Sleep ``delay`` seconds in short slices, keeping the consumer in its group; raise Abandoned
        when a stop has waited longer than the drain timeout."""
        deadline = time.monotonic() + delay
        while True:
            self.source.keepalive()
            self.touch("alive")
            self.metrics.alive()
            if self.stop.is_set():
                self._stop_seen_at = self._stop_seen_at or time.monotonic()
                if time.monotonic() - self._stop_seen_at > self.config.drain_timeout_s:
                    log.error("drain_abandoned", reason="dependency still down after stop",
                              drain_timeout_s=self.config.drain_timeout_s)
                    raise Abandoned()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.5))

    def _drop_revoked(self) -> None:
        # Partitions moved to another worker: that worker restarts from the last commit, so our
        # copies of those messages, in every batch in flight, must neither be written again nor
        # committed. (A write already running may still land: writes are idempotent by image id.)
        revoked = self.source.take_revoked()
        if not revoked:
            return
        dropped: list[Message] = []
        for work in self._inflight:
            dropped.extend(item.message for item in work.items if item.message.tp in revoked)
            work.items = [item for item in work.items if item.message.tp not in revoked]
        if dropped:
            self.source.give_back(dropped)
            log.info("batch_trimmed_after_revoke", dropped=len(dropped), revoked=sorted(map(str, revoked)))

    # -- stages ---------------------------------------------------------------------------------
    _STAGES = ("decode", "fetch", "score", "sinks", "dead_letters", "commit")

    def _next_stage(self, work: BatchWork) -> str:
        return next((stage for stage in self._STAGES if stage not in work.done), "done")

    def _advance(self, work: BatchWork) -> None:
        for stage in self._STAGES:
            if stage not in work.done:
                self._run_stage(stage, work)
                work.done.add(stage)
                self.source.keepalive_if_due()
                self._drop_revoked()

    def _run_stage(self, stage: str, work: BatchWork) -> None:
        started = time.perf_counter()
        getattr(self, f"_stage_{stage}")(work)
        self.metrics.stage_done(stage, time.perf_counter() - started)

    def _stage_decode(self, work: BatchWork) -> None:
        # One registry for the whole batch: a model switched in meanwhile serves the next batch, and
        # this batch keeps its detectors until it is committed, whatever the registry does.
        registry = self.registry.current()
        for item in work.items:
            try:
                if item.message.value is None:
                    raise BadRecord("invalid_json", "message value is null")
                item.ref = ImageRef.from_json(item.message.value)
                item.route = registry.route(item.ref.product)
            except SchemaError as error:
                item.bad = BadRecord(error.reason, error.message)
            except BadRecord as error:
                item.bad = error
            except Exception as error:  # noqa: BLE001 - one message's failure, never the worker's
                item.bad = _processing_failed("decode", item, error)

    def _stage_fetch(self, work: BatchWork) -> None:
        outcomes = self._submit_fetch(work).result()  # sets work.fetch_items: read it after
        self._apply_fetched(work.fetch_items, outcomes)

    @staticmethod
    def _apply_fetched(items: list[Item], outcomes: list[Any]) -> None:
        for item, outcome in zip(items, outcomes):
            if isinstance(outcome, BadRecord):
                item.bad = outcome
            else:
                item.fetched = outcome

    def _stage_score(self, work: BatchWork) -> None:
        groups: dict[tuple[int, str | None], list[Item]] = defaultdict(list)
        for item in work.items:
            if item.bad is None:
                groups[(id(item.route.detector), item.route.cls)].append(item)
        for items in groups.values():
            try:
                self._score_group(items)
            except DependencyDown:
                raise
            except Exception as error:  # noqa: BLE001 - find the message at fault by scoring one at a time
                if len(items) == 1:
                    items[0].bad = _processing_failed("score", items[0], error)
                    continue
                log.warning("batch_scoring_failed_retrying_one_by_one", size=len(items), error=repr(error))
                for item in items:
                    try:
                        self._score_group([item])
                    except DependencyDown:
                        raise
                    except Exception as one_error:  # noqa: BLE001
                        item.bad = _processing_failed("score", item, one_error)
            for item in items:
                item.fetched = None  # release pixels early; the batch may wait a while for sinks

    def _score_group(self, items: list[Item]) -> None:
        """Score items of one (detector, class) route and build their records; all or nothing."""
        route = items[0].route
        started = time.perf_counter()
        classes = None if route.cls is None else [route.cls] * len(items)
        inputs = [item.fetched.pixels if item.fetched.pixels is not None else item.fetched.image for item in items]
        prediction = route.detector.predict(inputs, classes)
        infer_ms = (time.perf_counter() - started) * 1e3
        # A threshold per image (class-conditional bundles) or one for the whole batch.
        thresholds = np.broadcast_to(np.asarray(prediction.threshold, dtype=np.float64).reshape(-1), (len(items),))
        built = [self._build(item, route.detector, prediction, index, infer_ms, float(thresholds[index]))
                 for index, item in enumerate(items)]
        for item, scored in zip(items, built):
            item.scored = scored

    def _build(self, item: Item, detector: Any, prediction: Any, index: int, infer_ms: float,
               threshold: float) -> ScoredImage:
        ref, fetched = item.ref, item.fetched
        anomaly_map = np.asarray(prediction.anomaly_map[index], dtype=np.float32)  # (S, S)
        flagged = bool(prediction.pred_label[index])
        scored_at = datetime.now(timezone.utc)
        width, height = fetched.image.size
        row, col = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
        map_stats = {
            "max": float(anomaly_map.max()), "mean": float(anomaly_map.mean()),
            "p99": float(np.percentile(anomaly_map, 99)),
            # peak in input-image pixels: centre of the map cell, scaled to the original size
            "peak_x": min(width - 1, int((col + 0.5) * width / anomaly_map.shape[1])),
            "peak_y": min(height - 1, int((row + 0.5) * height / anomaly_map.shape[0])),
        }
        artefacts = dict(NO_ARTEFACTS)
        if flagged and self._store is not None:
            artefacts = self._store.artefact_uris(ref.product, ref.line_id, ref.image_id, fetched.ext)
        timings = {"fetch": fetched.fetch_ms, "decode": fetched.decode_ms, "infer": infer_ms,
                   "end_to_end": max(0.0, (scored_at - ref.captured_at).total_seconds() * 1e3)}
        record = ScoreRecord(
            image_id=ref.image_id, uri=ref.uri, line_id=ref.line_id, camera_id=ref.camera_id, product=ref.product,
            captured_at=ref.captured_at, scored_at=scored_at, score=float(prediction.pred_score[index]),
            is_anomaly=flagged, threshold=threshold, model_name=detector.name,
            model_version=str(getattr(detector, "version", "unknown")), model_release=item.route.release,
            map_stats=map_stats, artefacts=artefacts, timings_ms=timings,
            worker_id=self.config.worker_id, source=item.message.source_dict(), attributes=ref.attributes)
        record.to_json()  # serialise once here: a record that cannot be encoded fails its message, not a sink
        if flagged:  # rendered by the sink stage, off the model's thread
            item.overlay_input = (fetched.image, anomaly_map)
        return ScoredImage(record=record, original=fetched.data if flagged else None, original_ext=fetched.ext)

    def _stage_sinks(self, work: BatchWork) -> None:
        for item in work.items:
            if item.overlay_input is not None and item.scored is not None:
                try:
                    item.scored = replace(item.scored, overlay=overlay_png(*item.overlay_input))
                except Exception as error:  # noqa: BLE001 - one image's failure, never the worker's
                    item.bad, item.scored = _processing_failed("overlay", item, error), None
                item.overlay_input = None
        scored = [item.scored for item in work.items if item.scored is not None]
        if scored:
            for sink in self.sinks:
                sink.write(scored)
            for sink in self.sinks:
                sink.flush()

    def _stage_dead_letters(self, work: BatchWork) -> None:
        bad = [item for item in work.items if item.bad is not None]
        if not bad:
            return
        for item in bad:
            m = item.message
            self.dead_letters.send(DeadLetter.for_message(
                item.bad.reason, item.bad.message, value=m.value, key=m.key, topic=m.topic,
                partition=None if m.embedded else m.partition, offset=m.offset, worker_id=self.config.worker_id))
        self.dead_letters.flush()

    def _stage_commit(self, work: BatchWork) -> None:
        offsets = self._offsets(work)
        if offsets:
            self.source.commit(offsets)
        self._record_stats(work)

    def _record_stats(self, work: BatchWork) -> None:
        self.stats.batches += 1
        for item in work.items:
            m = item.message
            if item.bad is not None:
                self.stats.dead_lettered[item.bad.reason] += 1
                self.metrics.dead_lettered(item.bad.reason, getattr(item.ref, "line_id", None),
                                           getattr(item.ref, "product", None))
                log.warning("dead_lettered", reason=item.bad.reason, error=item.bad.message, partition=m.partition,
                            offset=m.offset, image_id=getattr(item.ref, "image_id", None))
            elif item.scored is not None:
                record = item.scored.record
                self.stats.scored += 1
                self.stats.flagged += int(record.is_anomaly)
                self.metrics.scored(record.line_id, record.product, record.is_anomaly)
                if len(self.stats.scores) < self._keep_scores:
                    self.stats.scores[record.image_id] = record.score
                (log.info if record.is_anomaly else log.debug)(
                    "scored", image_id=record.image_id, partition=m.partition, offset=m.offset,
                    score=round(record.score, 4), is_anomaly=record.is_anomaly)
        self.metrics.batch_committed(len(work.items))
        log.info("batch_committed", size=len(work.items), ms=round((time.perf_counter() - work.started) * 1e3, 1),
                 dead_lettered=sum(item.bad is not None for item in work.items),
                 offsets={f"{t}:{p}": o for (t, p), o in sorted(self._offsets(work).items())})

    @staticmethod
    def _offsets(work: BatchWork) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        for item in work.items:
            out[item.message.tp] = max(out.get(item.message.tp, 0), item.message.offset + 1)
        return out

    def touch(self, name: str) -> None:
        """Touch ``{health_dir}/{name}`` (each at most once a second): the pod's probes read it."""
        if self._health is None:
            return
        now = time.monotonic()
        if now - self._touched.get(name, -1.0) < 1.0:
            return
        self._touched[name] = now
        try:
            self._health.mkdir(parents=True, exist_ok=True)
            (self._health / name).touch()
        except OSError as error:  # a full /tmp must not stop scoring; the probe will notice
            log.warning("health_touch_failed", file=name, error=str(error))


    def untouch(self, name: str) -> None:
        """Remove ``{health_dir}/{name}``: the readiness probe fails until it is touched again."""
        if self._health is not None and self._touched.pop(name, None) is not None:
            try:
                os.unlink(self._health / name)
            except OSError:
                pass


def _input_shape(item: Item) -> tuple[int, int] | None:
    """(height, width) of the input the item's model takes (its fetch prepares the pixels at it)."""
    config = getattr(item.route.detector, "config", None)
    shape = getattr(config, "input_shape", None)
    return shape if isinstance(shape, tuple) else None


def _done_future() -> Future:
    future: Future = Future()
    future.set_result(None)
    return future


def _processing_failed(stage: str, item: Item, error: BaseException) -> BadRecord:
    """The dead-letter form of an unexpected exception while handling one message; logged with its
    traceback, because a run of these usually means a bug or a broken model, not bad input."""
    m = item.message
    log.error("message_processing_failed", stage=stage, partition=m.partition, offset=m.offset,
              image_id=getattr(item.ref, "image_id", None), error=repr(error), exc_info=error)
    return BadRecord(PROCESSING_FAILED, f"{stage}: {type(error).__name__}: {error}")


def remove_health(config: Any) -> None:
    """Remove the probe files at shutdown, so a stopping pod reads as not ready."""
    for name in ("ready", "alive"):
        if getattr(config, "health_dir", ""):
            try:
                os.unlink(os.path.join(config.health_dir, name))
            except OSError:
                pass
