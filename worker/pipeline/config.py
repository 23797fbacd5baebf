"""One frozen :class:`WorkerConfig` per process, built from CLI flags and ``INVAD_*`` variables.

A flag wins over its variable; every value is parsed and checked here, at start, so a typo fails in
the first second with a message naming the flag or variable, the value and what is allowed, instead
of an hour later in a sink. :meth:`WorkerConfig.redacted` is what gets logged.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

MODES = ("kafka", "embedded")


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError("must be an integer") from None
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be in [{low}, {high if high is not None else 'inf'}]")
        return value
    return parse


def _float(low: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("must be a number") from None
        if not value >= low:
            raise ValueError(f"must be >= {low}")
        return value
    return parse


def _bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be one of 1/0, true/false, yes/no, on/off")


def _list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(text).split(",") if part.strip())


def _hosts(text: str) -> tuple[str, ...]:
    hosts = tuple(host.lower() for host in _list(text))
    for host in hosts:
        if not re.fullmatch(r"(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?", host):
            raise ValueError(f"{host!r} is not a host name (allowed: host, host:port or *.domain)")
    return hosts


def _roots(text: str) -> tuple[str, ...]:
    roots = _list(text)
    for root in roots:
        if not os.path.isabs(root):
            raise ValueError(f"{root!r} is not an absolute path")
    return tuple(os.path.realpath(root) for root in roots)


def _models(text: str) -> tuple[tuple[str, str], ...]:
    """``path`` (one bundle for every product) or ``product=path,product=path,*=path``."""
    text = str(text).strip()
    if not text:
        return ()
    if "=" not in text:
        return (("*", text),)
    pairs = []
    for part in _list(text):
        product, sep, path = part.partition("=")
        product, path = product.strip(), path.strip()
        if not sep or not path or not re.fullmatch(r"\*|[A-Za-z0-9][A-Za-z0-9._-]*", product):
            raise ValueError(f"{part!r} is not product=path (product: [A-Za-z0-9][A-Za-z0-9._-]* or *)")
        if product in dict(pairs):
            raise ValueError(f"product {product!r} is mapped twice")
        pairs.append((product, path))
    return tuple(pairs)


def _device(text: str) -> str | None:
    text = str(text).strip()
    if not text or text == "auto":
        return None
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?|mps", text):
        raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
    return text


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        parts = urlsplit(str(text).strip())
        if parts.scheme not in schemes or not parts.netloc:
            raise ValueError(f"must be a URL with scheme {' or '.join(schemes)}")
        return str(text).strip()
    return parse


def _bootstrap(text: str) -> tuple[str, ...]:
    servers = _list(text)
    for server in servers:
        if not re.fullmatch(r"[A-Za-z0-9_.\[\]:-]+:[0-9]{1,5}", server):
            raise ValueError(f"{server!r} is not host:port")
    return servers


def _name(pattern: str, allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not re.fullmatch(pattern, str(text)):
            raise ValueError(f"must match {allowed}")
        return str(text)
    return parse


_TOPIC = _name(r"[A-Za-z0-9._-]{1,249}", "[A-Za-z0-9._-]{1,249}")
_KEYPART = _name(r"[A-Za-z0-9._:-]{1,128}", "[A-Za-z0-9._:-]{1,128}")
_REDIS_PREFIX = _name(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", "1-64 characters of [A-Za-z0-9._:-], starting with a letter or digit")
_BUCKET = _name(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", "an S3 bucket name ([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])")
_PREFIX = _name(r"[A-Za-z0-9._/-]{0,256}", "[A-Za-z0-9._/-]{0,256}")
_LEVEL = _name(r"debug|info|warning|error", "debug, info, warning or error")


@dataclass(frozen=True)
class Option:
    """One setting: dataclass field, ``INVAD_*`` variable, CLI flag, parser, default (a string, parsed too)."""
    field: str
    env: str | None
    flag: str | None
    parse: Callable[[str], Any]
    default: str | None
    help: str
    secret: bool = False


OPTIONS: tuple[Option, ...] = (
    Option("kafka_bootstrap", "INVAD_KAFKA_BOOTSTRAP", "--kafka-bootstrap", _bootstrap, "", "Kafka bootstrap servers, host:port[,host:port]"),
    Option("topic", "INVAD_TOPIC", "--topic", _TOPIC, "invad.images", "topic of ImageRef messages"),
    Option("group", "INVAD_GROUP", "--group", _TOPIC, "invad-workers", "consumer group id"),
    Option("dlq_topic", "INVAD_DLQ_TOPIC", "--dlq-topic", _TOPIC, None, "dead-letter topic (default: <topic>.dlq)"),
    Option("redis_url", "INVAD_REDIS_URL", "--redis-url", _url(("redis", "rediss", "unix")), None, "Redis URL for score records and alerts", secret=True),
    Option("redis_prefix", "INVAD_REDIS_PREFIX", "--redis-prefix", _REDIS_PREFIX, "invad", "prefix of every Redis key"),
    Option("record_ttl_s", "INVAD_RECORD_TTL_S", "--record-ttl-s", _int(1), "604800", "TTL of score records and alert markers in Redis (s)"),
    Option("recent_per_line", "INVAD_RECENT_PER_LINE", "--recent-per-line", _int(1), "10000", "size of each line's recent zset"),
    Option("top_per_line", "INVAD_TOP_PER_LINE", "--top-per-line", _int(1), "1000", "size of each line's top-score zset"),
    Option("alert_stream_maxlen", "INVAD_ALERT_STREAM_MAXLEN", "--alert-stream-maxlen", _int(1), "100000", "approximate MAXLEN of the alert stream"),
    Option("s3_endpoint", "INVAD_S3_ENDPOINT", "--s3-endpoint", _url(("http", "https")), None, "S3 endpoint URL (default: AWS)"),
    Option("s3_bucket", "INVAD_S3_BUCKET", "--s3-bucket", _BUCKET, None, "bucket for flagged images, overlays and records"),
    Option("s3_prefix", "INVAD_S3_PREFIX", "--s3-prefix", _PREFIX, "invad", "key prefix inside the bucket"),
    Option("s3_create_bucket", "INVAD_S3_CREATE_BUCKET", "--s3-create-bucket", _bool, "false", "create the bucket at start when missing"),
    Option("s3_region", "AWS_REGION", None, str, None, "S3 region (AWS_REGION or AWS_DEFAULT_REGION)"),
    Option("aws_access_key_id", "AWS_ACCESS_KEY_ID", None, str, None, "S3 access key", secret=True),
    Option("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", None, str, None, "S3 secret key", secret=True),
    Option("aws_session_token", "AWS_SESSION_TOKEN", None, str, None, "S3 session token", secret=True),
    Option("models", "INVAD_MODELS", "--models", _models, "", "model bundle path for every product, or product=path,...,*=path"),
    Option("device", "INVAD_DEVICE", "--device", _device, "auto", "torch device: auto, cpu, cuda, cuda:N"),
    Option("batch_size", "INVAD_BATCH_SIZE", "--batch-size", _int(1, 4096), "16", "images per batch (= max.poll.records)"),
    Option("batch_wait_ms", "INVAD_BATCH_WAIT_MS", "--batch-wait-ms", _int(0, 600_000), "200", "longest wait to fill a batch (ms)"),
    Option("max_poll_interval_ms", "INVAD_MAX_POLL_INTERVAL_MS", "--max-poll-interval-ms", _int(5_000), "300000", "Kafka max.poll.interval.ms"),
    Option("session_timeout_ms", "INVAD_SESSION_TIMEOUT_MS", "--session-timeout-ms", _int(1_000), "45000", "Kafka session.timeout.ms"),
    Option("heartbeat_interval_ms", "INVAD_HEARTBEAT_INTERVAL_MS", "--heartbeat-interval-ms", _int(100), "3000", "Kafka heartbeat.interval.ms"),
    Option("fetch_concurrency", "INVAD_FETCH_CONCURRENCY", "--fetch-concurrency", _int(1, 256), "8", "parallel image fetches"),
    Option("fetch_timeout_s", "INVAD_FETCH_TIMEOUT_S", "--fetch-timeout-s", _float(0.1), "10", "connect/read timeout of one image fetch (s)"),
    Option("max_image_bytes", "INVAD_MAX_IMAGE_BYTES", "--max-image-bytes", _int(1), str(32 * 1024 * 1024), "largest encoded image accepted (bytes)"),
    Option("max_image_pixels", "INVAD_MAX_IMAGE_PIXELS", "--max-image-pixels", _int(1), str(64_000_000), "largest image accepted (width x height)"),
    Option("https_allow", "INVAD_HTTPS_ALLOW", "--https-allow", _hosts, "", "hosts https:// URIs may name (host, host:port, *.domain)"),
    Option("file_roots", "INVAD_FILE_ROOTS", "--file-roots", _roots, "", "absolute folders file:// URIs may point into"),
    Option("s3_allow_buckets", "INVAD_S3_ALLOW_BUCKETS", "--s3-allow-buckets", _list, "", "buckets s3:// URIs may name (empty: any)"),
    Option("worker_id", "INVAD_WORKER_ID", "--worker-id", _KEYPART, None, "worker id in records and logs (default: hostname-pid)"),
    Option("backoff_max_s", "INVAD_BACKOFF_MAX_S", "--backoff-max-s", _float(0.05), "30", "longest backoff while a dependency is down (s)"),
    Option("drain_timeout_s", "INVAD_DRAIN_TIMEOUT_S", "--drain-timeout-s", _float(0), "60", "after SIGTERM, how long to keep retrying a down dependency (s)"),
    Option("health_dir", "INVAD_HEALTH_DIR", "--health-dir", str, "", "folder for the 'ready' and 'alive' probe files (empty: none)"),
    Option("log_level", "INVAD_LOG_LEVEL", "--log-level", _LEVEL, "info", "log level"),
)
_BY_FIELD = {option.field: option for option in OPTIONS}


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs; see :data:`OPTIONS` for meaning, variables and flags."""
    mode: str = "kafka"
    kafka_bootstrap: tuple[str, ...] = ()
    topic: str = "invad.images"
    group: str = "invad-workers"
    dlq_topic: str = "invad.images.dlq"
    redis_url: str | None = None
    redis_prefix: str = "invad"
    record_ttl_s: int = 604800
    recent_per_line: int = 10000
    top_per_line: int = 1000
    alert_stream_maxlen: int = 100000
    s3_endpoint: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = "invad"
    s3_create_bucket: bool = False
    s3_region: str | None = None
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)
    models: tuple[tuple[str, str], ...] = ()
    device: str | None = None
    batch_size: int = 16
    batch_wait_ms: int = 200
    max_poll_interval_ms: int = 300000
    session_timeout_ms: int = 45000
    heartbeat_interval_ms: int = 3000
    fetch_concurrency: int = 8
    fetch_timeout_s: float = 10.0
    max_image_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    https_allow: tuple[str, ...] = ()
    file_roots: tuple[str, ...] = ()
    s3_allow_buckets: tuple[str, ...] = ()
    worker_id: str = "worker"
    backoff_max_s: float = 30.0
    drain_timeout_s: float = 60.0
    health_dir: str = ""
    log_level: str = "info"

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any] | argparse.Namespace | None = None,
                     environ: Mapping[str, str] | None = None, *, mode: str = "kafka") -> "WorkerConfig":
        """Build and validate a config; ``flags`` holds parsed CLI values by field name (None = not given).

        Raises:
            ValueError: naming the flag or variable, the bad value and what is allowed.
        """
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        flags = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags or {})
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {"mode": mode}
        for option in OPTIONS:
            raw, origin = flags.get(option.field), option.flag
            if raw is None and option.env is not None:
                raw, origin = environ.get(option.env), option.env
                if raw is None and option.field == "s3_region":
                    raw, origin = environ.get("AWS_DEFAULT_REGION"), "AWS_DEFAULT_REGION"
            if raw is None or (raw == "" and option.default is None):  # empty = unset for optional values
                raw, origin = option.default, f"default of {option.env or option.flag}"
            if raw is None:
                continue
            if not isinstance(raw, str):  # already typed (from Python callers)
                values[option.field] = raw
                continue
            try:
                values[option.field] = option.parse(raw)
            except ValueError as error:
                shown = "***" if option.secret else repr(raw)
                raise ValueError(f"{origin}={shown}: {error}") from None
        topic = values.get("topic", cls.topic)
        values.setdefault("dlq_topic", f"{topic}.dlq")
        values.setdefault("worker_id", f"{socket.gethostname()}-{os.getpid()}"[:128])
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Cross-field checks; raises ValueError naming the settings involved."""
        def need(name: str) -> None:
            if not getattr(self, name):
                option = _BY_FIELD[name]
                raise ValueError(f"{option.env} (or {option.flag}) is required in {self.mode} mode")
        if self.mode == "kafka":
            for name in ("kafka_bootstrap", "redis_url", "s3_bucket", "models"):
                need(name)
            if self.dlq_topic == self.topic:
                raise ValueError(f"INVAD_DLQ_TOPIC={self.dlq_topic!r}: must differ from INVAD_TOPIC")
        if self.batch_wait_ms * 4 > self.max_poll_interval_ms:
            raise ValueError(f"INVAD_BATCH_WAIT_MS={self.batch_wait_ms}: must be at most a quarter of "
                             f"INVAD_MAX_POLL_INTERVAL_MS={self.max_poll_interval_ms}")
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(f"INVAD_HEARTBEAT_INTERVAL_MS={self.heartbeat_interval_ms}: must be at most a third "
                             f"of INVAD_SESSION_TIMEOUT_MS={self.session_timeout_ms}")
        if self.backoff_max_s * 1000 * 4 > self.max_poll_interval_ms:
            raise ValueError(f"INVAD_BACKOFF_MAX_S={self.backoff_max_s}: must be at most a quarter of "
                             f"INVAD_MAX_POLL_INTERVAL_MS={self.max_poll_interval_ms} (in seconds)")

    def replace(self, **changes: Any) -> "WorkerConfig":
        config = dataclasses.replace(self, **changes)
        config.validate()
        return config

    def __repr__(self) -> str:  # never print a secret, even by accident in a traceback
        return f"WorkerConfig({', '.join(f'{k}={v!r}' for k, v in self.redacted().items())})"

    def redacted(self) -> dict[str, Any]:
        """The config as a dict fit for a log line: secrets masked, Redis password removed."""
        out = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            option = _BY_FIELD.get(item.name)
            if option is not None and option.secret and value and item.name != "redis_url":
                value = "***"
            out[item.name] = list(value) if isinstance(value, tuple) else value
        if self.redis_url:
            parts = urlsplit(self.redis_url)
            if parts.password:
                netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
                out["redis_url"] = urlunsplit(parts._replace(netloc=netloc))
        return out


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per :data:`OPTIONS` entry; each defaults to None so the variable/default applies."""
    for option in OPTIONS:
        if option.flag is None:
            continue
        default = f" (default: {option.default})" if option.default not in (None, "") else ""
        parser.add_argument(option.flag, dest=option.field, default=None, metavar=option.field.upper(),
                            help=f"{option.help}; env {option.env}{default}")
