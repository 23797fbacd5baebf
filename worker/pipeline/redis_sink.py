"""The one module that imports redis: score records, per-line zsets and the alert stream.

One batch is one MULTI/EXEC round trip: for each image a SET of the ScoreRecord JSON with a TTL, a
ZADD to the line's recent (by capture time) and top (by score) sets, and for a flagged image the
alert script of :mod:`schemas.redis_layout`, which adds a stream entry only if the image's
``alerted`` marker is absent and sets the marker in the same atomic step. A redelivered batch
therefore overwrites each image's record (see schemas/REDIS_LAYOUT.md for what may differ) and adds no
second alert. Each line's sets are trimmed once
per batch.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import redis.exceptions as rerrors
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from schemas import ALERT_ONCE_LUA, AlertEntry, RedisLayout
from worker.common import redis_client

from .errors import DependencyDown, Misconfigured
from .sinks import ScoredImage

log = structlog.get_logger("invad.pipeline.redis")

_TRANSIENT = (rerrors.ConnectionError, rerrors.TimeoutError, rerrors.BusyLoadingError, rerrors.ReadOnlyError,
              rerrors.TryAgainError, rerrors.ClusterDownError)
# Server replies that describe the server's state, not our request: wait and retry.
_TRANSIENT_REPLIES = ("OOM", "MISCONF", "LOADING", "MASTERDOWN", "NOREPLICAS", "BUSY")


# Refusals of who we are or what we may do. AuthenticationError subclasses redis-py's ConnectionError,
# so it must be caught before _TRANSIENT: a wrong password was once retried forever as an outage.
_REFUSED = (rerrors.AuthenticationError, rerrors.AuthenticationWrongNumberOfArgsError, rerrors.AuthorizationError,
            rerrors.NoPermissionError)


def misconfigured_redis(error: BaseException) -> Misconfigured:
    text = str(error)
    if isinstance(error, rerrors.NoPermissionError) or "NOPERM" in text.upper():
        return Misconfigured("redis", f"the Redis user may not run a command the worker needs ({text})",
                             "grant the ACL user the commands and keys deploy/README.md lists "
                             "(least-privilege Redis user), or use another user")
    if isinstance(error, (rerrors.AuthenticationError, rerrors.AuthenticationWrongNumberOfArgsError)) \
            or text.upper().startswith(("NOAUTH", "WRONGPASS")):
        return Misconfigured("redis", f"authentication refused ({text})",
                             "put the right user and password in INVAD_REDIS_URL (redis://USER:PASSWORD@HOST:PORT/DB)")
    return Misconfigured("redis", f"Redis refused the start-up check ({type(error).__name__}: {text})",
                         "check INVAD_REDIS_URL and the server's configuration")


def classify_redis_error(error: BaseException) -> Exception | None:
    """What a Redis failure means for the worker (and ``invad alerts``): Misconfigured for a refusal of
    who we are or what we may do, DependencyDown for an outage or a server-state reply, None for
    anything else."""
    if isinstance(error, _REFUSED):
        return misconfigured_redis(error)
    if isinstance(error, _TRANSIENT) or (isinstance(error, rerrors.ResponseError)
                                         and str(error).upper().startswith(_TRANSIENT_REPLIES)):
        return DependencyDown("redis", f"{type(error).__name__}: {error}")
    return None


def worker_client(url: str, socket_timeout_s: float = 5.0, tls: dict[str, str | None] | None = None) -> Any:
    """A client (TLS files from ``redis_client.tls_settings`` for a rediss:// URL) that makes one
    attempt per command: the caller owns retries and backoff, and must bound each attempt. Connects
    lazily, at the first command."""
    return redis_client.connect(url, tls, socket_timeout=socket_timeout_s,
                                socket_connect_timeout=min(2.0, socket_timeout_s), health_check_interval=15,
                                retry=Retry(NoBackoff(), 0), retry_on_error=[])


def check_at_start(probe: Callable[[], Any], url: str | None = None) -> None:
    """Run a start-up probe of the Redis commands a component needs.

    Raises:
        DependencyDown: Redis is unreachable or loading (the caller waits and retries).
        Misconfigured: Redis refused the credentials, the commands or our TLS settings (a
            certificate not trusted, TLS on one side only).
    """
    try:
        probe()
    except rerrors.RedisError as error:
        meaning = classify_redis_error(error)
        # A connection that fails because of TLS looks like an outage to redis-py: ask why.
        if url and isinstance(meaning, DependencyDown) and isinstance(error, rerrors.ConnectionError):
            refused = redis_client.tls_refusal(error, url)
            meaning = Misconfigured("redis", *refused) if refused else meaning
        raise (meaning or misconfigured_redis(error)) from error


def close_client(client: Any) -> None:
    """Close a client; never raises (shutting down with Redis gone is normal)."""
    try:
        client.close()
    except Exception as error:  # noqa: BLE001 - shutting down
        log.warning("redis_close_failed", error=repr(error))


class RedisSink:
    """Writes every scored image to Redis; idempotent by ``image_id``."""

    def __init__(self, url: str, layout: RedisLayout, *, client: Any = None, socket_timeout_s: float = 5.0,
                 tls: dict[str, str | None] | None = None):
        """``layout``: a :class:`schemas.RedisLayout` (prefix, TTL, trim sizes); ``tls``: the CA and client
        certificate files of a rediss:// URL (``redis_client.tls_settings(config)``). The connection is
        made lazily, so a Redis that is down at start is handled by the loop's retry like any other outage."""
        self.layout = layout
        self._url = url
        self._client = client or worker_client(url, socket_timeout_s, tls)
        self._alert = self._client.register_script(ALERT_ONCE_LUA)
        self._pending: dict[str, ScoredImage] = {}

    @classmethod
    def from_config(cls, config: Any) -> "RedisSink":
        layout = RedisLayout(prefix=config.redis_prefix, record_ttl_s=config.record_ttl_s,
                             recent_max=config.recent_per_line, top_max=config.top_per_line,
                             alerts_maxlen=config.alert_stream_maxlen)
        return cls(config.redis_url, layout, tls=redis_client.tls_settings(config))

    def write(self, batch: Sequence[ScoredImage]) -> None:
        """Stage the batch; nothing is sent until :meth:`flush`."""
        for item in batch:
            self._pending[item.record.image_id] = item

    def flush(self) -> None:
        """Send everything staged in one MULTI/EXEC.

        Raises:
            DependencyDown: Redis unreachable, timing out, loading, read-only or out of memory; the
                staged batch is kept, so the loop's retry sends it again.
        """
        if not self._pending:
            return
        layout, ttl = self.layout, self.layout.record_ttl_s
        pipe = self._client.pipeline(transaction=True)
        lines: set[str] = set()
        for item in self._pending.values():
            record = item.record
            key = layout.score_key(record.image_id)
            pipe.set(key, record.to_json(), ex=ttl)
            pipe.zadd(layout.line_recent_key(record.line_id), {record.image_id: record.captured_at.timestamp()})
            pipe.zadd(layout.line_top_key(record.line_id), {record.image_id: record.score})
            lines.add(record.line_id)
            if record.is_anomaly:
                keys, args = layout.alert_script_args(record.image_id, AlertEntry.from_record(record, key).to_fields())
                self._alert(keys=keys, args=args, client=pipe)
        for line_id in sorted(lines):
            for zset, keep in ((layout.line_recent_key(line_id), layout.recent_max),
                               (layout.line_top_key(line_id), layout.top_max)):
                pipe.zremrangebyrank(zset, 0, -(keep + 1))  # keep the newest / highest ``keep``
                pipe.expire(zset, ttl)
        try:
            pipe.execute()
        except rerrors.RedisError as error:
            # A refusal means credentials or ACL changed under us: exit, and fail fast at the restart.
            meaning = classify_redis_error(error)
            if meaning is None:
                raise
            raise meaning from error
        finally:
            pipe.reset()
        self._pending.clear()

    def check(self) -> None:
        """At start: authenticate, and prove this user may write under the prefix and run the alert
        script (a probe key with a 60 s TTL, then SCRIPT LOAD).

        Raises:
            DependencyDown: Redis is unreachable or loading (the caller waits and retries).
            Misconfigured: Redis refused the credentials, the commands or our TLS settings (a
                certificate not trusted, TLS on one side only).
        """
        probe = f"{self.layout.prefix}:probe"

        def commands() -> None:
            self._client.set(probe, "1", ex=60)
            self._client.script_load(ALERT_ONCE_LUA)
            self._client.delete(probe)
        check_at_start(commands, self._url)

    def ping(self) -> bool:
        """True when Redis answers a PING (the readiness check; any failure is False, never raised)."""
        try:
            return bool(self._client.ping())
        except rerrors.RedisError:
            return False

    def close(self) -> None:
        close_client(self._client)
