"""Pixels decoded per upload are bounded: a 12000x4000 JPEG never exists at full size, and the
largest upload allowed in each format that decodes at full size stays within 100 MB.

Memory is measured in a fresh process (`tests/decode_peak.py`) with the default settings
(25 MB uploads), from the upload's bytes to the six stacked 299 px views of a photo search.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.bad_uploads import _png_header_only
from visual_reco.conf import DEFAULTS
from visual_reco.images import ImageError, open_image
from visual_reco.query_photos import decode_query

ROOT = Path(__file__).resolve().parent.parent
PEAK_LIMIT_MB = 100
MAX_SIDE = DEFAULTS["DECODE_MAX_SIDE"]
FULL_DECODE = DEFAULTS["SEARCH_MAX_FULL_DECODE_PIXELS"]

linux_only = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                                reason="peak RSS is read from /proc")


def photo_like(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Gradients under grain: like a photo, every block of the file carries detail."""
    across = Image.linear_gradient("L").rotate(90).resize(size)
    down = Image.linear_gradient("L").resize(size)
    bands = [lambda: Image.blend(down, Image.effect_noise(size, 40), 0.3),
             lambda: across,
             lambda: Image.blend(Image.effect_noise(size, 64), down, 0.5),
             lambda: Image.blend(across, Image.effect_noise(size, 30), 0.4)]
    return Image.merge(mode, [band() for band in bands[:len(mode)]])


def side_for(pixels: int) -> tuple[int, int]:
    """The largest 4:3 size with at most ``pixels`` pixels."""
    width = math.isqrt(pixels * 4 // 3)
    return width, pixels // width


def peak_mb(path: Path) -> float:
    """Peak memory growth of one photo search's pixel work on ``path``, in a fresh process."""
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "decode_peak.py"), str(path)],
                         cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    measured = json.loads(run.stdout)
    print(measured)
    return measured["peak_mb"]


def _save(image: Image.Image, path: Path, fmt: str, **kwargs) -> Path:
    image.save(path, fmt, **kwargs)
    assert path.stat().st_size <= DEFAULTS["MAX_IMAGE_BYTES"]
    return path


@linux_only
def test_a_12000x4000_jpeg_is_decoded_within_100_mb(tmp_path):
    path = _save(photo_like((12_000, 4_000)), tmp_path / "wide.jpg", "JPEG", quality=90)
    assert peak_mb(path) <= PEAK_LIMIT_MB


# The costliest upload allowed of each kind that must be decoded whole (docs/RELIABILITY.md):
# RGBA PNG with near-incompressible content, lossless WebP (libwebp keeps two more canvases),
# progressive CMYK JPEG (libjpeg keeps every coefficient: 8 bytes a pixel).
LARGEST = {
    "RGBA PNG": lambda size: ("PNG", photo_like(size, "RGBA"), {"compress_level": 1}),
    "lossless WebP": lambda size: ("WEBP", photo_like(size, "RGBA"),
                                   {"lossless": True, "method": 0}),
    "progressive CMYK JPEG": lambda size: ("JPEG", photo_like(size, "CMYK"),
                                           {"quality": 90, "progressive": True,
                                            "subsampling": 0}),
}


@linux_only
@pytest.mark.parametrize("kind", LARGEST)
def test_the_largest_full_size_upload_is_decoded_within_100_mb(kind, tmp_path):
    key = kind.split()[-1].upper()
    fmt, image, options = LARGEST[kind](side_for(FULL_DECODE[key]))
    path = _save(image, tmp_path / f"largest.{fmt.lower()}", fmt, **options)
    assert peak_mb(path) <= PEAK_LIMIT_MB


OVER_THE_LIMIT = {
    "PNG": lambda size: _png_header_only(*size),  # refused before any pixel is decoded
    "WebP": lambda size: _encode(Image.new("RGB", size), "WEBP"),
    "progressive JPEG": lambda size: _encode(Image.new("RGB", size), "JPEG", progressive=True),
}


@pytest.mark.parametrize("kind", OVER_THE_LIMIT)
def test_a_search_photo_over_the_full_decode_limit_is_refused_suggesting_jpeg(kind):
    limit = FULL_DECODE[kind.split()[-1].upper()]
    width, height = side_for(limit)
    data = OVER_THE_LIMIT[kind]((width, height + 1))
    message = rf"{kind}.*decoded at full size.* {limit / 1e6:g} megapixels.*JPEG"
    with pytest.raises(ImageError, match=message):
        decode_query(data)
    if kind != "PNG":  # a catalogue photo (shop staff, a worker) has MAX_IMAGE_PIXELS only
        assert max(open_image(io.BytesIO(data)).size) == MAX_SIDE


def test_a_baseline_jpeg_may_have_many_more_pixels():
    image = open_image(io.BytesIO(_encode(Image.new("RGB", (8_000, 5_000)), "JPEG")))
    assert image.size == (MAX_SIDE, 640)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _marked(size: tuple[int, int]) -> Image.Image:
    """Grey, with a red top-left and a blue top-right corner (a sixth of the width each)."""
    image = Image.new("RGB", size, (128, 128, 128))
    corner = size[0] // 6
    image.paste((255, 0, 0), (0, 0, corner, corner))
    image.paste((0, 0, 255), (size[0] - corner, 0, size[0], corner))
    return image


# Where the stored top-left (red) and top-right (blue) corners end up once upright, as
# (column, row) fractions of the upright image.
ORIENTATIONS = {
    3: ((0.98, 0.98), (0.02, 0.98)),  # rotated 180 degrees
    6: ((0.98, 0.02), (0.98, 0.98)),  # rotated 90 degrees clockwise when displayed
    8: ((0.02, 0.98), (0.02, 0.02)),  # rotated 90 degrees anticlockwise
}


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_a_big_exif_rotated_jpeg_is_upright_and_bounded(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(_marked((6_000, 2_000)), "JPEG", quality=90, exif=exif)
    image = open_image(io.BytesIO(data))
    assert image.size == ((MAX_SIDE, 341) if orientation == 3 else (341, MAX_SIDE))
    for (x, y), colour in zip(ORIENTATIONS[orientation], [(255, 0, 0), (0, 0, 255)],
                              strict=True):
        pixel = image.getpixel((int(x * (image.width - 1)), int(y * (image.height - 1))))
        assert np.abs(np.subtract(pixel, colour)).max() < 40, (orientation, pixel, colour)


@pytest.mark.parametrize("kind", ["CMYK JPEG", "grey JPEG", "RGBA PNG", "palette PNG",
                                  "16-bit PNG", "GIF", "WebP"])
def test_big_images_of_every_kind_are_shrunk_to_rgb(kind):
    base = _marked((2_400, 1_200))
    data = {
        "CMYK JPEG": lambda: _encode(base.convert("CMYK"), "JPEG"),
        "grey JPEG": lambda: _encode(base.convert("L"), "JPEG"),
        "RGBA PNG": lambda: _encode(_with_clear_bottom(base.convert("RGBA")), "PNG"),
        "palette PNG": lambda: _encode(base.quantize(8), "PNG"),
        "16-bit PNG": lambda: _encode(Image.fromarray(
            np.asarray(base.convert("L"), dtype=np.uint16) * 257), "PNG"),
        "GIF": lambda: _encode(base.quantize(8), "GIF"),
        "WebP": lambda: _encode(base, "WEBP"),
    }[kind]()
    image = open_image(io.BytesIO(data))
    assert image.mode == "RGB" and image.size == (MAX_SIDE, MAX_SIDE // 2)
    red, grey = image.getpixel((20, 20)), image.getpixel((MAX_SIDE // 2, 200))
    if kind in ("grey JPEG", "16-bit PNG"):
        assert red[0] == red[1] == red[2] and red[0] < grey[0]
    else:
        assert red[0] > 200 and red[1] < 60 and abs(grey[0] - 128) < 20
    if kind == "RGBA PNG":
        assert image.getpixel((MAX_SIDE // 2, MAX_SIDE // 2 - 5)) == (255, 255, 255)


def _with_clear_bottom(image: Image.Image) -> Image.Image:
    image.paste((0, 0, 0, 0), (0, image.height * 3 // 4, image.width, image.height))
    return image


def test_images_within_the_bound_decode_exactly_as_before(photos):
    with Image.open(photos[0].path) as stored:
        assert max(stored.size) <= MAX_SIDE
        expected = np.asarray(stored.convert("RGB"))
    with open(photos[0].path, "rb") as handle:
        assert np.array_equal(np.asarray(open_image(handle)), expected)
