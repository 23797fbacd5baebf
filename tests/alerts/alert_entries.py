"""Alert stream entries for the ``invad alerts`` tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def anomaly_fields(i: int, prefix: str = "invad") -> dict[str, str]:
    """The stream fields of a valid anomaly alert for image ``line-1/img_{i:04d}.png``."""
    from schemas import AlertEntry

    image_id = f"line-1/img_{i:04d}.png"
    return AlertEntry(image_id=image_id, line_id="line-1", product="bottle", score=3.5 + i, threshold=3.0,
                      captured_at=T0 + timedelta(seconds=i), record_key=f"{prefix}:score:{image_id}",
                      overlay_uri=None, model_version="v1").to_fields()
