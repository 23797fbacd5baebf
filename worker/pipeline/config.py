"""One frozen :class:`WorkerConfig` per process, built from CLI flags and ``INVAD_*`` variables.

Every setting is declared once, as a field of :class:`WorkerConfig` made by :func:`setting`: its
default, its rule (parser and what is allowed), its help, whether it is a secret, and (when they do
not follow from the field name) its variables and flag. From that one declaration come the flags
(:func:`add_config_arguments`), the variable parsing (:meth:`WorkerConfig.from_sources`), the
redacted start-up log line (:meth:`WorkerConfig.redacted`) and ``docs/CONFIGURATION.md``
(:mod:`worker.pipeline.config_doc`).

A flag wins over its variable, a variable over the default. Every value is checked when the object
is made, so a typo fails in the first second with a message naming the flag or variable, the value
(credentials masked) and what is allowed, instead of an hour later in a sink.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
import socket
import tempfile
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

from schemas import redis_layout
from schemas.image_ref import PRODUCT_MAX_LEN, PRODUCT_RE
from worker.common import kafka_security, redis_client, s3client

from .redact import MASK, credentials_in, redact_text, redact_value

MODES = ("kafka", "embedded")
DOC_PATH = "docs/CONFIGURATION.md"


@dataclass(frozen=True)
class Rule:
    """How a setting's text becomes its value: ``parse`` raises ValueError saying what is wrong and what
    is allowed; ``allowed`` says the same for help and docs."""
    parse: Callable[[str], Any]
    allowed: str


def _int(low: int, high: int | None = None) -> Rule:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError("must be an integer") from None
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be in [{low}, {high if high is not None else 'inf'}]")
        return value
    return Rule(parse, f"integer in [{low}, {high if high is not None else 'inf'}]")


def _float(low: float) -> Rule:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("must be a number") from None
        if not value >= low or value == float("inf"):
            raise ValueError(f"must be a finite number >= {low}")
        return value
    return Rule(parse, f"number >= {low}")


def _p_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number") from None
    if not 0.0 < value < 0.5:
        raise ValueError("must be a probability in (0, 0.5), e.g. 0.0001")
    return value


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


def parse_models(text: str) -> tuple[tuple[str, str], ...]:
    """``path`` (one bundle for every product) or ``product=path,product=path,*=path``."""
    text = str(text).strip()
    if not text:
        return ()
    if "=" not in text:
        return (("*", text),)
    pairs: list[tuple[str, str]] = []
    for part in _list(text):
        product, sep, path = part.partition("=")
        product, path = product.strip(), path.strip()
        if not sep or not path or not re.fullmatch(r"\*|[A-Za-z0-9][A-Za-z0-9._-]*", product):
            raise ValueError(f"{part!r} is not product=path (product: [A-Za-z0-9][A-Za-z0-9._-]* or *)")
        if product in dict(pairs):
            raise ValueError(f"product {product!r} is mapped twice")
        pairs.append((product, path))
    return tuple(pairs)


def _pointers(text: str) -> tuple[str, ...]:
    products = _list(text)
    if "*" in products and len(products) > 1:
        raise ValueError("'*' (every activated product) cannot be combined with product names")
    for product in products:
        if product != "*" and (len(product) > PRODUCT_MAX_LEN or not PRODUCT_RE.match(product)):
            raise ValueError(f"{product!r} is not a product key "
                             f"(1-{PRODUCT_MAX_LEN} characters of {PRODUCT_RE.pattern})")
    return products


def _device(text: str) -> str | None:
    text = str(text).strip()
    if not text or text == "auto":
        return None
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?|mps", text):
        raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
    return text


def _url(*schemes: str, bare: bool = False) -> Rule:
    """A URL of one of ``schemes``; ``bare`` ones may not carry a user, password, query or fragment."""
    def parse(text: str) -> str:
        text = str(text).strip()
        parts = urlsplit(text)
        if parts.scheme not in schemes or not (parts.netloc or parts.scheme == "unix"):
            raise ValueError(f"must be a URL with scheme {' or '.join(schemes)}")
        if bare and ("@" in parts.netloc or parts.query or parts.fragment):
            raise ValueError("must not carry a user, password, query or fragment (S3 credentials come from "
                             "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
        return text
    kinds = " or ".join(f"{scheme}://" for scheme in schemes)
    return Rule(parse, f"{kinds} URL" + (" (no user, password or query)" if bare else ""))


def _address(text: str) -> str:
    text = str(text).strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", text):
        raise ValueError("must be an IP address (0.0.0.0: every interface, 127.0.0.1: this machine, ::: IPv6) "
                         "or a host name")
    return text.lower()


def _bootstrap(text: str) -> tuple[str, ...]:
    servers = _list(text)
    for server in servers:
        if not re.fullmatch(r"[A-Za-z0-9_.\[\]:-]+:[0-9]{1,5}", server):
            raise ValueError(f"{server!r} is not host:port")
    return servers


def _choice(*choices: str) -> Rule:
    def parse(text: str) -> str:
        if str(text) not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return str(text)
    return Rule(parse, " | ".join(choices))


def _name(pattern: str, allowed: str) -> Rule:
    def parse(text: str) -> str:
        if not re.fullmatch(pattern, str(text)):
            raise ValueError(f"must match {allowed}")
        return str(text)
    return Rule(parse, allowed)


_TOPIC = _name(r"[A-Za-z0-9._-]{1,249}", "[A-Za-z0-9._-]{1,249}")
_KEYPART = _name(r"[A-Za-z0-9._:-]{1,128}", "[A-Za-z0-9._:-]{1,128}")
_REDIS_PREFIX = _name(redis_layout.PREFIX_PATTERN + r"(?<!:)",
                      "1-64 characters of [A-Za-z0-9._:-], starting with a letter or digit, not ending with ':'")
_BUCKET = _name(s3client.BUCKET_PATTERN, f"an S3 bucket name ({s3client.BUCKET_PATTERN})")
_PREFIX = _name(r"[A-Za-z0-9._/-]{0,256}", "[A-Za-z0-9._/-]{0,256}")
_LEVEL = _name(r"debug|info|warning|error", "debug, info, warning or error")
_TEXT = Rule(str, "any text")
_BOOL = Rule(_bool, "true/false (also 1/0, yes/no, on/off)")
_LIST = Rule(_list, "comma-separated names")
_HOSTS = Rule(_hosts, "comma-separated host, host:port or *.domain")
_ROOTS = Rule(_roots, "comma-separated absolute paths")
_MODELS = Rule(parse_models, "bundle path, or product=path,...,*=path")
_POINTERS = Rule(_pointers, "comma-separated product keys, or * for every activated product")
_ABSPATH = Rule(lambda text: _roots(text)[0] if _list(text) else "", "an absolute path")
_DEVICE = Rule(_device, "auto, cpu, cuda, cuda:N or mps")
_BOOTSTRAP = Rule(_bootstrap, "comma-separated host:port")
_ADDRESS = Rule(_address, "IP address or host name")
_PEM_FILE = Rule(lambda text: os.path.expanduser(str(text)), "path of a readable PEM file")
_P_VALUE = Rule(_p_value, "number in (0, 0.5)")


def setting(default: Any, rule: Rule, help: str, *, env: tuple[str, ...] = (), flag: bool = True,
            secret: bool = False, derived: str | None = None) -> Any:
    """Declare one setting as a dataclass field. The variable is ``INVAD_<FIELD>`` and the flag
    ``--<field>`` unless ``env`` names other variables (the first one set wins) or ``flag`` is False.
    ``derived`` says how a None default is filled in; ``secret`` values are masked in every log line."""
    return field(default=default, metadata={"setting": dict(rule=rule, help=help, env=env, flag=flag, secret=secret,
                                                             derived=derived)})


@dataclass(frozen=True)
class Option:
    """A declared setting as the rest of the program sees it (one per :data:`OPTIONS` entry)."""
    name: str
    default: Any
    rule: Rule
    help: str
    env: tuple[str, ...]
    flag: str | None
    secret: bool
    derived: str | None

    def shown(self, value: Any) -> str:
        """``value`` as an error message may show it: credentials masked, a secret masked whole."""
        text = value if isinstance(value, str) else as_text(value)
        return repr(redact_text(text)) if not self.secret or "://" in text else MASK


def as_text(value: Any) -> str:
    """A setting's value written the way its variable takes it (for defaults in help and docs)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join("=".join(item) if isinstance(item, (tuple, list)) else str(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"[:128]


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs; each field's meaning, variable and flag is in its declaration
    (and in docs/CONFIGURATION.md). Made only valid: construction raises ValueError otherwise."""
    mode: str = "kafka"  # set by the command (``--source`` means embedded), not by a variable
    # -- Kafka --
    kafka_bootstrap: tuple[str, ...] = setting((), _BOOTSTRAP, "Kafka bootstrap servers (required in kafka mode)")
    topic: str = setting("invad.images", _TOPIC, "topic of ImageRef messages")
    group: str = setting("invad-workers", _TOPIC, "consumer group id")
    dlq_topic: str = setting(None, _TOPIC, "dead-letter topic", derived="<topic>.dlq")
    max_poll_interval_ms: int = setting(300000, _int(5_000), "Kafka max.poll.interval.ms")
    session_timeout_ms: int = setting(45000, _int(1_000), "Kafka session.timeout.ms")
    heartbeat_interval_ms: int = setting(3000, _int(100), "Kafka heartbeat.interval.ms")
    # Kafka security, shared with `invad produce` (worker/common/kafka_security.py builds the client arguments)
    kafka_security_protocol: str = setting("PLAINTEXT", _choice(*kafka_security.PROTOCOLS),
                                           "how clients talk to the brokers (security.protocol)")
    kafka_sasl_mechanism: str | None = setting(None, _choice(*kafka_security.MECHANISMS),
                                               "SASL mechanism (required with SASL_SSL and SASL_PLAINTEXT)")
    kafka_sasl_username: str | None = setting(None, _TEXT, "SASL user (required with SASL_*)")
    kafka_sasl_password: str | None = setting(None, _TEXT, "SASL password (required with SASL_*); a variable "
                                              "only, so it never shows in a process list", flag=False, secret=True)
    kafka_ssl_cafile: str | None = setting(None, _PEM_FILE, "CA certificate(s) that signed the brokers' "
                                           "certificates (SSL, SASL_SSL; empty: the system's CAs)")
    kafka_ssl_certfile: str | None = setting(None, _PEM_FILE, "client certificate, for brokers that require one "
                                             "(ssl.client.auth=required)")
    kafka_ssl_keyfile: str | None = setting(None, _PEM_FILE, "unencrypted private key of the client certificate "
                                            "(empty: inside the certificate file)")
    kafka_ssl_check_hostname: bool = setting(True, _BOOL, "check that a broker's certificate names the host "
                                             "connected to")
    stall_check_s: float = setting(15.0, _float(0), "while this worker is a stable group member holding no partition, "
                                   "how often it asks the broker whether a partition of the topic is owned by no "
                                   "member (s; 0: never)")
    stall_rejoin_s: float = setting(30.0, _float(0), "partitions still owned by no member this long after that was "
                                    "first seen: leave and rejoin the group (s); unready meanwhile")
    # -- Redis --
    redis_url: str | None = setting(None, _url("redis", "rediss", "unix"),
                                    "Redis URL for score records and alerts (required in kafka mode): "
                                    "redis[s]://USER:PASSWORD@HOST:PORT/DB for an ACL user, rediss:// for TLS; "
                                    "a password in it is masked in logs, but prefer the variable to the flag",
                                    secret=True)
    redis_ssl_ca_certs: str | None = setting(None, _PEM_FILE, "CA certificate(s) that signed the Redis server's "
                                             "certificate (rediss:// only; empty: the system's CAs)")
    redis_ssl_certfile: str | None = setting(None, _PEM_FILE, "client certificate, for a Redis with "
                                             "tls-auth-clients yes (rediss:// only)")
    redis_ssl_keyfile: str | None = setting(None, _PEM_FILE, "unencrypted private key of the Redis client "
                                            "certificate (empty: inside the certificate file)")
    # Redis defaults are the layout's own (schemas/redis_layout.py), written once there.
    redis_prefix: str = setting(redis_layout.DEFAULT_PREFIX, _REDIS_PREFIX, "prefix of every Redis key")
    record_ttl_s: int = setting(redis_layout.DEFAULT_RECORD_TTL_S, _int(1),
                                "TTL of score records and alert markers in Redis (s)")
    recent_per_line: int = setting(redis_layout.DEFAULT_RECENT_MAX, _int(1), "size of each line's recent zset")
    top_per_line: int = setting(redis_layout.DEFAULT_TOP_MAX, _int(1), "size of each line's top-score zset")
    alert_stream_maxlen: int = setting(redis_layout.DEFAULT_ALERTS_MAXLEN, _int(1),
                                       "approximate MAXLEN of the alert stream")
    # -- S3 --
    s3_endpoint: str | None = setting(None, _url("http", "https", bare=True), "S3 endpoint URL", derived="AWS")
    s3_bucket: str | None = setting(None, _BUCKET, "bucket for flagged images, overlays and records "
                                    "(required in kafka mode)")
    s3_prefix: str = setting("invad", _PREFIX, "key prefix inside the bucket")
    s3_create_bucket: bool = setting(False, _BOOL, "create the bucket at start when missing")
    s3_region: str | None = setting(None, _TEXT, "S3 region", env=("AWS_REGION", "AWS_DEFAULT_REGION"), flag=False)
    aws_access_key_id: str | None = setting(None, _TEXT, "S3 access key", env=("AWS_ACCESS_KEY_ID",), flag=False,
                                            secret=True)
    aws_secret_access_key: str | None = setting(None, _TEXT, "S3 secret key", env=("AWS_SECRET_ACCESS_KEY",),
                                                flag=False, secret=True)
    aws_session_token: str | None = setting(None, _TEXT, "S3 session token", env=("AWS_SESSION_TOKEN",),
                                            flag=False, secret=True)
    # -- models and batches --
    models: tuple[tuple[str, str], ...] = setting((), _MODELS, "model bundle for every product, or one per "
                                                  "product (required)")
    model_pointers: tuple[str, ...] = setting((), _POINTERS, "products whose bundle follows its active version in "
                                              "Redis (`invad models activate`), switched without a restart; * for "
                                              "every activated product (docs/OPERATIONS.md, section 6)")
    model_bucket: str | None = setting(None, _BUCKET, "bucket of published model bundles (`invad models publish`)",
                                       derived="INVAD_S3_BUCKET")
    model_cache_dir: str = setting(None, _ABSPATH, "folder for downloaded model bundles",
                                   derived="<temp dir>/invad-models")
    model_watch_s: float = setting(10.0, _float(0.1), "how often the active-version pointers are read (s)")
    device: str | None = setting(None, _DEVICE, "torch device", derived="auto")
    batch_size: int = setting(16, _int(1, 4096), "images per batch (= max.poll.records)")
    batch_wait_ms: int = setting(200, _int(0, 600_000), "longest wait to fill a batch (ms)")
    max_in_flight: int = setting(3, _int(1, 8), "batches in flight at once: while one is scored, the next is fetched "
                                 "and decoded and the previous one written (1: one stage at a time)")
    # -- fetching images --
    fetch_concurrency: int = setting(8, _int(1, 256), "parallel image fetches")
    fetch_timeout_s: float = setting(10.0, _float(0.1), "connect/read timeout of one image fetch (s)")
    max_image_bytes: int = setting(32 * 1024 * 1024, _int(1), "largest encoded image accepted (bytes)")
    max_image_pixels: int = setting(64_000_000, _int(1), "largest image accepted (width x height)")
    https_allow: tuple[str, ...] = setting((), _HOSTS, "hosts https:// URIs may name (empty: none)")
    file_roots: tuple[str, ...] = setting((), _ROOTS, "folders file:// URIs may point into (empty: none in "
                                          "kafka mode)")
    s3_allow_buckets: tuple[str, ...] = setting((), _LIST, "buckets s3:// URIs may name (empty: any)")
    # -- drift watch (kafka mode; worker/pipeline/drift.py) --
    drift_watch: bool = setting(True, _BOOL, "kafka mode: watch each line and product for drift against the "
                                "bundle's calibration; a change sets {prefix}:drift:{line}:{product} and adds a drift alert")
    drift_window: int = setting(500, _int(10, 100_000), "drift window: the newest scored images kept per line and "
                                "product")
    drift_min_count: int = setting(100, _int(10, 100_000), "fewest images in a drift window before it is tested")
    drift_p_value: float = setting(1e-4, _P_VALUE, "a drift test (flag rate, score shift) fires below this p-value; "
                                   "drift clears when both are above its square root")
    # -- the process --
    worker_id: str = setting(None, _KEYPART, "worker id in records and logs", derived="<hostname>-<pid>")
    backoff_max_s: float = setting(30.0, _float(0.05), "longest backoff while a dependency is down (s)")
    drain_timeout_s: float = setting(60.0, _float(0), "after SIGTERM, how long to keep retrying a down "
                                     "dependency (s)")
    health_dir: str = setting("", _TEXT, "folder for the 'ready' and 'alive' probe files (empty: none)")
    metrics_port: int = setting(None, _int(0, 65535), "port of the HTTP server for /metrics, /healthz and /readyz "
                                "(0: no server)", derived="9400 in kafka mode, 0 in embedded mode")
    metrics_bind: str = setting("0.0.0.0", _ADDRESS, "address that server listens on (127.0.0.1: this machine only)")
    health_stale_s: float = setting(None, _float(1), "/healthz fails once the loop has not turned for this long (s)",
                                    derived="max.poll.interval.ms in seconds")
    ready_check_s: float = setting(5.0, _float(0.5), "/readyz checks that Redis and S3 answer at most this often (s)")
    log_level: str = setting("info", _LEVEL, "log level")

    def __post_init__(self) -> None:
        """Fill derived defaults, parse every value by its rule (so Python callers get the same checks
        and normal forms as variables), then the checks that involve several settings."""
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {MODES}")
        derived = {"dlq_topic": lambda: f"{self.topic}.dlq", "worker_id": default_worker_id,
                   "metrics_port": lambda: 9400 if self.mode == "kafka" else 0,
                   "health_stale_s": lambda: self.max_poll_interval_ms / 1000,
                   "model_bucket": lambda: self.s3_bucket,
                   "model_cache_dir": lambda: os.path.join(tempfile.gettempdir(), "invad-models")}
        for option in OPTIONS:
            value = getattr(self, option.name)
            if value is None and option.name in derived:
                value = derived[option.name]()
            if value is not None:
                try:
                    value = option.rule.parse(as_text(value))
                except ValueError as error:
                    raise ValueError(f"{option.name}={option.shown(value)}: {error}") from None
            object.__setattr__(self, option.name, value)
        self.validate()

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any] | argparse.Namespace | None = None,
                     environ: Mapping[str, str] | None = None, *, mode: str = "kafka") -> "WorkerConfig":
        """Build and validate a config; ``flags`` holds parsed CLI values by field name (None = not given).

        Raises:
            ValueError: naming the flag or variable, the bad value (credentials masked) and what is allowed.
        """
        flags = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags or {})
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {"mode": mode}
        for option in OPTIONS:
            value = _read(option, flags, environ)
            if value is not None:
                values[option.name] = value
        return cls(**values)

    def validate(self) -> None:
        """Checks that involve several settings; raises ValueError naming each of them."""
        def named(name: str) -> str:  # INVAD_BATCH_WAIT_MS=200 (--batch-wait-ms)
            option = _BY_NAME[name]
            return f"{option.env[0]}={as_text(getattr(self, name))}" + (f" ({option.flag})" if option.flag else "")

        if self.mode == "kafka":
            for name in ("kafka_bootstrap", "redis_url", "s3_bucket"):
                if not getattr(self, name):
                    option = _BY_NAME[name]
                    raise ValueError(f"{option.env[0]} (or {option.flag}) is required in kafka mode")
            if not self.models and not self.model_pointers:
                raise ValueError("INVAD_MODELS (or --models) or INVAD_MODEL_POINTERS (or --model-pointers) is "
                                 "required in kafka mode: a bundle path, or the products that follow "
                                 "`invad models activate`")
            if self.dlq_topic == self.topic:
                raise ValueError(f"{named('dlq_topic')}: must differ from {named('topic')}")
        elif self.model_pointers:
            raise ValueError(f"{named('model_pointers')}: needs kafka mode (the pointers live in Redis); "
                             "give embedded mode a bundle path with INVAD_MODELS")
        if self.batch_wait_ms * 4 > self.max_poll_interval_ms:
            raise ValueError(f"{named('batch_wait_ms')}: must be at most a quarter of {named('max_poll_interval_ms')}")
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(f"{named('heartbeat_interval_ms')}: must be at most a third of "
                             f"{named('session_timeout_ms')}")
        if self.drift_min_count > self.drift_window:
            raise ValueError(f"{named('drift_min_count')}: must be at most {named('drift_window')}")
        if self.backoff_max_s * 1000 * 4 > self.max_poll_interval_ms:
            raise ValueError(f"{named('backoff_max_s')}: must be at most a quarter of "
                             f"{named('max_poll_interval_ms')} (in seconds)")
        # Security settings that cannot work together, and certificate files, fail here, not at a handshake.
        kafka_security.check(self, label)
        redis_client.check(self, label)

    def replace(self, **changes: Any) -> "WorkerConfig":
        """A copy with ``changes``, checked like any new config."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:  # never print a secret, even by accident in a traceback
        return f"WorkerConfig({', '.join(f'{k}={v!r}' for k, v in self.redacted().items())})"

    def redacted(self) -> dict[str, Any]:
        """The config as a dict fit for a log line: secrets masked, credentials in URLs masked."""
        out: dict[str, Any] = {"mode": self.mode}
        for option in OPTIONS:
            out[option.name] = redact_value(getattr(self, option.name), option.secret)
        return out

    def secrets(self) -> list[str]:
        """Every credential this config holds (secret values, URL passwords and tokens), for a log
        redactor to mask wherever one turns up."""
        found = []
        for option in OPTIONS:
            value = getattr(self, option.name)
            for text in (value if isinstance(value, tuple) else (value,)):
                if isinstance(text, str) and text:
                    found += [text] if option.secret and "://" not in text else credentials_in(text)
        return found


def _option(item: dataclasses.Field) -> Option:
    spec = dict(item.metadata["setting"])
    spec["env"] = spec["env"] or (f"INVAD_{item.name.upper()}",)
    spec["flag"] = f"--{item.name.replace('_', '-')}" if spec["flag"] else None
    return Option(item.name, item.default, **spec)


def _lookup(option: Option, flags: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[Any, str | None]:
    """The raw value of ``option`` and where it came from: its flag, else the first of its variables set."""
    if flags.get(option.name) is not None:
        return flags[option.name], option.flag
    for name in option.env:
        raw = environ.get(name)
        if raw is not None and (raw != "" or option.default is not None):  # empty = unset for optional values
            return raw, name
    return None, None


def _read(option: Option, flags: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    """The value of ``option`` from its flag or variable, parsed by its rule (None when neither is set;
    a value that is already typed, from a Python caller, is passed through to be checked later)."""
    raw, origin = _lookup(option, flags, environ)
    if raw is None or not isinstance(raw, str):
        return raw
    try:
        return option.rule.parse(raw)
    except ValueError as error:
        raise ValueError(f"{origin}={option.shown(raw)}: {error}") from None


OPTIONS: tuple[Option, ...] = tuple(_option(item) for item in dataclasses.fields(WorkerConfig)
                                    if "setting" in item.metadata)
_BY_NAME = {option.name: option for option in OPTIONS}


def label(name: str) -> str:
    """How a message names setting ``name``: its variable, and its flag when it has one."""
    option = _BY_NAME[name]
    return option.env[0] + (f" ({option.flag})" if option.flag else "")


def read_settings(names: Iterable[str], flags: Mapping[str, Any] | argparse.Namespace | None = None,
                  environ: Mapping[str, str] | None = None) -> SimpleNamespace:
    """Just the settings ``names``, read and checked as :meth:`WorkerConfig.from_sources` reads them
    (flag over variable over default), for commands that share some of the worker's settings:
    `invad produce` reads ``kafka_security.SETTINGS``, `invad alerts` ``redis_client.SETTINGS``.

    Raises:
        ValueError: naming the flag or variable, the bad value (credentials masked) and what is allowed.
    """
    flags = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags or {})
    environ = os.environ if environ is None else environ
    wanted = set(names)
    values = {option.name: _read(option, flags, environ) for option in OPTIONS if option.name in wanted}
    settings = SimpleNamespace(**{name: _BY_NAME[name].default if value is None else value
                                  for name, value in values.items()})
    if wanted >= set(kafka_security.SETTINGS):
        kafka_security.check(settings, label)
    if wanted >= set(redis_client.SETTINGS):
        redis_client.check(settings, label)
    return settings


def default_text(option: Option) -> str:
    """The default as help and docs show it (a derived default says how it is derived)."""
    return option.derived if option.default is None and option.derived else as_text(option.default)


def add_config_arguments(parser: argparse.ArgumentParser, names: Iterable[str] | None = None,
                         title: str = "settings") -> None:
    """Add one flag per setting that has one (only those of ``names`` when given); each defaults to None
    so the variable, then the default, applies."""
    wanted = None if names is None else set(names)
    group = parser.add_argument_group(title, f"each flag overrides its variable; see {DOC_PATH}")
    for option in OPTIONS:
        if option.flag is None or (wanted is not None and option.name not in wanted):
            continue
        default = default_text(option)
        text = (f"{option.help} [{option.rule.allowed}]; env {option.env[0]}"
                + (f"; default {default}" if default else ""))
        group.add_argument(option.flag, dest=option.name, default=None, metavar=option.name.upper(),
                           help=text.replace("%", "%%"))
