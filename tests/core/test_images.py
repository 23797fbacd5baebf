"""PNG encoding (the one encoder of the project) round-trips through the decoder the worker uses."""

from __future__ import annotations

import numpy as np
from PIL import Image

from worker.core.images import decode_image, encode_png


def test_encode_png_round_trips_pixels_exactly():
    pixels = np.random.default_rng(0).integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    data = encode_png(Image.fromarray(pixels))
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert np.array_equal(np.asarray(decode_image(data)), pixels)
