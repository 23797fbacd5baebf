"""The soak command's pieces that need no services: its fault schedule, its messages (bad ones must fail
the decoder for the reason the soak expects), its memory figures and its generated docs section. The
soak itself (`invad soak`) is outside the suite: it runs for many minutes."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import ImageRef, SchemaError
from worker.bench.soak_faults import DEFAULT_FAULTS, Fault, parse_faults
from worker.bench.soak_inputs import BAD_KINDS, RawMessage, references
from worker.bench.soak_report import BEGIN, END, rss_rows, rss_timeline, update_docs
from worker.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def test_fault_schedules():
    assert parse_faults("stop-s3@0.7,kill-worker@0.1") == [Fault("kill-worker", 0.1), Fault("stop-s3", 0.7)]
    assert [f.kind for f in parse_faults(DEFAULT_FAULTS)] == ["kill-worker", "restart-broker", "restart-redis", "stop-s3"]
    assert parse_faults("none") == []
    for bad in ("reboot@0.5", "stop-s3", "stop-s3@1.5", "stop-s3@x"):
        with pytest.raises(ValueError, match="KIND@FRACTION"):
            parse_faults(bad)


def test_references_mix_images_and_bad_messages_that_fail_as_expected():
    uris = [f"s3://bkt/in/{i}.png" for i in range(10)]
    refs = references(1000, uris, n_good=9, bucket="bkt", lines=12, bad_fraction=0.01)
    assert len(refs) == 1000 and len({r.image_id for r in refs}) == 1000
    bad = [r for r in refs if r.kind in BAD_KINDS]
    assert len(bad) == 10 and {r.kind for r in bad} == set(BAD_KINDS)
    assert {r.kind for r in refs if r.kind not in BAD_KINDS} == {"good", "defective"}
    for ref in bad:
        value = ref.message.to_json()
        assert ref.image_id.encode() in value  # how the end check finds its dead letter
        if isinstance(ref.message, RawMessage):
            with pytest.raises(SchemaError) as caught:
                ImageRef.from_json(value)
            assert caught.value.reason == BAD_KINDS[ref.kind]
        else:
            assert ImageRef.from_json(value).image_id == ref.image_id  # fails later: fetch or decode


def test_rss_rows_measure_growth_after_warm_up_only():
    samples = [{"t": t, "worker": "w0", "pid": 7, "rss_mb": 100.0 if t < 60 else 500.0 + t / 100} for t in range(0, 400, 5)]
    samples += [{"t": t, "worker": "w1", "pid": 8, "rss_mb": 300.0} for t in range(0, 50, 5)]  # killed early
    rows = {r["pid"]: r for r in rss_rows(samples, {7: 0.0, 8: 0.0}, warmup_s=120)}
    assert rows[7]["rss_mb_after_warmup"] == pytest.approx(501.35) and 0 < rows[7]["growth"] < 0.01
    assert rows[8]["growth"] is None  # did not live past the warm-up
    timeline = {row["worker"]: row["rss_mb"] for row in rss_timeline(samples, points=3)}
    assert timeline["w0"][0] == 100.0 and timeline["w1"][-1] == 300.0


def test_docs_section_is_replaced_between_its_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Title\n\n{BEGIN}\nold table\n{END}\n\nafter\n")
    update_docs(doc, "| new | table |\n")
    assert doc.read_text() == f"# Title\n\n{BEGIN}\n| new | table |\n{END}\n\nafter\n"
    (tmp_path / "plain.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="no soak section"):
        update_docs(tmp_path / "plain.md", "x")
    reliability = (REPO / "docs" / "RELIABILITY.md").read_text()
    assert reliability.count(BEGIN) == 1 and reliability.count(END) == 1


def test_invad_soak_parses_its_flags():
    args = build_parser().parse_args(["soak", "--refs", "600", "--faults", "none", "--docs", ""])
    assert (args.refs, args.workers, args.partitions, args.faults) == (600, 3, 6, "none")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["soak", "--bad-fraction", "0.9"])
