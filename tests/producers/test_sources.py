"""Sources: deterministic image ids, folder/glob/stdin parsing, and S3 listing."""

from __future__ import annotations

import os

import pytest

from producers.sources import (
    RefTemplate,
    SourceError,
    line_ref,
    list_folder,
    list_glob,
    open_source,
    stdin_refs,
)
from schemas import SchemaError

TEMPLATE = RefTemplate(producer="test", line_id="line-1")


def test_list_folder_finds_images_recursively_in_order(make_pngs):
    folder = make_pngs("f", ["b/2.png", "a.PNG", "b/1.jpeg", "c.tif", "readme.txt", "d.webp"])
    (folder / "empty").mkdir()
    assert [f.rel for f in list_folder(folder)] == ["a.PNG", "b/1.jpeg", "b/2.png", "c.tif", "d.webp"]
    assert [f.rel for f in list_folder(folder / "c.tif")] == ["c.tif"]
    with pytest.raises(SourceError, match="is not a folder or file"):
        list_folder(folder / "nope")


def test_list_glob_is_relative_to_its_fixed_part(make_pngs):
    folder = make_pngs("g", ["x/1.png", "x/y/2.png", "z/3.png", "x/4.txt"])
    assert [f.rel for f in list_glob(str(folder / "x" / "**" / "*"))] == ["1.png", "y/2.png"]
    assert [f.rel for f in list_glob(str(folder / "*" / "*.png"))] == ["x/1.png", "z/3.png"]


def test_local_refs_use_file_uris_and_mtime(make_pngs):
    folder = make_pngs("m", ["a.png"])
    os.utime(folder / "a.png", (1_700_000_000, 1_700_000_000))
    ref = next(open_source(str(folder), TEMPLATE, on_error=pytest.fail).refs)
    assert ref.uri == (folder / "a.png").resolve().as_uri()
    assert ref.captured_at.timestamp() == 1_700_000_000 and ref.captured_at.utcoffset().total_seconds() == 0


def test_uploader_decides_the_uri(make_pngs):
    folder = make_pngs("u", ["a.png"])
    calls = []
    def upload(path, image_id):
        calls.append((path, image_id))
        return f"s3://bucket-x/p/{image_id}"
    ref = next(open_source(str(folder), TEMPLATE, on_error=pytest.fail, upload=upload).refs)
    assert ref.uri == "s3://bucket-x/p/line-1/a.png" and calls == [((folder / "a.png").resolve(), "line-1/a.png")]


def test_stdin_lines(make_pngs):
    folder = make_pngs("s", ["p.png"])
    errors = []
    lines = ["", "  # comment", str(folder / "p.png"), (folder / "p.png").as_uri(), "https://cdn.example.com/a/b.png?x=1",
             "s3://bucket-x/k/q.png", "ftp://host/x.png", "relative/missing.png", '{"schema_version": "2.0"}']
    refs = list(stdin_refs(lines, TEMPLATE, None, lambda what, msg: errors.append((what, msg))))
    assert [r.uri for r in refs][1:] == [(folder / "p.png").resolve().as_uri(), "https://cdn.example.com/a/b.png?x=1",
                                         "s3://bucket-x/k/q.png"]
    assert refs[0].image_id == refs[1].image_id  # a path and its file:// URI are the same image
    assert refs[2].image_id == "line-1/cdn.example.com/a/b.png"
    assert [what for what, _ in errors] == ["line 7", "line 8", "line 9"]
    assert "unsupported URI scheme" in errors[0][1] and "unsupported_version" in errors[2][1]


def test_paths_need_a_line_id(make_pngs):
    folder = make_pngs("n", ["p.png"])
    with pytest.raises(SourceError, match="--line-id"):
        line_ref(str(folder / "p.png"), RefTemplate(producer="t"), None)
    with pytest.raises(SchemaError):
        line_ref('{"schema_version": "1.0"}', RefTemplate(producer="t"), None)


def test_s3_listing_follows_pages(s3_bucket, tmp_path):
    s3, bucket = s3_bucket
    (tmp_path / "x.png").write_bytes(b"png")
    for name in ["a.png", "b.png", "c.png", "d.txt", "sub/e.png"]:
        s3.upload_file(tmp_path / "x.png", bucket, f"line/{name}")
    keys = [o.key for o in s3.list_objects(bucket, "line/", page_size=2)]
    assert keys == ["line/a.png", "line/b.png", "line/c.png", "line/d.txt", "line/sub/e.png"]
    refs = list(open_source(f"s3://{bucket}/line/", TEMPLATE, on_error=pytest.fail, s3=s3).refs)
    assert [r.image_id for r in refs] == ["line-1/a.png", "line-1/b.png", "line-1/c.png", "line-1/sub/e.png"]
    assert all(r.captured_at.tzinfo is not None for r in refs)
