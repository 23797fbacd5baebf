"""``invad alerts``: read the alert stream in a consumer group; print each alert or POST it to a webhook.

Exit codes: 0 after a stop (SIGTERM or SIGINT: the alert in hand finishes), ``--once`` or
``--max-alerts``; 2 for an invalid argument; 3 when Redis refuses our credentials or commands, or the
stream key holds something else (the worker's code for a Redis refusal); 69 (EX_UNAVAILABLE) when
Redis cannot be reached at start. An outage after the start is waited out, never an exit.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import threading

from schemas.redis_layout import DEFAULT_PREFIX

from ..common.cliargs import UsageError, positive_int

EX_UNAVAILABLE = 69
_NAME = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.0 < value < 86400.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in (0, 86400)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    source = parser.add_argument_group("the stream")
    source.add_argument("--redis-url", default=env("INVAD_REDIS_URL"),
                        help="redis://[USER:PASSWORD@]HOST:PORT/DB (default: $INVAD_REDIS_URL)")
    source.add_argument("--prefix", default=env("INVAD_REDIS_PREFIX") or DEFAULT_PREFIX,
                        help=f"the workers' Redis key prefix (default: $INVAD_REDIS_PREFIX, else {DEFAULT_PREFIX})")
    source.add_argument("--stream", default=None, help="stream key (default: PREFIX:alerts)")
    source.add_argument("--group", default="invad-alerts",
                        help="consumer group; one per downstream service, each sees every alert (default: invad-alerts)")
    source.add_argument("--consumer", default=socket.gethostname()[:128],
                        help="this consumer's name in the group; keep it across restarts so the pending "
                             "alerts of the last run are read first (default: the host name)")
    source.add_argument("--from-start", action="store_true",
                        help="a group created now starts at the oldest alert the stream keeps (default: new alerts only)")
    source.add_argument("--count", type=positive_int, default=100, help="entries per read (default 100)")
    source.add_argument("--block-ms", type=positive_int, default=5000,
                        help="longest wait for new alerts per read, ms (default 5000)")
    source.add_argument("--claim-idle-ms", type=positive_int, default=60_000,
                        help="take over alerts pending this long in another (dead) consumer, ms (default 60000)")
    out = parser.add_argument_group("delivery")
    out.add_argument("--webhook", default=env("INVAD_ALERTS_WEBHOOK") or None,
                     help="POST each alert as JSON to this http(s) URL (default: $INVAD_ALERTS_WEBHOOK, else print "
                          "one JSON line per alert on stdout)")
    out.add_argument("--timeout", type=_positive_seconds, default=10.0, help="timeout of one POST, s (default 10)")
    out.add_argument("--max-retries", type=_non_negative_int, default=10,
                     help="retries of a failed POST (408, 429, 5xx, no connection) before the alert goes to the "
                          "dead stream (default 10)")
    out.add_argument("--backoff-max-s", type=_positive_seconds, default=30.0,
                     help="longest wait between retries, and while Redis is down, s (default 30)")
    script = parser.add_argument_group("scripting")
    script.add_argument("--once", action="store_true", help="exit when nothing is left to read")
    script.add_argument("--max-alerts", type=positive_int, default=None, help="exit after handling this many alerts")
    script.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")


def _validated(args: argparse.Namespace) -> None:
    from schemas import RedisLayout

    if not args.redis_url:
        raise UsageError("--redis-url (or INVAD_REDIS_URL) is required, e.g. redis://localhost:6379/0")
    if not re.match(r"^(redis|rediss|unix)://", args.redis_url):
        raise UsageError("--redis-url must start with redis://, rediss:// or unix://")
    layout = RedisLayout(prefix=args.prefix)  # ValueError names a bad prefix
    args.stream = args.stream or layout.alerts_key
    for flag, value in (("--stream", args.stream), ("--group", args.group), ("--consumer", args.consumer)):
        if not _NAME.fullmatch(value):
            raise UsageError(f"{flag} {value!r}: use 1-128 characters of [A-Za-z0-9._:-]")
    if args.webhook is not None:
        from .delivery import check_webhook_url
        check_webhook_url(args.webhook)
    if args.claim_idle_ms < 2000 * args.timeout:
        raise UsageError(f"--claim-idle-ms {args.claim_idle_ms} must be at least twice --timeout ({args.timeout} s), "
                         "or a slow POST would be taken over by another consumer and delivered twice")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``invad alerts``; returns the exit code of the module docstring."""
    _validated(args)
    from worker.pipeline.cli import REDACTOR, configure_logging, install_signal_handlers
    from worker.pipeline.errors import DependencyDown, Misconfigured
    from worker.pipeline.redact import credentials_in, redact_text

    from .consumer import AlertConsumer, ConsumerSettings
    from .delivery import PrintDelivery, WebhookDelivery
    from .stream import AlertStream, dead_stream_name

    REDACTOR.add(credentials_in(args.redis_url) + credentials_in(args.webhook or ""))
    configure_logging(args.log_level)
    stop = threading.Event()
    install_signal_handlers(stop)
    import structlog
    log = structlog.get_logger("invad.alerts")

    stream = AlertStream(args.redis_url, args.stream, args.group, args.consumer,
                         dead_stream_name(args.stream, args.group), socket_timeout_s=max(10.0, args.block_ms / 1000 + 5))
    try:
        stream.ping()
        created = stream.ensure_group("0" if args.from_start else "$")
    except DependencyDown as error:
        print(f"invad alerts: Redis at {redact_text(args.redis_url)} is unreachable ({error.message}); start it, "
              "or fix --redis-url", file=sys.stderr)
        stream.close()
        return EX_UNAVAILABLE
    except Misconfigured as error:
        print(f"invad alerts: {error}", file=sys.stderr)
        stream.close()
        return error.exit_code
    if args.webhook:
        delivery = WebhookDelivery(args.webhook, timeout_s=args.timeout, max_retries=args.max_retries,
                                   backoff_max_s=args.backoff_max_s, stop=stop)
    else:
        delivery = PrintDelivery()
    log.info("alerts_consumer_started", stream=args.stream, group=args.group, consumer=args.consumer,
             group_created=created, dead_stream=stream.dead_stream,
             delivery=redact_text(args.webhook) if args.webhook else "stdout")
    settings = ConsumerSettings(count=args.count, block_ms=args.block_ms, claim_idle_ms=args.claim_idle_ms,
                                backoff_max_s=args.backoff_max_s, once=args.once, max_alerts=args.max_alerts)
    try:
        stats = AlertConsumer(stream, delivery, settings, stop).run()
    except Misconfigured as error:
        log.error("misconfigured", problem=error.problem, fix=error.fix)
        print(f"invad alerts: {error}", file=sys.stderr)
        return error.exit_code
    finally:
        stream.close()
    log.info("alerts_consumer_stopped", delivered=stats.delivered, by_kind=dict(stats.by_kind),
             dead=dict(stats.dead), trimmed=stats.trimmed)
    return 0
