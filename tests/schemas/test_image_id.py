"""The image-id rule shared by `invad produce` and embedded mode (schemas/image_id.py)."""

from __future__ import annotations

import pytest

from schemas.image_id import derive_image_id
from schemas.image_ref import IMAGE_ID_RE


@pytest.mark.parametrize("rel, expected", [
    ("a.png", "line-1/a.png"),
    ("cam1/2024-05-01/000123.png", "line-1/cam1/2024-05-01/000123.png"),
    ("a//b.png", "line-1/a/b.png"),
])
def test_safe_paths_keep_their_name(rel, expected):
    assert derive_image_id("line-1", rel) == expected


@pytest.mark.parametrize("rel", ["a b.png", "../up.png", "x..y.png", ".hidden/x.png", "é.png", "q?.png",
                                 "deep/" * 80 + "x.png", "y" * 300 + ".png"])
def test_unsafe_paths_are_sanitised_tagged_and_valid(rel):
    image_id = derive_image_id("line-1", rel)
    assert IMAGE_ID_RE.match(image_id) and len(image_id) <= 256
    assert derive_image_id("line-1", rel) == image_id  # deterministic
    assert image_id.endswith(".png") and "-" in image_id


def test_distinct_paths_keep_distinct_ids():
    rels = ["a b.png", "a_b.png", "a?b.png", "a..b.png", "a.b.png", "x/../y.png", "..hidden.png", "ü.png"]
    assert len({derive_image_id("l", r) for r in rels}) == len(rels)
    assert derive_image_id("l", "x.png") != derive_image_id("m", "x.png")
