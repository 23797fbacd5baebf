"""The soak's end checks, read with independent clients: every reference scored or dead-lettered (never
both, never neither), one alert per flagged image, the dead-letter topic, and every flagged image's S3
artefacts against its Redis record."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from kafka import KafkaConsumer, TopicPartition

from schemas import DeadLetter, RedisLayout
from schemas.dead_letter import decode_bytes

from .soak_inputs import BAD_KINDS, Reference

_MARKER = re.compile(rb"soak-(?:bad-)?\d{6}")
# What a redelivered image's record may change (issue 6 item 6): when, by whom, how long it took, and
# the last digits of a score computed in another batch.
DELIVERY_FIELDS = ("scored_at", "worker_id", "timings_ms", "score", "map_stats")
PNG = b"\x89PNG\r\n\x1a\n"


def read_records(client: Any, layout: RedisLayout, refs: Sequence[Reference]) -> dict[str, dict]:
    """{image id: ScoreRecord dict} of every reference that has a record."""
    out = {}
    for start in range(0, len(refs), 1000):
        ids = [ref.image_id for ref in refs[start:start + 1000]]
        for image_id, value in zip(ids, client.mget([layout.score_key(i) for i in ids])):
            if value is not None:
                out[image_id] = json.loads(value)
    return out


def read_alerts(client: Any, layout: RedisLayout) -> Counter:
    """Alert stream entries per image id."""
    counts: Counter = Counter()
    start = "-"
    while True:
        entries = client.xrange(layout.alerts_key, min=start, max="+", count=5000)
        for entry_id, fields in entries:
            counts[fields[b"image_id"].decode()] += 1
        if len(entries) < 5000:
            return counts
        start = "(" + entries[-1][0].decode()


def read_dead_letters(bootstrap: str, topic: str) -> list[tuple[str | None, DeadLetter]]:
    """Every letter on ``topic`` with the soak id found in its payload (None when none is)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", client_id="invad-soak-dlq-reader")
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        letters, deadline = [], time.monotonic() + 120
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    letter = DeadLetter.from_json(record.value)
                    found = _MARKER.search(decode_bytes(letter.payload, letter.payload_encoding) or b"")
                    letters.append((found.group().decode() if found else None, letter))
        return letters
    finally:
        consumer.close()


def _artefacts_agree(s3: Any, record: dict, original: bytes) -> tuple[bool, bool, str]:
    """(matches, identical, why not) for one flagged record: its three objects exist, the original is
    the uploaded image, the overlay is a PNG, and the S3 record equals the Redis one (``identical``) or
    differs only in :data:`DELIVERY_FIELDS` with the same verdict (``matches``)."""
    objects = {}
    for kind, uri in record["artefacts"].items():
        if not uri:
            return False, False, f"no {kind} URI"
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        try:
            objects[kind] = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as error:  # noqa: BLE001 - a missing object is the finding
            return False, False, f"{kind} {uri}: {error}"
    if objects["original"] != original:
        return False, False, "original differs from the uploaded image"
    if not objects["overlay"].startswith(PNG):
        return False, False, "overlay is not a PNG"
    stored = json.loads(objects["record"])
    if stored == record:
        return True, True, ""
    stable = [k for k in set(stored) | set(record) if k not in DELIVERY_FIELDS and stored.get(k) != record.get(k)]
    if stable:
        return False, False, f"record fields differ: {sorted(stable)}"
    return True, False, ""


def check(refs: Sequence[Reference], images: Sequence[bytes], redis_client: Any, layout: RedisLayout, s3: Any,
          bootstrap: str, dlq_topic: str) -> dict[str, Any]:
    """Counts of every end check and up to ten examples of each failure (see the module docstring)."""
    records = read_records(redis_client, layout, refs)
    alerts = read_alerts(redis_client, layout)
    letters = read_dead_letters(bootstrap, dlq_topic)
    lettered = Counter(found for found, _ in letters if found)
    reasons = {found: letter.reason for found, letter in letters if found}
    good = [ref for ref in refs if ref.kind in ("good", "defective")]
    bad = [ref for ref in refs if ref.kind in BAD_KINDS]
    flagged = [ref for ref in good if ref.image_id in records and records[ref.image_id]["is_anomaly"]]
    out: dict[str, Any] = {
        "sent": len(refs), "image_refs": len(good), "bad_messages": len(bad),
        "scored": sum(ref.image_id in records for ref in good),
        "flagged": len(flagged),
        "dead_lettered": sum(ref.image_id in lettered for ref in bad),
        "dead_letters_on_topic": len(letters),
        "dead_letter_repeats": sum(n - 1 for n in lettered.values() if n > 1),
        "dead_letters_unidentified": sum(found is None for found, _ in letters),
    }
    examples: dict[str, list[str]] = {}

    def count(name: str, ids: list[str]) -> None:
        out[name] = len(ids)
        if ids:
            examples[name] = ids[:10]
    count("lost", [r.image_id for r in refs if r.image_id not in records and r.image_id not in lettered])
    count("good_refs_dead_lettered", [r.image_id for r in good if r.image_id in lettered])
    count("bad_messages_scored", [r.image_id for r in bad if r.image_id in records])
    count("dead_letter_reason_wrong", [r.image_id for r in bad if r.image_id in reasons
                                       and reasons[r.image_id] != BAD_KINDS[r.kind]])
    count("duplicate_alerts", [i for i, n in alerts.items() if n > 1])
    count("missing_alerts", [r.image_id for r in flagged if alerts[r.image_id] == 0])
    count("alerts_not_flagged", [i for i in alerts if not (i in records and records[i]["is_anomaly"])])
    count("unflagged_with_artefacts", [r.image_id for r in good if r.image_id in records and
                                       not records[r.image_id]["is_anomaly"] and any(records[r.image_id]["artefacts"].values())])
    with ThreadPoolExecutor(max_workers=8) as pool:
        verdicts = list(pool.map(lambda r: _artefacts_agree(s3, records[r.image_id], images[r.image]), flagged))
    out["artefact_sets_matching"] = sum(matches for matches, _, _ in verdicts)
    out["artefact_sets_identical"] = sum(identical for _, identical, _ in verdicts)
    count("artefact_sets_wrong", [f"{r.image_id}: {why}" for r, (ok, _, why) in zip(flagged, verdicts) if not ok])
    out["examples"] = examples
    return out
