"""The image loader on hostile bytes: any input decodes to an RGB image or raises ImageDecodeError
(image_invalid / image_too_large), never another exception, never a hang on a decompression bomb."""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from worker.core.images import ImageDecodeError, decode_image

FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP")


def encoded(fmt: str, size=(24, 16), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format=fmt)
    return buffer.getvalue()


def outcome(data: bytes, max_pixels: int = 10_000):
    try:
        image = decode_image(data, max_pixels=max_pixels, name="fuzz")
    except ImageDecodeError as error:
        assert error.reason in ("image_invalid", "image_too_large")
        return error.reason
    assert image.mode == "RGB" and image.width * image.height <= max_pixels
    return "ok"


@pytest.mark.parametrize("fmt", FORMATS)
def test_valid_images_of_every_format_decode(fmt):
    assert outcome(encoded(fmt)) == "ok"


@pytest.mark.parametrize("fmt", FORMATS)
def test_mutated_images_decode_or_are_refused(fmt):
    rng = random.Random(fmt)
    base = bytearray(encoded(fmt))
    seen = set()
    for _ in range(150):
        data = bytearray(base)
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = data[: rng.randrange(1, len(data) + 1)] if rng.random() < 0.3 else data
        seen.add(outcome(bytes(cut)))
    assert "image_invalid" in seen or "ok" in seen


def test_a_bomb_header_is_refused_before_its_pixels_are_decoded():
    bomb = encoded("PNG", size=(20_000, 20_000), mode="1")  # 400 Mpx, a few kB
    assert outcome(bomb, max_pixels=1_000_000) == "image_too_large"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_any_bytes_decode_or_are_refused(data):
    outcome(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FORMATS), st.binary(min_size=1, max_size=200))
def test_any_tail_after_a_real_header_decodes_or_is_refused(fmt, tail):
    outcome(encoded(fmt)[:32] + tail)
