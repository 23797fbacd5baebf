"""Image decoding with explicit limits, and PNG encoding, shared by the CLI, the datasets, the streaming
worker and the benchmarks.

Every image that enters the detector goes through :func:`decode_image` or :func:`load_image`, so
"unreadable", "truncated", "unknown mode" and "too large" are decided in one place; every PNG the
project writes (overlays, benchmark inputs) comes from :func:`encode_png`.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = 64_000_000


class ImageDecodeError(ValueError):
    """An image that can never be decoded. ``reason`` is ``image_invalid`` or ``image_too_large``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Convert any mode PIL can open (1, L, P, RGB, RGBA, LA, I;16, I, F, CMYK, ...) to 8-bit RGB.

    16-bit and float images are rescaled by their own range so that dark 16-bit captures keep their
    contrast instead of saturating at 255.
    """
    mode = image.mode
    if mode in ("RGB",):
        return image
    if mode in ("1", "L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "La"):
        if mode in ("RGBA", "LA", "PA", "La"):
            # Composite on black: a transparent background carries no defect information.
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (0, 0, 0, 255))
            image = Image.alpha_composite(background, image)
        return image.convert("RGB")
    if mode.startswith("I") or mode == "F":
        array = np.asarray(image, dtype=np.float64)
        if array.ndim == 3:
            array = array[..., 0]
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        gray = ((array - low) * scale).clip(0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    raise ImageDecodeError("image_invalid", f"{name}: unsupported image mode {mode!r}; "
                           "save it as 8/16-bit grayscale, RGB or palette PNG/JPEG/TIFF")


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image") -> Image.Image:
    """Decode encoded image bytes into an RGB PIL image.

    Raises:
        ImageDecodeError: ``image_invalid`` for bytes that are not a complete image of a supported mode,
            ``image_too_large`` when width * height exceeds ``max_pixels`` (checked before decoding
            the pixels, so a decompression bomb costs nothing).
    """
    if not data:
        raise ImageDecodeError("image_invalid", f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    "image_too_large",
                    f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}; "
                    "raise --max-image-pixels or downscale the capture")
            image.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError("image_too_large", f"{name}: {error}") from error
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise ImageDecodeError("image_invalid", f"{name}: not a readable image ({type(error).__name__}: {error})") from error
    return _to_rgb(image, name)


def encode_png(image: Image.Image) -> bytes:
    """The PNG bytes of ``image`` (any PIL mode PNG can hold), at the default compression level."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def pixel_shape(shape: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a size given as one side (a square) or as (height, width)."""
    return (shape, shape) if isinstance(shape, int) else (int(shape[0]), int(shape[1]))


def model_input(image: Image.Image, shape: int | tuple[int, int]) -> np.ndarray:
    """The detector's input for one RGB image: resized (bilinear) to a (height, width, 3) uint8 array,
    ``shape`` = a bundle's ``input_shape`` (height, width), or one side for a square.

    The one resize rule of the project: the detector applies it to PIL images it is given, and the
    streaming worker applies it in its fetch threads (PIL releases the GIL while resizing), so that
    the model thread receives ready arrays.
    """
    height, width = pixel_shape(shape)
    return np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR))


def load_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read and decode an image file; errors name the path."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageDecodeError("image_invalid", f"{path}: cannot read file ({error.strerror})") from error
    return decode_image(data, max_pixels=max_pixels, name=str(path))


def load_mask(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """Load a ground-truth mask of any size and mode as a boolean (H, W) array at ``size`` = (W, H)."""
    path = Path(path)
    try:
        with Image.open(path) as mask:
            mask.load()
            array = np.asarray(mask.convert("L").resize(size, Image.NEAREST))
    except Exception as error:
        raise ImageDecodeError("image_invalid", f"{path}: not a readable mask ({error})") from error
    return array > 0
