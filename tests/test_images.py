"""Safe loading: every rejection says what is wrong; odd but valid images are normalised."""

import io

import numpy as np
import pytest
from PIL import Image

from visual_reco.images import ImageError, open_image
from visual_reco.preprocessing import fit_square


def _bytes(image, fmt="PNG", **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_real_photo_loads_as_rgb(photos):
    with open(photos[0].path, "rb") as handle:
        image = open_image(handle)
    assert image.mode == "RGB" and min(image.size) > 100


def test_zero_bytes():
    with pytest.raises(ImageError, match="empty"):
        open_image(io.BytesIO(b""))


def test_truncated_jpeg(photos):
    with pytest.raises(ImageError, match="truncated or corrupt"):
        open_image(io.BytesIO(photos[0].path.read_bytes()[:2048]))


def test_text_file_renamed_jpg():
    with pytest.raises(ImageError, match="not an image"):
        open_image(io.BytesIO(b"just some text, not a photo\n" * 10))


def test_over_the_byte_limit(photos):
    data = photos[0].path.read_bytes()
    with pytest.raises(ImageError, match=r"larger than the \d+\.\d MB limit"):
        open_image(io.BytesIO(data), max_bytes=len(data) - 1)


def test_huge_dimensions_in_a_small_file():
    data = _bytes(Image.new("L", (30_000, 2_000)))  # 60 Mpx, a few KB compressed
    assert len(data) < 200_000
    with pytest.raises(ImageError, match="30000x2000 pixels"):
        open_image(io.BytesIO(data))


def test_transparent_png_is_flattened_onto_white():
    image = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    loaded = open_image(io.BytesIO(_bytes(image)))
    assert loaded.mode == "RGB" and loaded.getpixel((5, 5)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    loaded = open_image(io.BytesIO(_bytes(image, "JPEG", exif=exif)))
    assert loaded.size == (20, 40)


def test_sixteen_bit_greyscale_keeps_its_contrast():
    array = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    sixteen_bit = Image.fromarray(array)
    assert sixteen_bit.mode == "I;16"
    loaded = open_image(io.BytesIO(_bytes(sixteen_bit)))
    pixels = np.asarray(loaded)
    assert loaded.mode == "RGB" and pixels.min() == 0 and pixels.max() == 255


def test_pad_keeps_the_whole_product_and_crop_fills():
    tall = Image.new("RGB", (100, 200), (0, 0, 0))
    padded = fit_square(tall, 50, "pad")
    cropped = fit_square(tall, 50, "crop")
    assert padded.shape == cropped.shape == (50, 50, 3)
    assert padded[25, 0].tolist() == [255, 255, 255] and padded[25, 25].tolist() == [0, 0, 0]
    assert cropped[25, 0].tolist() == [0, 0, 0]
