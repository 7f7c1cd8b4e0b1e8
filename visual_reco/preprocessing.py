"""The pixel pipeline between a decoded upload and the model's square input.

Indexing and querying run the same steps, in this order, each one a key of
``VISUAL_RECO["PREPROCESSING"]``:

1. ``TRIM_BACKGROUND``: cut away a near-uniform border (studio shots on white), so the
   product fills the frame; ``TRIM_TOLERANCE`` is the largest channel difference from the
   border colour that still counts as background.
2. ``OBJECT_CROP``: for cluttered photos, ``"center"`` keeps the central
   ``CENTER_CROP_FRACTION`` of each side (customers centre what they photograph).
3. ``AUTOCONTRAST``: stretch the histogram (1% cut-off at each end).
4. ``DENOISE``: a 3x3 median filter.
5. ``RESIZE``: fit into the square input, ``"pad"`` with white borders (keeps the whole
   product) or ``"crop"`` the centre (fills the input).

Decoding steps (the ``DECODE_MAX_SIDE`` bound, EXIF orientation, transparency onto white,
CMYK and 16-bit to RGB, first animation frame) happen before, in
`visual_reco.images.open_image`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from visual_reco.conf import reco_settings

# Bump when a step's implementation changes what the model sees. 3: uploads are decoded to
# at most DECODE_MAX_SIDE pixels (visual_reco.images) before these steps.
VERSION = 3


@dataclass(frozen=True)
class Preprocessing:
    """One configuration of the pipeline; call it to turn an RGB image into model input."""

    resize: str = "pad"
    exif_orientation: bool = True  # applied by `Embedder.decode`; part of the signature
    trim_background: bool = False
    trim_tolerance: int = 24
    object_crop: str | None = None
    center_crop_fraction: float = 0.8
    autocontrast: bool = False
    denoise: bool = False

    def __post_init__(self) -> None:
        if self.resize not in ("pad", "crop"):
            raise ValueError(f"RESIZE must be 'pad' or 'crop', not {self.resize!r}")
        if self.object_crop not in (None, "center"):
            raise ValueError(f"OBJECT_CROP must be None or 'center', not {self.object_crop!r}")
        if not 0.2 <= self.center_crop_fraction <= 1.0:
            raise ValueError("CENTER_CROP_FRACTION must be between 0.2 and 1")

    @classmethod
    def from_settings(cls, overrides: dict[str, Any] | None = None) -> Preprocessing:
        """The pipeline configured by ``VISUAL_RECO["PREPROCESSING"]`` (plus ``overrides``)."""
        config = {**reco_settings.PREPROCESSING, **(overrides or {})}
        unknown = set(config) - {name.upper() for name in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"Unknown PREPROCESSING keys: {sorted(unknown)}")
        return cls(**{key.lower(): value for key, value in config.items()})

    @property
    def signature(self) -> str:
        """A short, stable identifier of this configuration and of ``DECODE_MAX_SIDE``, which
        bounds the pixels every step gets (part of the embedder fingerprint)."""
        text = json.dumps({"version": VERSION, "decode_max_side": reco_settings.DECODE_MAX_SIDE,
                           **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def __call__(self, image: Image.Image, size: int) -> np.ndarray:
        """Run every enabled step; returns a uint8 array of shape (size, size, 3)."""
        if self.trim_background:
            image = trim_background(image, self.trim_tolerance)
        if self.object_crop == "center":
            image = center_crop(image, self.center_crop_fraction)
        if self.autocontrast:
            image = ImageOps.autocontrast(image, cutoff=1)
        if self.denoise:
            image = image.filter(ImageFilter.MedianFilter(3))
        return fit_square(image, size, self.resize)


def border_colour(image: Image.Image, width: int = 4) -> np.ndarray:
    """The median colour of a ``width``-pixel frame around the image."""
    pixels = np.asarray(image, dtype=np.int16)
    frame = np.concatenate([pixels[:width].reshape(-1, 3), pixels[-width:].reshape(-1, 3),
                            pixels[:, :width].reshape(-1, 3), pixels[:, -width:].reshape(-1, 3)])
    return np.median(frame, axis=0)


def trim_background(image: Image.Image, tolerance: int = 24, margin: float = 0.03) -> Image.Image:
    """Crop to the part that differs from a uniform border colour, plus a small margin.

    Photos whose border is not uniform (phone photos in a shop) come back unchanged.
    """
    pixels = np.asarray(image, dtype=np.int16)
    background = border_colour(image)
    frame_spread = np.abs(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
                          - background).max(axis=1)
    if np.mean(frame_spread > tolerance) > 0.05:
        return image  # the border itself is not uniform: nothing to trim
    foreground = np.abs(pixels - background).max(axis=2) > tolerance
    rows, cols = np.flatnonzero(foreground.any(axis=1)), np.flatnonzero(foreground.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return image
    height, width = foreground.shape
    pad_y, pad_x = int(margin * height), int(margin * width)
    box = (max(cols[0] - pad_x, 0), max(rows[0] - pad_y, 0),
           min(cols[-1] + 1 + pad_x, width), min(rows[-1] + 1 + pad_y, height))
    if (box[2] - box[0]) * (box[3] - box[1]) >= 0.98 * width * height:
        return image
    return image.crop(box)


def multi_crops(image: Image.Image, fraction: float) -> list[Image.Image]:
    """The whole photo plus five crops of ``fraction`` of each side: centre and corners.

    Used for search queries only (``QUERY_MULTI_CROP``): averaging their embeddings finds the
    product in a cluttered phone photo more often than the whole photo alone.
    """
    width, height = image.size
    crop_w, crop_h = max(int(width * fraction), 1), max(int(height * fraction), 1)
    corners = [((width - crop_w) // 2, (height - crop_h) // 2), (0, 0), (width - crop_w, 0),
               (0, height - crop_h), (width - crop_w, height - crop_h)]
    return [image, *(image.crop((x, y, x + crop_w, y + crop_h)) for x, y in corners)]


def center_crop(image: Image.Image, fraction: float) -> Image.Image:
    """The central ``fraction`` of each side."""
    width, height = image.size
    new_w, new_h = max(int(width * fraction), 1), max(int(height * fraction), 1)
    left, top = (width - new_w) // 2, (height - new_h) // 2
    return image.crop((left, top, left + new_w, top + new_h))


def fit_square(image: Image.Image, size: int, mode: str = "pad") -> np.ndarray:
    """Resize ``image`` to ``size`` x ``size``: pad with white ("pad") or centre-crop ("crop").

    Returns a uint8 array of shape (size, size, 3).
    """
    if mode == "crop":
        fitted = ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
    elif mode == "pad":
        fitted = ImageOps.pad(image, (size, size), Image.Resampling.BICUBIC, color=(255, 255, 255))
    else:
        raise ValueError(f"Unknown RESIZE mode {mode!r}; use 'pad' or 'crop'.")
    return np.asarray(fitted, dtype=np.uint8)
