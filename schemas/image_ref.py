"""ImageRef: the message producers publish, one per image (contract: image_ref.v1.json)."""

from __future__ import annotations

import re
from dataclasses import InitVar, dataclass, field
from datetime import datetime
from typing import Any, Mapping, Union

from ._validate import (
    JsonMessage,
    check_version,
    format_timestamp,
    load_schema,
    parse_timestamp,
    validate,
)

AttributeValue = Union[str, int, float, bool]

_DEFS = load_schema("image_ref")["$defs"]
# The field patterns, compiled from the schema file so that CLIs and id builders share one definition.
IMAGE_ID_RE = re.compile(_DEFS["image_id"]["pattern"])
IMAGE_ID_MAX_LEN = _DEFS["image_id"]["maxLength"]
LINE_ID_RE = re.compile(_DEFS["line_id"]["pattern"])
LINE_ID_MAX_LEN = _DEFS["line_id"]["maxLength"]
PRODUCT_RE = re.compile(_DEFS["product"]["pattern"])
PRODUCT_MAX_LEN = _DEFS["product"]["maxLength"]
ATTRIBUTE_KEY_RE = re.compile(load_schema("image_ref")["properties"]["attributes"]["propertyNames"]["pattern"])
MAX_ATTRIBUTES = load_schema("image_ref")["properties"]["attributes"]["maxProperties"]
URI_RE = re.compile(load_schema("image_ref")["properties"]["uri"]["pattern"])


@dataclass(frozen=True)
class ImageRef(JsonMessage):
    """A reference to one image to score.

    Construction validates every field against the schema and raises SchemaError("schema_invalid")
    naming the bad field, so an ImageRef that exists always encodes to a valid message.

    Attributes:
        image_id: unique id, safe in Redis and S3 keys (see the schema's pattern).
        uri: s3://bucket/key, https://host/path, or file:///abs/path (embedded/dev only).
        line_id: production line; the Kafka key.
        product: product key that selects the model.
        captured_at: timezone-aware capture time.
        producer: who published the reference.
        camera_id: camera on the line, if known.
        attributes: up to 64 free-form str/number/bool values.
    """


    image_id: str
    uri: str
    line_id: str
    captured_at: datetime
    producer: str
    product: str = "default"
    camera_id: str | None = None
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict, hash=False)

    # from_dict validated the raw message already; skip the second, identical check.
    _trusted: InitVar[bool] = False

    def __post_init__(self, _trusted: bool) -> None:
        object.__setattr__(self, "attributes", dict(self.attributes))
        if not _trusted:
            validate("image_ref", self.to_dict())


    def to_dict(self) -> dict[str, Any]:
        """The message as a JSON-ready dict (timestamps as RFC 3339 text, attributes copied)."""
        return {
            "schema_version": self.SCHEMA_VERSION,
            "image_id": self.image_id,
            "uri": self.uri,
            "line_id": self.line_id,
            "camera_id": self.camera_id,
            "product": self.product,
            "captured_at": format_timestamp(self.captured_at, "captured_at"),
            "producer": self.producer,
            "attributes": dict(self.attributes),
        }


    def kafka_key(self) -> bytes:
        """The Kafka key: line_id as UTF-8, so one line's images stay ordered on one partition."""
        return self.line_id.encode("utf-8")

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "ImageRef":
        """Build from a decoded message; unknown fields are ignored.

        Raises:
            SchemaError: "unsupported_version" for another MAJOR, "schema_invalid" otherwise.
        """
        check_version(obj)
        validate("image_ref", obj)
        return cls(
            image_id=obj["image_id"],
            uri=obj["uri"],
            line_id=obj["line_id"],
            camera_id=obj.get("camera_id"),
            product=obj.get("product", "default"),
            captured_at=parse_timestamp(obj["captured_at"], "captured_at"),
            producer=obj["producer"],
            attributes=obj.get("attributes") or {},
            _trusted=True,
        )

