"""Publishing ImageRefs to Kafka with a delivery report per record (with admin.py, the only kafka importer here)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from kafka import KafkaProducer
from kafka import errors as kafka_errors

# kafka-python 3.x reports a failed bootstrap as KafkaTimeoutError; 2.x had NoBrokersAvailable.
_UNREACHABLE = (kafka_errors.KafkaTimeoutError, getattr(kafka_errors, "NoBrokersAvailable", kafka_errors.KafkaTimeoutError))

from schemas import ImageRef
from worker.common import kafka_security


class PublishError(RuntimeError):
    """The producer cannot publish at all (broker unreachable, topic metadata unavailable, closed)."""


@dataclass(frozen=True)
class DeliveryReport:
    """Outcome of one record: where the broker stored it, or why it was not stored.

    Attributes:
        image_id, line_id: of the ImageRef sent.
        topic: destination topic.
        partition, offset: set when delivered (offset is the record's offset in the partition).
        error: None when delivered, else "<ErrorClass>: <detail>".
    """

    image_id: str
    line_id: str
    topic: str
    partition: int | None = None
    offset: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the broker acknowledged the record (acks=all)."""
        return self.error is None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Publisher:
    """Sends ImageRefs to one topic; key = line_id (UTF-8), value = ImageRef.to_json().

    The producer is idempotent with acks='all': a broker-side retry never duplicates or reorders a
    record, so the images of one line arrive on one partition in the order they were sent. Retries are
    bounded by ``delivery_timeout_ms``, after which a record is reported failed.

    The Kafka client is created by ``connect()`` (or on first use, or by ``with``), not by the constructor.

    Args:
        bootstrap: "host:port[,host:port...]".
        topic: destination topic.
        client_id: Kafka client id, shown in broker logs.
        linger_ms, batch_size: batching; a few ms of linger batches a burst without adding visible latency.
        compression_type: None, "gzip", "snappy", "lz4" or "zstd" (the last three need extra packages).
        delivery_timeout_ms: upper bound on send + retries for one record.
        request_timeout_ms: one produce request.
        max_block_ms: how long ``send`` may block for metadata or buffer space before PublishError.
        bootstrap_timeout_ms: how long ``connect`` tries to reach a broker before PublishError.
        max_in_flight: records awaiting acknowledgement before ``publish`` waits for the oldest.
        security: kafka-python security arguments, from ``worker.common.kafka_security.client_kwargs``
            (None: PLAINTEXT).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        client_id: str = "invad-producer",
        linger_ms: int = 10,
        batch_size: int = 64 * 1024,
        compression_type: str | None = None,
        delivery_timeout_ms: int = 120_000,
        request_timeout_ms: int = 30_000,
        max_block_ms: int = 30_000,
        bootstrap_timeout_ms: int = 30_000,
        max_in_flight: int = 10_000,
        security: Mapping[str, Any] | None = None,
    ):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.bootstrap = bootstrap
        self.topic = topic
        self.max_in_flight = max_in_flight
        self._config = dict(
            bootstrap_servers=[s.strip() for s in bootstrap.split(",") if s.strip()],
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            retries=2_147_483_647,  # bounded by delivery_timeout_ms, as the idempotent producer expects
            max_in_flight_requests_per_connection=5,  # the most that still keeps order with idempotence
            linger_ms=linger_ms,
            batch_size=batch_size,
            compression_type=compression_type,
            delivery_timeout_ms=delivery_timeout_ms,
            request_timeout_ms=request_timeout_ms,
            max_block_ms=max_block_ms,
            bootstrap_timeout_ms=bootstrap_timeout_ms,
            **(security or {}),
        )
        self._producer: KafkaProducer | None = None

    def connect(self) -> "Publisher":
        """Create the Kafka client (idempotent).

        Raises:
            PublishError: no broker reachable at ``bootstrap``, the broker refused our credentials or
                certificate, or a bad producer setting.
        """
        if self._producer is None:
            try:
                self._producer = kafka_security.make_client(lambda: KafkaProducer(**self._config), self._config)
            except kafka_security.Refused as refused:
                raise PublishError(f"the Kafka broker at {self.bootstrap!r} refused us: {refused}") from None
            except _UNREACHABLE:
                raise PublishError(
                    f"no Kafka broker reachable at {self.bootstrap!r}; check --bootstrap / INVAD_KAFKA_BOOTSTRAP "
                    "and that the broker is up"
                ) from None
            except kafka_errors.KafkaConfigurationError as exc:
                raise PublishError(f"invalid producer configuration: {exc}") from None
        return self

    def __enter__(self) -> "Publisher":
        return self.connect()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def publish(self, refs: Iterable[ImageRef]) -> Iterator[DeliveryReport]:
        """Send every ref and yield one DeliveryReport per ref, in the order sent.

        Reports stream out as acknowledgements arrive; at most ``max_in_flight`` records are
        unacknowledged at any time. When the iterator is exhausted every record has been flushed and
        reported. A record the broker rejects (too large, timed out after retries) yields a report with
        ``error`` set; publishing continues.

        Raises:
            PublishError: the client cannot send at all (no metadata for the topic within
                ``max_block_ms``: broker down or topic missing with auto-creation disabled).
        """
        producer = self.connect()._producer
        pending: deque[tuple[ImageRef, object]] = deque()
        for ref in refs:
            pending.append((ref, self._send(producer, ref)))
            while pending and (len(pending) > self.max_in_flight or _done(pending[0][1])):
                yield self._report(*pending.popleft())
        if pending:
            producer.flush()
        while pending:
            yield self._report(*pending.popleft())

    def _send(self, producer: KafkaProducer, ref: ImageRef):
        try:
            return producer.send(self.topic, value=ref.to_json(), key=ref.kafka_key())
        except kafka_errors.KafkaTimeoutError as exc:
            raise PublishError(
                f"could not get metadata for topic {self.topic!r} from {self.bootstrap!r} within "
                f"{self._config['max_block_ms']} ms ({exc}); is the broker up, and does the topic exist "
                "(create it with --create-topic --partitions N)?"
            ) from None
        except kafka_errors.IllegalStateError as exc:
            raise PublishError(f"the producer is closed: {exc}") from None
        except (kafka_errors.KafkaError, ValueError) as exc:
            return exc  # a per-record problem, e.g. MessageSizeTooLargeError: reported, not raised

    def _report(self, ref: ImageRef, future) -> DeliveryReport:
        base = dict(image_id=ref.image_id, line_id=ref.line_id, topic=self.topic)
        if isinstance(future, BaseException):
            return DeliveryReport(**base, error=_describe(future))
        try:
            metadata = future.get()
        except kafka_errors.KafkaError as exc:
            return DeliveryReport(**base, error=_describe(exc))
        return DeliveryReport(**base, partition=metadata.partition, offset=metadata.offset)

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every record sent so far is acknowledged or failed.

        Raises:
            PublishError: not done within ``timeout_s``.
        """
        if self._producer is not None:
            try:
                self._producer.flush(timeout=timeout_s)
            except kafka_errors.KafkaTimeoutError as exc:
                raise PublishError(f"flush did not finish within {timeout_s} s: {exc}") from None

    def partitions(self) -> set[int]:
        """Partition ids of the topic as the client sees them (empty when unknown)."""
        return set(self.connect()._producer.partitions_for(self.topic) or ())

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Flush and close the client; safe to call twice."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.close(timeout=timeout_s)


def _done(future) -> bool:
    return isinstance(future, BaseException) or future.is_done
