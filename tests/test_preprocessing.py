"""Every preprocessing step on a real product photo."""

import io

import numpy as np
import pytest
from PIL import Image

from visual_reco.images import open_image
from visual_reco.preprocessing import Preprocessing, center_crop, trim_background


@pytest.fixture
def photo(photos) -> Image.Image:
    with Image.open(photos[3].path) as image:  # a phone photo of a plate on a table
        return image.convert("RGB").resize((400, 300))


def encode(image: Image.Image, fmt: str, **kwargs) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    buffer.seek(0)
    return buffer


def mean_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


def test_trim_background_removes_a_studio_margin(photo):
    studio = Image.new("RGB", (800, 700), (250, 250, 250))
    studio.paste(photo, (200, 150))
    trimmed = trim_background(studio)
    # The photo plus a 3% margin (24 and 21 px) of the 800x700 canvas on each side.
    assert trimmed.size == (400 + 2 * 24, 300 + 2 * 21)
    assert mean_abs(trimmed.crop((24, 21, 424, 321)), photo) == 0


def test_trim_background_leaves_a_cluttered_photo_alone(photo):
    assert trim_background(photo).size == photo.size


def test_center_crop_keeps_the_middle(photo):
    cropped = center_crop(photo, 0.5)
    assert cropped.size == (200, 150)
    assert mean_abs(cropped, photo.crop((100, 75, 300, 225))) == 0


def test_autocontrast_stretches_a_flat_photo(photo):
    flat = Image.eval(photo, lambda v: 100 + v // 5)  # values squeezed into 100..151
    out = Preprocessing(trim_background=False, autocontrast=True, resize="crop")(flat, 128)
    assert np.ptp(np.asarray(flat)) <= 51
    assert np.ptp(out) > 200


def test_denoise_removes_salt_and_pepper(photo):
    rng = np.random.default_rng(0)
    noisy = np.asarray(photo).copy()
    mask = rng.random(noisy.shape[:2]) < 0.05
    noisy[mask] = rng.choice([0, 255], size=(mask.sum(), 1))
    noisy_image = Image.fromarray(noisy)
    plain = Preprocessing(trim_background=False, resize="crop")
    cleaned = Preprocessing(trim_background=False, resize="crop", denoise=True)
    reference = plain(photo, 256)
    assert mean_abs(cleaned(noisy_image, 256), reference) < 0.5 * mean_abs(
        plain(noisy_image, 256), reference)


def test_exif_orientation_is_applied(photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    stored = photo.rotate(90, expand=True)  # how a phone stores a portrait shot
    loaded = open_image(encode(stored, "JPEG", quality=95, exif=exif))
    assert loaded.size == photo.size
    assert mean_abs(loaded, photo) < 8


def test_transparency_becomes_white(photo):
    rgba = photo.convert("RGBA")
    alpha = Image.new("L", photo.size, 255)
    alpha.paste(0, (0, 0, 100, 300))  # the left quarter is transparent
    rgba.putalpha(alpha)
    loaded = open_image(encode(rgba, "PNG"))
    pixels = np.asarray(loaded)
    assert (pixels[:, :100] == 255).all()
    assert mean_abs(pixels[:, 100:], np.asarray(photo)[:, 100:]) == 0


def test_la_greyscale_with_alpha_becomes_white(photo):
    la = photo.convert("LA")
    la.putalpha(Image.new("L", photo.size, 0))
    assert (np.asarray(open_image(encode(la, "PNG"))) == 255).all()


def test_cmyk_jpeg_comes_back_as_the_same_colours(photo):
    loaded = open_image(encode(photo.convert("CMYK"), "JPEG", quality=95))
    assert loaded.mode == "RGB"
    assert mean_abs(loaded, photo) < 12


def test_sixteen_bit_png_keeps_the_picture(photo):
    grey = np.asarray(photo.convert("L"), dtype=np.float64)
    deep = Image.fromarray((grey * 257).astype(np.uint16))
    loaded = np.asarray(open_image(encode(deep, "PNG")).convert("L"), dtype=np.float64)
    assert np.corrcoef(loaded.ravel(), grey.ravel())[0, 1] > 0.99


def test_first_frame_of_an_animation(photo):
    frames = [photo, Image.new("RGB", photo.size, (0, 0, 0))]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    loaded = open_image(gif)
    assert mean_abs(loaded, photo) < 20  # GIF's palette costs a little
    assert np.asarray(loaded).mean() > 40  # not the black second frame


def test_unknown_preprocessing_settings_are_rejected(settings):
    settings.VISUAL_RECO = {"PREPROCESSING": {"RESIZE": "stretch"}}
    with pytest.raises(ValueError, match="RESIZE"):
        Preprocessing.from_settings()
    settings.VISUAL_RECO = {"PREPROCESSING": {"SHARPEN": True}}
    with pytest.raises(ValueError, match="SHARPEN"):
        Preprocessing.from_settings()


def test_each_step_changes_the_signature():
    base = Preprocessing()
    variants = [Preprocessing(resize="crop"), Preprocessing(trim_background=True),
                Preprocessing(object_crop="center"), Preprocessing(autocontrast=True),
                Preprocessing(denoise=True), Preprocessing(exif_orientation=False)]
    signatures = {v.signature for v in variants}
    assert base.signature not in signatures and len(signatures) == len(variants)


def test_the_decode_bound_changes_the_signature(settings):
    default = Preprocessing().signature
    settings.VISUAL_RECO = {"DECODE_MAX_SIDE": 2048}
    assert Preprocessing().signature != default
