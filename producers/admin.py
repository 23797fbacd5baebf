"""Topic administration for producers: create the images topic when asked (with publisher.py, the only kafka importer here)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from kafka import KafkaAdminClient
from kafka import errors as kafka_errors

from worker.common import kafka_security

# kafka-python 3.x reports a failed bootstrap as KafkaTimeoutError; 2.x had NoBrokersAvailable.
_UNREACHABLE = (kafka_errors.KafkaTimeoutError, getattr(kafka_errors, "NoBrokersAvailable", kafka_errors.KafkaTimeoutError))

TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_UNKNOWN_TOPIC = kafka_errors.UnknownTopicOrPartitionError.errno


class TopicError(RuntimeError):
    """The topic cannot be used as asked (exists with too few partitions, or creation failed)."""


@dataclass(frozen=True)
class TopicStatus:
    """A topic as found or created: its name, partition count, and whether this call created it."""

    name: str
    partitions: int
    created: bool


def check_topic_name(name: str) -> str:
    """``name`` if it is a legal Kafka topic name, else ValueError naming it and the rule."""
    if not TOPIC_RE.match(name or "") or name in (".", ".."):
        raise ValueError(f"topic {name!r} is not a valid Kafka topic name: use 1-249 characters of [A-Za-z0-9._-]")
    return name


def _admin(bootstrap: str, timeout_s: float, security: Mapping[str, Any] | None) -> KafkaAdminClient:
    config = dict(bootstrap_servers=[s.strip() for s in bootstrap.split(",") if s.strip()], client_id="invad-admin",
                  request_timeout_ms=int(timeout_s * 1000), bootstrap_timeout_ms=int(timeout_s * 1000),
                  **(security or {}))
    try:
        return kafka_security.make_client(lambda: KafkaAdminClient(**config), config)
    except kafka_security.Refused as refused:
        raise TopicError(f"the Kafka broker at {bootstrap!r} refused us: {refused}") from None
    except _UNREACHABLE:
        raise TopicError(f"no Kafka broker reachable at {bootstrap!r}") from None


def _partition_count(admin: KafkaAdminClient, name: str) -> int | None:
    (info,) = admin.describe_topics([name])
    if info.get("error_code", 0) == _UNKNOWN_TOPIC:
        return None
    if info.get("error_code", 0) != 0:
        raise TopicError(f"cannot describe topic {name!r}: {kafka_errors.for_code(info['error_code']).__name__}")
    return len(info.get("partitions") or [])


def describe_topic(bootstrap: str, name: str, *, timeout_s: float = 30.0,
                   security: Mapping[str, Any] | None = None) -> int | None:
    """Partition count of topic ``name``, or None when it does not exist. ``security``: kafka-python
    security arguments (``worker.common.kafka_security.client_kwargs``), as for every function here.

    Raises:
        TopicError: broker unreachable or refusing us, or the topic cannot be described.
    """
    admin = _admin(bootstrap, timeout_s, security)
    try:
        return _partition_count(admin, check_topic_name(name))
    finally:
        admin.close()


def delete_topic(bootstrap: str, name: str, *, timeout_s: float = 30.0,
                 security: Mapping[str, Any] | None = None) -> bool:
    """Delete topic ``name``; False when it did not exist (for benchmarks and tests that clean up).

    Raises:
        TopicError: broker unreachable or refusing us, or the deletion was refused.
    """
    admin = _admin(bootstrap, timeout_s, security)
    try:
        if _partition_count(admin, check_topic_name(name)) is None:
            return False
        admin.delete_topics([name], timeout_ms=int(timeout_s * 1000))
        return True
    except kafka_errors.KafkaError as error:
        raise TopicError(f"cannot delete topic {name!r}: {error!r}") from error
    finally:
        admin.close()


def ensure_topic(
    bootstrap: str, name: str, partitions: int, replication_factor: int = 1, *, timeout_s: float = 30.0,
    security: Mapping[str, Any] | None = None,
) -> TopicStatus:
    """Make sure topic ``name`` exists with at least ``partitions`` partitions; create it if missing.

    ``timeout_s`` bounds reaching a broker and each admin request.

    Idempotent: an existing topic with enough partitions is left alone (more than asked is fine). Returns
    once every partition has a leader, so producing right after does not race the creation.

    Raises:
        ValueError: bad name, partitions < 1 or replication_factor < 1.
        TopicError: the topic exists with fewer partitions (it is not grown silently, because that moves
            lines to other partitions and breaks per-line ordering across the change), or the broker
            refused the creation (e.g. replication factor larger than the number of brokers).
    """
    check_topic_name(name)
    if partitions < 1 or replication_factor < 1:
        raise ValueError(f"partitions and replication_factor must be >= 1, got {partitions} and {replication_factor}")
    admin = _admin(bootstrap, timeout_s, security)
    try:
        existing = _partition_count(admin, name)
        created = False
        if existing is None:
            try:
                admin.create_topics(
                    {name: {"num_partitions": partitions, "replication_factor": replication_factor}},
                    timeout_ms=int(timeout_s * 1000),
                    wait_for_metadata=True,
                )
                created = True
            except kafka_errors.TopicAlreadyExistsError:
                pass  # another producer created it in between; check its size below
            except kafka_errors.KafkaError as exc:
                raise TopicError(
                    f"could not create topic {name!r} with {partitions} partitions and replication factor "
                    f"{replication_factor}: {type(exc).__name__}: {exc}"
                ) from None
            existing = _partition_count(admin, name) if not created else partitions
        if existing is not None and existing < partitions:
            raise TopicError(
                f"topic {name!r} already exists with {existing} partitions, fewer than the {partitions} asked for. "
                f"Use --partitions {existing} (or fewer), or grow it deliberately with "
                f"kafka-topics.sh --alter --topic {name} --partitions {partitions} (this remaps lines to partitions)."
            )
        return TopicStatus(name=name, partitions=existing or partitions, created=created)
    finally:
        admin.close()
