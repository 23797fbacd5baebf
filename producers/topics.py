"""`invad topics`: create the images and dead-letter topics before any worker starts, or show them.

    invad topics ensure --partitions 12 [--replication-factor 3] [--dlq-partitions 1]
    invad topics describe

Workers never create topics (they refuse a missing one at start, exit 5), so a deployment creates them
once: the Helm chart's hook Job and the compose file's one-shot run `invad topics ensure`. Bootstrap and
topic names come from flags or the workers' own variables (``INVAD_KAFKA_BOOTSTRAP``, ``INVAD_TOPIC``,
``INVAD_DLQ_TOPIC``, default ``<topic>.dlq``), so the one-shot reads the same settings as the workers.

Exit codes: 0 done; 1 the broker is unreachable, refused, or a topic exists with fewer partitions than asked
(it is never grown silently) or is missing (describe); 2 bad flags.
"""

from __future__ import annotations

import argparse
import os
import sys

from worker.common.cliargs import UsageError, positive_int

from .admin import TopicError, check_topic_name, describe_topic, ensure_topic
from .cli import DEFAULT_TOPIC

PROG = "invad topics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `invad topics` actions and their flags to ``parser``."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ensure = actions.add_parser("ensure", help="create the images and dead-letter topics when missing")
    describe = actions.add_parser("describe", help="print each topic's partition count (exit 1 if one is missing)")
    for sub in (ensure, describe):
        sub.add_argument("--kafka-bootstrap", "--bootstrap", dest="bootstrap",
                         help="Kafka bootstrap host:port[,host:port] (env INVAD_KAFKA_BOOTSTRAP)")
        sub.add_argument("--topic", help=f"images topic (env INVAD_TOPIC, default {DEFAULT_TOPIC})")
        sub.add_argument("--dlq-topic", help="dead-letter topic (env INVAD_DLQ_TOPIC, default <topic>.dlq)")
        sub.add_argument("--timeout", type=positive_int, default=30, metavar="SECONDS",
                         help="bound on reaching a broker and on each request (default 30)")
    ensure.add_argument("--partitions", type=positive_int, required=True,
                        help="partitions of the images topic: the most workers that can share the load")
    ensure.add_argument("--replication-factor", type=positive_int, default=1,
                        help="replicas of each partition, at most the number of brokers (default 1)")
    ensure.add_argument("--dlq-partitions", type=positive_int, default=1,
                        help="partitions of the dead-letter topic (default 1)")


def _resolve(args: argparse.Namespace) -> tuple[str, str, str]:
    """(bootstrap, topic, dlq_topic) from flags, then variables; raises UsageError naming the fix."""
    bootstrap = args.bootstrap or os.environ.get("INVAD_KAFKA_BOOTSTRAP") or ""
    if not bootstrap:
        raise UsageError("no Kafka broker given: pass --bootstrap host:port or set INVAD_KAFKA_BOOTSTRAP")
    if any(":" not in server.strip() for server in bootstrap.split(",")):
        raise UsageError(f"--bootstrap {bootstrap!r}: expected host:port[,host:port]")
    topic = args.topic or os.environ.get("INVAD_TOPIC") or DEFAULT_TOPIC
    dlq_topic = args.dlq_topic or os.environ.get("INVAD_DLQ_TOPIC") or f"{topic}.dlq"
    for flag, name in (("--topic/INVAD_TOPIC", topic), ("--dlq-topic/INVAD_DLQ_TOPIC", dlq_topic)):
        try:
            check_topic_name(name)
        except ValueError as error:
            raise UsageError(f"{error} (from {flag})") from None
    if topic == dlq_topic:
        raise UsageError(f"the dead-letter topic must differ from the images topic {topic!r}")
    return bootstrap, topic, dlq_topic


def run(args: argparse.Namespace) -> int:
    """Execute `invad topics ACTION`; returns the exit code (0, 1 or 2)."""
    try:
        bootstrap, topic, dlq_topic = _resolve(args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    try:
        if args.action == "ensure":
            for name, partitions in ((topic, args.partitions), (dlq_topic, args.dlq_partitions)):
                status = ensure_topic(bootstrap, name, partitions, args.replication_factor, timeout_s=args.timeout)
                verb = "created" if status.created else "found"
                print(f"topic {status.name} {verb} with {status.partitions} partition(s)")
            return 0
        missing = []
        for name in (topic, dlq_topic):
            partitions = describe_topic(bootstrap, name, timeout_s=args.timeout)
            print(f"topic {name} " + ("missing" if partitions is None else f"has {partitions} partition(s)"))
            if partitions is None:
                missing.append(name)
        if missing:
            print(f"{PROG}: error: missing {', '.join(missing)}: create them with `invad topics ensure "
                  f"--partitions N`", file=sys.stderr)
            return 1
        return 0
    except TopicError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
