"""Message contracts of invad: JSON Schema files (the source of truth for producers in any language,
shipped as package data next to this file) and the Python types that encode, decode and validate them.

Every message carries ``schema_version`` "MAJOR.MINOR" (1.0; alert entries and dead letters 1.1).
Readers accept any 1.x, ignore unknown fields, and raise SchemaError with reason "invalid_json",
"unsupported_version" or "schema_invalid".
"""

from ._validate import SCHEMA_NAMES, SCHEMA_VERSION, SUPPORTED_MAJOR, SchemaError, load_schema, validate
from .alert import AlertEntry, DriftEntry, decode_alert, drift_event_id
from .dead_letter import DEAD_LETTER_REASONS, DeadLetter
from .image_ref import ImageRef
from .redis_layout import ALERT_ONCE_LUA, DRIFT_ONCE_LUA, RedisLayout
from .score_record import ARTEFACT_KINDS, NO_ARTEFACTS, ScoreRecord, embedded_source, kafka_source

__all__ = [
    "ALERT_ONCE_LUA",
    "ARTEFACT_KINDS",
    "AlertEntry",
    "DEAD_LETTER_REASONS",
    "DRIFT_ONCE_LUA",
    "DeadLetter",
    "DriftEntry",
    "ImageRef",
    "NO_ARTEFACTS",
    "RedisLayout",
    "SCHEMA_NAMES",
    "SCHEMA_VERSION",
    "SUPPORTED_MAJOR",
    "SchemaError",
    "ScoreRecord",
    "decode_alert",
    "drift_event_id",
    "embedded_source",
    "kafka_source",
    "load_schema",
    "validate",
]
