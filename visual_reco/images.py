"""Safe decoding of uploads into upright RGB images, with messages for people.

`open_image` checks sizes before decoding, accepts only photo formats, reads the first frame
of animations, bounds the pixels it decodes (`DECODE_MAX_SIDE`: JPEGs are decoded at 1/2, 1/4
or 1/8 scale by libjpeg, then every image is shrunk to that side; formats that cannot decode
at reduced scale are refused above the ``full_decode_limits`` a caller passes), applies the
EXIF orientation (when told to: whether it does is part of an embedder's preprocessing, so
embedders decode through `Embedder.decode`), flattens transparency onto white and converts
CMYK, palette and 16-bit images to 8-bit RGB. What it cannot use raises `ImageError`.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from visual_reco.conf import reco_settings

# Recognisable non-photo uploads, for a message better than "not an image".
_SIGNATURES = [
    (b"%PDF", "a PDF document"),
    (b"<svg", "an SVG drawing"),
    (b"<?xml", "an XML/SVG document"),
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"PK\x03\x04", "a ZIP archive or office document"),
]
# Formats whose decoder can scale down while decoding (libjpeg's DCT scaling, via draft()).
_SCALED_DECODE_FORMATS = frozenset({"JPEG", "MPO"})
_FORMAT_NAMES = {"WEBP": "WebP"}


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


def _not_a_photo(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    for signature, what in _SIGNATURES:
        if head.startswith(signature.lower()) or (signature == b"<svg" and signature in head):
            return f"The file is {what}, not a photo. Upload a JPEG, PNG, WebP or GIF image."
    return "The file is not an image that can be read. Upload a JPEG, PNG, WebP or GIF image."


def open_image(fileobj: IO[bytes], *, exif_orientation: bool = True,
               max_bytes: int | None = None, max_pixels: int | None = None,
               full_decode_limits: Mapping[str, int | None] | None = None) -> Image.Image:
    """Decode an upload into an RGB image, or raise `ImageError` saying what is wrong.

    With ``exif_orientation`` the image is turned upright as its EXIF tag says. The longer
    side of the result is at most ``DECODE_MAX_SIDE``: a JPEG is decoded at the smallest
    libjpeg scale (1/2, 1/4, 1/8) that keeps at least that side, so a 12000x4000 photo never
    exists at full size; other formats are decoded whole and then shrunk. With
    ``full_decode_limits`` (pixels by format, as ``SEARCH_MAX_FULL_DECODE_PIXELS``) those are
    refused above their format's limit.
    """
    data = read_limited(fileobj, max_bytes)
    pixel_limit = reco_settings.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    min_side = reco_settings.MIN_IMAGE_SIDE
    max_side = reco_settings.DECODE_MAX_SIDE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.init()  # register every plugin so the formats below are known
            image = Image.open(io.BytesIO(data), formats=reco_settings.IMAGE_FORMATS)
            width, height = image.size
            if width * height > pixel_limit:
                raise ImageError(f"The image is {width}x{height} pixels; the limit is "
                                 f"{pixel_limit / 1e6:.0f} megapixels.")
            if max(width, height) > reco_settings.MAX_IMAGE_SIDE:
                raise ImageError(f"The image is {width}x{height} pixels; no side may exceed "
                                 f"{reco_settings.MAX_IMAGE_SIDE} pixels.")
            if min(width, height) < min_side:
                raise ImageError(f"The image is {width}x{height} pixels; it must be at least "
                                 f"{min_side} pixels on each side.")
            if full_decode_limits is not None:
                _check_full_decode(image, full_decode_limits, pixel_limit)
            image.seek(0)  # first frame of an animation
            box = _draft(image, max_side)
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(_not_a_photo(data)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("The image has too many pixels to decode safely "
                         "(a decompression bomb?).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"The image file is truncated or corrupt ({exc}).") from None
    image = _shrink(image, max_side, (width, height), box)
    return to_rgb(image, exif_orientation=exif_orientation)


def _check_full_decode(image: Image.Image, limits: Mapping[str, int | None],
                       jpeg_limit: int) -> None:
    """Refuse an image that must be decoded at full size and has more pixels than ``limits``
    allows for its format."""
    progressive = bool(image.info.get("progressive"))
    if image.format in _SCALED_DECODE_FORMATS and not progressive:
        return
    key = "JPEG" if image.format in _SCALED_DECODE_FORMATS else image.format
    listed = [value for value in limits.values() if value is not None]
    limit = limits[key] if key in limits else min(listed, default=None)
    width, height = image.size
    if limit is None or width * height <= limit:
        return
    if key == "JPEG":
        what, plural, remedy = "a progressive JPEG", "progressive JPEGs", "a baseline JPEG"
    else:
        name = _FORMAT_NAMES.get(key, key)
        what, plural, remedy = f"a {name} file", f"{name} images", "a JPEG"
    raise ImageError(
        f"The image is {what} of {width}x{height} pixels ({width * height / 1e6:.1f} "
        f"megapixels); {plural} are decoded at full size, so the limit for them is "
        f"{limit / 1e6:g} megapixels. Save it as {remedy} (up to {jpeg_limit / 1e6:.0f} "
        f"megapixels) or make it smaller.")


def _draft(image: Image.Image, max_side: int | None) -> tuple[float, ...] | None:
    """Configure a JPEG decoder for the smallest scale whose longer side is still at least
    ``max_side``; returns the original image's box in the reduced pixels (for `_shrink`)."""
    width, height = image.size
    longer = max(width, height)
    if max_side is None or image.format not in _SCALED_DECODE_FORMATS or longer <= max_side:
        return None
    # Ceiling division keeps each requested side at least size / (longer / max_side), so the
    # scale libjpeg picks (at most floor(longer / max_side)) never goes below max_side.
    request = (-(-width * max_side // longer), -(-height * max_side // longer))
    drafted = image.draft(None, request)
    return drafted[1] if drafted else None


def _shrink(image: Image.Image, max_side: int | None, original_size: tuple[int, int],
            box: tuple[float, ...] | None) -> Image.Image:
    """``image`` with its longer side at most ``max_side``, aspect ratio kept.

    ``box`` is what `_draft` returned. The result keeps ``image.info``, whose EXIF orientation
    `to_rgb` applies afterwards, to far fewer pixels.
    """
    if max_side is None or max(image.size) <= max_side:
        return image
    width, height = original_size
    scale = max_side / max(width, height)
    size = (max(round(width * scale), 1), max(round(height * scale), 1))
    if image.mode in ("1", "P", "PA"):
        # Pillow resamples these modes by nearest neighbour only; convert so LANCZOS applies.
        transparent = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "L" if image.mode == "1" else "RGB")
    return image.resize(size, Image.Resampling.LANCZOS, box=box)


def to_rgb(image: Image.Image, *, exif_orientation: bool = True) -> Image.Image:
    """8-bit RGB version of ``image`` (upright with ``exif_orientation``); transparency is
    composited onto white."""
    if exif_orientation:
        image = ImageOps.exif_transpose(image) or image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
            image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16-bit or float greyscale: scale to the 8-bit range before converting.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        array = (array - low) / max(high - low, 1.0) * 255.0
        return Image.fromarray(array.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")
