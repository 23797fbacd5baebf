"""Where scores live in Redis: key builders for one configurable prefix (the contract is REDIS_LAYOUT.md).

Keys, for prefix "invad":
    invad:score:{image_id}        string: ScoreRecord JSON, EX record_ttl_s
    invad:line:{line_id}:recent   sorted set: image_id scored by captured_at (epoch seconds), newest recent_max kept
    invad:line:{line_id}:top      sorted set: image_id scored by score, highest top_max kept
    invad:alerts                  stream of AlertEntry field maps, MAXLEN ~ alerts_maxlen
    invad:alerted:{image_id}      string: stream id of the image's alert, EX record_ttl_s (exactly-once marker)
    invad:drift:{line_id}:{product}  hash: drift state of a line and product (DriftEntry.status_fields), no TTL
    invad:model:{product}:active  string: the product's active model version (JSON pointer), no TTL
    invad:model:{product}:history list: activations, newest first (the first is the active one), no TTL
    invad:model:products          set: products that have an active version, no TTL

This module builds names and holds the alert script; it never talks to Redis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .image_ref import IMAGE_ID_RE, LINE_ID_RE, PRODUCT_RE

# The defaults of every deployment setting of the layout; the worker's configuration takes them from here.
DEFAULT_PREFIX = "invad"
DEFAULT_RECORD_TTL_S = 7 * 24 * 3600
DEFAULT_RECENT_MAX = 10_000
DEFAULT_TOP_MAX = 1_000
DEFAULT_ALERTS_MAXLEN = 100_000

PREFIX_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"  # and not ending with ":"
PREFIX_RE = re.compile(f"^{PREFIX_PATTERN}$")

# Adds an alert at most once per image_id, atomically (a Lua script runs without interleaving):
# a redelivered message finds the marker and adds nothing; a crash cannot separate marker and entry.
#   KEYS[1] = alerted_key(image_id), KEYS[2] = alerts_key
#   ARGV[1] = marker TTL (s), ARGV[2] = approximate stream MAXLEN, ARGV[3..] = field, value, ...
# Returns the new stream id, or false (nil) when the image was already alerted.
ALERT_ONCE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
return id
"""

# Records a drift state change at most once (compare-and-set on the stored state): the status hash is
# written and the drift entry added only when the stored state (absent = "ok") differs from the new
# one, so a replayed batch, a restarted worker or a second worker seeing the same change adds nothing.
#   KEYS[1] = drift_key(line_id, product), KEYS[2] = alerts_key
#   ARGV[1] = new state, ARGV[2] = approximate stream MAXLEN, ARGV[3] = N status field/value pairs,
#   ARGV[4 .. 3 + 2N] = status pairs, the rest = alert entry field/value pairs
# Returns the new stream id, or false (nil) when the stored state is already the new one.
DRIFT_ONCE_LUA = """
local current = redis.call('HGET', KEYS[1], 'state') or 'ok'
if current == ARGV[1] then
  return false
end
local n = tonumber(ARGV[3])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 4 + 2 * n))
redis.call('HSET', KEYS[1], 'alert_id', id, unpack(ARGV, 4, 3 + 2 * n))
return id
"""


def _positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class RedisLayout:
    """Key names and retention limits for one deployment.

    Args:
        prefix: key prefix; [A-Za-z0-9][A-Za-z0-9._:-]{0,63}, e.g. "invad" or "invad-staging". Use a
            unique prefix per test run.
        record_ttl_s: lifetime of score records and alert markers, seconds. Must exceed the longest
            time a message can be redelivered after its first processing (the alert stays exactly-once
            only while its marker lives).
        recent_max: newest entries kept per line in ``line:{id}:recent``.
        top_max: highest-scored entries kept per line in ``line:{id}:top``.
        alerts_maxlen: approximate length cap of the alert stream (XADD MAXLEN ~).

    Raises:
        ValueError: naming the bad argument and what is allowed.
    """

    prefix: str = DEFAULT_PREFIX
    record_ttl_s: int = DEFAULT_RECORD_TTL_S
    recent_max: int = DEFAULT_RECENT_MAX
    top_max: int = DEFAULT_TOP_MAX
    alerts_maxlen: int = DEFAULT_ALERTS_MAXLEN

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or not PREFIX_RE.match(self.prefix) or self.prefix.endswith(":"):
            raise ValueError(
                f"Redis key prefix {self.prefix!r} is not allowed; use 1-64 characters of "
                "[A-Za-z0-9._:-], starting with a letter or digit and not ending with ':'"
            )
        for name in ("record_ttl_s", "recent_max", "top_max", "alerts_maxlen"):
            _positive_int(name, getattr(self, name))

    def score_key(self, image_id: str) -> str:
        """Key of the ScoreRecord JSON string of ``image_id``."""
        return f"{self.prefix}:score:{_checked(IMAGE_ID_RE, 'image_id', image_id)}"

    def line_recent_key(self, line_id: str) -> str:
        """Sorted set of the line's newest image ids, scored by captured_at in epoch seconds."""
        return f"{self.prefix}:line:{_checked(LINE_ID_RE, 'line_id', line_id)}:recent"

    def line_top_key(self, line_id: str) -> str:
        """Sorted set of the line's highest-scored image ids, scored by ScoreRecord.score."""
        return f"{self.prefix}:line:{_checked(LINE_ID_RE, 'line_id', line_id)}:top"

    @property
    def alerts_key(self) -> str:
        """The alert stream."""
        return f"{self.prefix}:alerts"

    def alerted_key(self, image_id: str) -> str:
        """Marker holding the stream id of ``image_id``'s alert; its presence means 'already alerted'."""
        return f"{self.prefix}:alerted:{_checked(IMAGE_ID_RE, 'image_id', image_id)}"

    def drift_key(self, line_id: str, product: str) -> str:
        """Hash of the drift state of ``line_id`` and ``product`` (products hold no ':', so it parses back)."""
        return (f"{self.prefix}:drift:{_checked(LINE_ID_RE, 'line_id', line_id)}:"
                f"{_checked(PRODUCT_RE, 'product', product)}")

    def drift_script_args(self, line_id: str, product: str, state: str, status: dict[str, str],
                          fields: dict[str, str]) -> tuple[list[str], list[str]]:
        """(keys, args) for DRIFT_ONCE_LUA: the change of ``line_id``/``product`` to ``state``, with the
        status hash fields ``status`` and the alert entry ``fields`` (DriftEntry.status_fields/to_fields)."""
        args = [state, str(self.alerts_maxlen), str(len(status))]
        for mapping in (status, fields):
            for name, value in mapping.items():
                args.extend((name, value))
        return [self.drift_key(line_id, product), self.alerts_key], args

    def model_active_key(self, product: str) -> str:
        """The pointer to ``product``'s active model version (``invad models activate``); workers poll it."""
        return f"{self.prefix}:model:{_checked(PRODUCT_RE, 'product', product)}:active"

    def model_history_key(self, product: str) -> str:
        """``product``'s activations, newest first; ``invad models rollback`` returns to the second."""
        return f"{self.prefix}:model:{_checked(PRODUCT_RE, 'product', product)}:history"

    @property
    def model_products_key(self) -> str:
        """Set of the products that have an active version (what INVAD_MODEL_POINTERS=* watches)."""
        return f"{self.prefix}:model:products"

    def alert_script_args(self, image_id: str, fields: dict[str, str]) -> tuple[list[str], list[str]]:
        """(keys, args) for ALERT_ONCE_LUA adding ``fields`` (AlertEntry.to_fields()) for ``image_id``."""
        args = [str(self.record_ttl_s), str(self.alerts_maxlen)]
        for name, value in fields.items():
            args.extend((name, value))
        return [self.alerted_key(image_id), self.alerts_key], args


def _checked(pattern: re.Pattern[str], name: str, value: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ValueError(f"{name} {value!r} does not match {pattern.pattern}")
    return value
