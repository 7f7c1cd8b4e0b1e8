"""Safe image loading and the preprocessing shared by indexing and querying."""

from __future__ import annotations

import io
import warnings
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from visual_reco.conf import reco_settings

# Bump when the pixels handed to the model change, so stored vectors go stale.
PREPROCESSING_VERSION = "1"


class ImageError(ValueError):
    """An upload that cannot be embedded; the message is written for shop staff."""


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def read_limited(fileobj: IO[bytes], max_bytes: int | None = None) -> bytes:
    """Read at most ``max_bytes`` from ``fileobj``; raise `ImageError` if empty or larger."""
    limit = reco_settings.MAX_IMAGE_BYTES if max_bytes is None else max_bytes
    data = fileobj.read(limit + 1)
    if not data:
        raise ImageError("The file is empty (0 bytes).")
    if len(data) > limit:
        raise ImageError(f"The file is larger than the {_megabytes(limit)} limit.")
    return data


def open_image(fileobj: IO[bytes], *, max_bytes: int | None = None,
               max_pixels: int | None = None) -> Image.Image:
    """Decode an upload into an RGB image, or raise `ImageError` saying what is wrong.

    Checks size before decoding (zero bytes, byte limit, pixel limit), reads only the first
    frame, applies the EXIF orientation and flattens transparency onto white.
    """
    data = read_limited(fileobj, max_bytes)
    pixel_limit = reco_settings.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > pixel_limit:
                raise ImageError(
                    f"The image is {width}x{height} pixels; the limit is "
                    f"{pixel_limit / 1e6:.0f} megapixels."
                )
            image.seek(0)
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(
            "The file is not an image that can be read (JPEG, PNG, WebP, GIF, ...)."
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("The image is too large to decode safely.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"The image file is truncated or corrupt ({exc}).") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB version of ``image``, with transparency composited onto white."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit greyscale: scale down to 8 bits before converting.
        array = np.asarray(image, dtype=np.float64)
        array = array / max(array.max(), 1.0) * 255.0
        return Image.fromarray(array.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def fit_square(image: Image.Image, size: int, mode: str | None = None) -> np.ndarray:
    """Resize ``image`` to ``size`` x ``size``: pad with white ("pad") or centre-crop ("crop").

    Returns a uint8 array of shape (size, size, 3).
    """
    mode = mode or reco_settings.RESIZE
    if mode == "crop":
        fitted = ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
    elif mode == "pad":
        fitted = ImageOps.pad(image, (size, size), Image.Resampling.BICUBIC, color=(255, 255, 255))
    else:
        raise ValueError(f"Unknown RESIZE mode {mode!r}; use 'pad' or 'crop'.")
    return np.asarray(fitted, dtype=np.uint8)
