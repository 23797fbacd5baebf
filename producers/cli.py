"""`invad produce`: publish image references from a folder, glob, S3 prefix or stdin to Kafka.

The main `invad` CLI calls ``add_arguments(subparser)`` and then ``run(args)``. Exit codes: 0 when every
image was delivered, 1 when any delivery or per-image step failed (or the broker/S3 could not be used),
2 for bad flags (the message names the value and how to fix it). Kafka security (SASL, TLS) takes the
worker's own settings: the ``INVAD_KAFKA_SECURITY_PROTOCOL``, ``INVAD_KAFKA_SASL_*`` and
``INVAD_KAFKA_SSL_*`` variables and their flags (docs/CONFIGURATION.md).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator
from urllib.parse import urlsplit

from tqdm import tqdm

from schemas import ImageRef
from schemas.image_ref import ATTRIBUTE_KEY_RE, LINE_ID_RE, MAX_ATTRIBUTES, PRODUCT_RE
from worker.common import kafka_security
from worker.common.cliargs import UsageError, positive_int
from worker.pipeline.config import add_config_arguments, read_settings

from .admin import TopicError, check_topic_name, ensure_topic
from .publisher import PublishError, Publisher
from .rate import TokenBucket, parse_rate
from .s3 import S3, S3Error, parse_s3_uri
from .sources import RefTemplate, SourceError, open_source

DEFAULT_TOPIC = "invad.images"
PROG = "invad produce"
_PRODUCER_RE = re.compile(r"^\S(.*\S)?$")


def _matching(pattern, what: str, max_len: int):
    def check(text: str) -> str:
        if len(text) > max_len or not pattern.match(text):
            raise argparse.ArgumentTypeError(
                f"{what} {text!r} is not allowed: use 1-{max_len} characters matching {pattern.pattern}"
            )
        return text

    return check


def _attr(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not ATTRIBUTE_KEY_RE.match(key):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not key=value with a key of 1-64 characters of [A-Za-z0-9_.:-], e.g. --attr shift=B"
        )
    if len(value) > 1024:
        raise argparse.ArgumentTypeError(f"--attr {key}: value is {len(value)} characters, at most 1024 allowed")
    return key, value


def _rate(text: str) -> float:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _s3_uri(text: str) -> str:
    try:
        parse_s3_uri(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, e.g. --upload s3://my-bucket/line-3") from None
    return text


def _http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL, e.g. --s3-endpoint http://127.0.0.1:8333")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `invad produce` arguments to ``parser``; bad single values exit 2 with a clear message."""
    parser.add_argument("source", metavar="SOURCE",
                        help="folder (recursive), glob ('imgs/**/*.png'), s3://bucket/prefix, or '-' for stdin "
                             "(one path, URI or ImageRef JSON per line; JSON lines are sent as given)")
    parser.add_argument("--kafka-bootstrap", "--bootstrap", dest="bootstrap", help="Kafka bootstrap host:port[,host:port] (env INVAD_KAFKA_BOOTSTRAP)")
    parser.add_argument("--topic", help=f"topic (env INVAD_TOPIC, default {DEFAULT_TOPIC})")
    parser.add_argument("--line-id", type=_matching(LINE_ID_RE, "--line-id", 128),
                        help="production line (the Kafka key); required except for ImageRef JSON on stdin")
    parser.add_argument("--camera-id", type=_matching(LINE_ID_RE, "--camera-id", 128), help="camera on the line")
    parser.add_argument("--product", default="default", type=_matching(PRODUCT_RE, "--product", 64),
                        help="product key selecting the model (default: default)")
    parser.add_argument("--producer", type=_matching(_PRODUCER_RE, "--producer", 128),
                        help="who publishes (default: this host's name)")
    parser.add_argument("--attr", action="append", type=_attr, default=[], metavar="KEY=VALUE",
                        help="attribute for every image (string value); repeatable")
    parser.add_argument("--rate", type=_rate, help="cap in images per second: 50, 2.5, 600/min, 3600/h")
    parser.add_argument("--create-topic", action="store_true", help="create the topic if missing")
    parser.add_argument("--partitions", type=positive_int, help="partitions for --create-topic (default 1)")
    parser.add_argument("--replication-factor", type=positive_int,
                        help="replication factor for --create-topic (default 1)")
    parser.add_argument("--upload", type=_s3_uri, metavar="s3://BUCKET/PREFIX",
                        help="upload local images to BUCKET/PREFIX/<image_id> first and reference them there")
    parser.add_argument("--s3-endpoint", type=_http_url,
                        help="S3-compatible endpoint URL (env INVAD_S3_ENDPOINT); credentials from AWS_* env")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the ImageRef JSON lines instead of sending (nothing is uploaded)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    # the worker's own Kafka security settings (INVAD_KAFKA_SECURITY_PROTOCOL, ...), read the same way
    add_config_arguments(parser, kafka_security.SETTINGS, title="Kafka security (password: INVAD_KAFKA_SASL_PASSWORD)")


@dataclass
class Tally:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    partitions: set[int] = field(default_factory=set)
    fatal: str | None = None


def _resolve(args: argparse.Namespace) -> dict:
    """Flags merged with environment defaults, cross-checked. Raises UsageError."""
    bootstrap = args.bootstrap or os.environ.get("INVAD_KAFKA_BOOTSTRAP")
    topic = args.topic or os.environ.get("INVAD_TOPIC") or DEFAULT_TOPIC
    endpoint = args.s3_endpoint or os.environ.get("INVAD_S3_ENDPOINT") or None
    if bootstrap and any(":" not in s.strip() for s in bootstrap.split(",")):
        raise UsageError(f"--bootstrap {bootstrap!r}: expected host:port[,host:port]")
    try:
        check_topic_name(topic)
    except ValueError as exc:
        raise UsageError(f"{exc} (from --topic or INVAD_TOPIC)") from None
    if endpoint and not args.s3_endpoint:
        try:
            _http_url(endpoint)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"INVAD_S3_ENDPOINT: {exc}") from None
    if (args.partitions or args.replication_factor) and not args.create_topic:
        raise UsageError("--partitions/--replication-factor only apply with --create-topic")
    if args.upload and args.source.startswith("s3://"):
        raise UsageError("--upload is for local images; the SOURCE is already in S3")
    if args.source != "-" and not args.line_id:
        raise UsageError("--line-id is required (it is the Kafka key that keeps a line's images in order)")
    keys = [k for k, _ in args.attr]
    if len(set(keys)) != len(keys):
        raise UsageError(f"--attr keys given twice: {sorted({k for k in keys if keys.count(k) > 1})}")
    if len(keys) > MAX_ATTRIBUTES:
        raise UsageError(f"{len(keys)} --attr given, at most {MAX_ATTRIBUTES} allowed")
    if not bootstrap and not args.dry_run:
        raise UsageError("no Kafka broker given: pass --bootstrap host:port or set INVAD_KAFKA_BOOTSTRAP")
    producer = args.producer or socket.gethostname()[:128] or "invad-producer"
    try:
        security = kafka_security.client_kwargs(read_settings(kafka_security.SETTINGS, args, os.environ))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return dict(bootstrap=bootstrap, topic=topic, endpoint=endpoint, producer=producer, security=security)


def _uploader(s3, target: str, dry_run: bool):
    bucket, prefix = parse_s3_uri(target)
    prefix = prefix.strip("/")

    def upload(path, image_id: str) -> str:
        key = f"{prefix}/{image_id}" if prefix else image_id
        return f"s3://{bucket}/{key}" if dry_run else s3.upload_file(path, bucket, key)

    return upload


def _paced(refs: Iterable[ImageRef], bucket: TokenBucket | None, tally: Tally) -> Iterator[ImageRef]:
    # Stops cleanly on a fatal source error (e.g. S3 down) so records already sent are still reported.
    try:
        for ref in refs:
            if bucket is not None:
                bucket.acquire()
            yield ref
    except (S3Error, SourceError) as exc:
        tally.fatal = str(exc)


def run(args: argparse.Namespace) -> int:
    """Execute `invad produce` with parsed ``args``; returns the exit code (0, 1, 2, or 130 on Ctrl-C)."""
    try:
        opts = _resolve(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    tally = Tally()
    bar = None

    def on_error(what: str, message: str) -> None:
        tally.skipped += 1
        (bar.write if bar is not None else print)(f"skipped {what}: {message}", file=sys.stderr)

    s3 = None
    if args.upload or args.source.startswith("s3://"):
        s3 = S3(endpoint_url=opts["endpoint"])
    template = RefTemplate(producer=opts["producer"], line_id=args.line_id, product=args.product,
                           camera_id=args.camera_id, attributes=dict(args.attr))
    upload = _uploader(s3, args.upload, args.dry_run) if args.upload else None
    try:
        source = open_source(args.source, template, on_error=on_error, upload=upload, s3=s3, stdin=sys.stdin)
    except (SourceError, ValueError) as exc:
        print(f"{PROG}: error: SOURCE {args.source!r}: {exc}; give a folder, a glob like 'imgs/**/*.png', "
              "s3://bucket/prefix, or '-' for stdin", file=sys.stderr)
        return 2
    if not upload and args.source != "-" and not args.source.startswith("s3://") and not args.dry_run:
        print(f"{PROG}: warning: publishing file:// URIs, readable only by workers on this machine; "
              "use --upload s3://bucket/prefix for remote workers", file=sys.stderr)
    bucket = TokenBucket(args.rate) if args.rate else None
    bar = tqdm(total=source.total, unit="img", file=sys.stderr, disable=True if args.quiet else None,
               desc="dry-run" if args.dry_run else "sent")
    started = time.monotonic()
    try:
        if args.dry_run:
            for ref in _paced(source.refs, bucket, tally):
                sys.stdout.write(ref.to_json().decode("utf-8") + "\n")
                tally.sent += 1
                bar.update()
        else:
            _publish(args, opts, _paced(source.refs, bucket, tally), tally, bar)
    except KeyboardInterrupt:
        tally.fatal = "interrupted"
    finally:
        bar.close()
    elapsed = time.monotonic() - started
    _summary(args, opts, tally, elapsed)
    if tally.fatal == "interrupted":
        return 130
    return 0 if not (tally.failed or tally.skipped or tally.fatal) else 1


def _publish(args, opts: dict, refs: Iterator[ImageRef], tally: Tally, bar) -> None:
    try:
        if args.create_topic:
            status = ensure_topic(opts["bootstrap"], opts["topic"], args.partitions or 1,
                                  args.replication_factor or 1, security=opts["security"])
            verb = "created" if status.created else "found"
            bar.write(f"topic {status.name!r} {verb} with {status.partitions} partition(s)", file=sys.stderr)
        with Publisher(opts["bootstrap"], opts["topic"], client_id=f"invad-produce-{opts['producer']}"[:100],
                       security=opts["security"]) as pub:
            for report in pub.publish(refs):
                if report.ok:
                    tally.sent += 1
                    tally.partitions.add(report.partition)
                else:
                    tally.failed += 1
                    bar.write(f"failed {report.image_id}: {report.error}", file=sys.stderr)
                bar.update()
    except (PublishError, TopicError) as exc:
        tally.fatal = str(exc)


def _summary(args, opts: dict, tally: Tally, elapsed: float) -> None:
    rate = tally.sent / elapsed if elapsed > 0 else 0.0
    verb = "printed" if args.dry_run else "sent"
    parts = "" if args.dry_run else f", partitions used {sorted(tally.partitions)} of topic {opts['topic']!r}"
    line = (f"{PROG}: {verb} {tally.sent}, failed {tally.failed}, skipped {tally.skipped}{parts} "
            f"in {elapsed:.1f} s ({rate:.1f} img/s)")
    if tally.fatal:
        line += f"; stopped: {tally.fatal}"
    print(line, file=sys.stderr)
