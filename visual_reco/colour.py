"""The colour of a product photo's foreground: a compact vector and plain colour names.

The CNN vector knows shape and category but little about colour, so a product gets a second,
small vector: a soft histogram of its foreground pixels over fixed CIELAB bins. Everything
here is numpy and Pillow, with no settings, so that a worker can run it on the array it
already has before the model call (`visual_reco.preprocessing.fit_square`: ``size`` x
``size`` x 3 uint8, padded with white).

- `foreground_mask`: which pixels are the product (padding bars out; a light, uniform
  border colour flood-filled from the border, so a white product on white keeps its inside).
- `colour_vector`: the L2-normalised square root of the foreground's soft histogram over
  `DIMENSIONS` (112) CIELAB bins; the cosine of two such vectors is the Bhattacharyya
  coefficient of their histograms.
- `colour_similarity`: that cosine raised to `SHARPNESS`, the colour term of a blend with
  the CNN cosine.
- `dominant_colours`: the 1-3 main colour names from a fixed palette, with their shares.

The bins, vote width, sharpness and the blend weight were chosen by measurement on real
shop photos: ``demo_shop/bench/colour_research.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = ["BIN_CENTRES", "DIMENSIONS", "GRID", "PALETTE", "VERSION", "LabGrid",
           "colour_similarity", "colour_vector", "dominant_colours", "foreground_mask",
           "lab_histogram", "srgb_to_lab"]

# Bump when `colour_vector`'s defaults or implementation change its output: stored colour
# vectors carry it in their field's fingerprint (`visual_reco.aspects`), so rows embedded with
# another version become stale and are computed again.
VERSION = 1

# The colour work runs on the input reduced by an integer factor to at least this side
# (299 px -> 74 px): enough pixels for a histogram, and ~1 ms.
WORK_SIDE = 64
# CIE76 distance from the border colour within which a pixel may be background: the border's
# own spread (90th percentile) times two plus the minimum, capped at the maximum. A clean
# studio white gets the minimum, so off-white products are not taken for background.
MIN_TOLERANCE = 4.0
MAX_TOLERANCE = 12.0
# Share of the photo's border that must be near one colour for it to count as a background.
UNIFORM_BORDER_SHARE = 0.5
# A background is a light neutral (studio white or grey): a uniform border of any other
# colour is far more often the product itself, photographed edge to edge.
BACKGROUND_MIN_LIGHTNESS = 65.0
BACKGROUND_MAX_CHROMA = 15.0
# Below this share of foreground pixels the mask is not trusted.
MIN_FOREGROUND_SHARE = 0.01

_WHITE_XYZ = np.array([0.95047, 1.0, 1.08883])
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_CHANNEL = np.arange(256) / 255.0
_LINEAR = np.where(_CHANNEL <= 0.04045, _CHANNEL / 12.92,
                   ((_CHANNEL + 0.055) / 1.055) ** 2.4).astype(np.float32)
_EPSILON = (6 / 29) ** 3


def srgb_to_lab(pixels: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB uint8 colours, shape ``(..., 3)`` -> float32 ``(..., 3)``."""
    pixels = _as_uint8(pixels)
    linear = _LINEAR[pixels]
    xyz = (linear @ (_RGB_TO_XYZ / _WHITE_XYZ[:, None]).T.astype(np.float32))
    f = np.where(xyz > _EPSILON, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = np.empty_like(f)
    lab[..., 0] = 116 * f[..., 1] - 16
    lab[..., 1] = 500 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200 * (f[..., 1] - f[..., 2])
    return lab.astype(np.float32)


def _lab_to_srgb_float(lab: np.ndarray) -> np.ndarray:
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * _WHITE_XYZ
    linear = xyz @ np.linalg.inv(_RGB_TO_XYZ).T
    return np.where(linear <= 0.0031308, 12.92 * linear,
                    1.055 * np.abs(linear) ** (1 / 2.4) - 0.055)


def _as_uint8(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` as an HxWx3 uint8 array (grey and RGBA accepted; floats read as 0-255)."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or min(pixels.shape[:2]) < 1:
        raise ValueError(f"Expected an HxWx3 RGB array, got shape {pixels.shape}")
    return _as_uint8(pixels[..., :3])


def _downsized(pixels: np.ndarray, side: int = WORK_SIDE) -> np.ndarray:
    height, width = pixels.shape[:2]
    factor = max(min(height, width) // side, 1)
    if factor == 1:
        return pixels
    return np.asarray(Image.fromarray(pixels).reduce(factor))


def _photo_box(rgb: np.ndarray) -> tuple[slice, slice]:
    """The photo inside `fit_square`'s padding: pure white bars of equal width (+-1) on two
    opposite sides. Such bars are background whatever the photo's own border is."""
    white = (rgb == 255).all(axis=2)
    box = []
    for lines in (white.all(axis=1), white.all(axis=0)):
        before = int(np.argmin(lines)) if not lines.all() else len(lines)
        after = int(np.argmin(lines[::-1])) if not lines.all() else 0
        if before and after and abs(before - after) <= 1 and before + after < len(lines):
            box.append(slice(before, len(lines) - after))
        else:
            box.append(slice(0, len(lines)))
    return box[0], box[1]


def _border(array: np.ndarray) -> np.ndarray:
    return np.concatenate([array[0], array[-1], array[1:-1, 0], array[1:-1, -1]])


def _spread(background: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Grow ``background`` along each row through runs of ``candidate`` pixels."""
    height, width = candidate.shape
    flat = candidate.ravel()
    starts = flat.copy()
    starts[1:] &= ~flat[:-1]
    starts[::width] = flat[::width]
    runs = np.cumsum(starts) * flat
    reached = np.zeros(runs.max() + 1, dtype=bool)
    reached[runs[background.ravel() & flat]] = True
    reached[0] = False
    return reached[runs].reshape(height, width)


def _flood(seeds: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """The ``candidate`` pixels 4-connected to ``seeds`` (alternating row and column runs)."""
    filled = seeds & candidate
    while True:
        grown = _spread(filled, candidate)
        grown = _spread(grown.T.copy(), candidate.T.copy()).T
        if np.array_equal(grown, filled):
            return grown
        filled = grown


def _centre_mask(height: int, width: int, radius: float = 0.4) -> np.ndarray:
    rows = (np.arange(height) + 0.5) / height - 0.5
    cols = (np.arange(width) + 0.5) / width - 0.5
    return (rows[:, None] ** 2 + cols[None, :] ** 2) <= radius ** 2


def _photo_mask(lab: np.ndarray, tolerance: float | None) -> np.ndarray:
    """The foreground of a photo without padding (Lab pixels)."""
    height, width = lab.shape[:2]
    if height < 3 or width < 3:
        return np.ones((height, width), dtype=bool)
    border = _border(lab)
    cells = np.floor(border / MAX_TOLERANCE).astype(np.int64)
    codes = (cells[:, 0] * 64 + cells[:, 1] + 32) * 64 + cells[:, 2] + 32
    values, counts = np.unique(codes, return_counts=True)
    reference = np.median(border[codes == values[np.argmax(counts)]], axis=0)
    distances = np.linalg.norm(border - reference, axis=1)
    close = distances <= MAX_TOLERANCE
    if (close.mean() < UNIFORM_BORDER_SHARE or reference[0] < BACKGROUND_MIN_LIGHTNESS
            or np.hypot(reference[1], reference[2]) > BACKGROUND_MAX_CHROMA):
        # No studio background owns the border (a photo in a room, a close-up of the
        # product): the product is most likely in the middle.
        return _centre_mask(height, width)
    if tolerance is None:
        spread = float(np.percentile(distances[close], 90))
        tolerance = min(MIN_TOLERANCE + 2 * spread, MAX_TOLERANCE)
    candidate = np.linalg.norm(lab - reference, axis=2) <= tolerance
    seeds = np.zeros_like(candidate)
    seeds[0], seeds[-1], seeds[:, 0], seeds[:, -1] = True, True, True, True
    foreground = ~_flood(seeds, candidate)
    if foreground.mean() < MIN_FOREGROUND_SHARE:
        # All (or nearly all) background: a blank photo, or a product the colour of the
        # background without an edge; its middle is the best guess.
        return _centre_mask(height, width)
    return foreground


def _mask(rgb: np.ndarray, lab: np.ndarray, tolerance: float | None = None) -> np.ndarray:
    """Foreground of a reduced model input: padding bars out, then the photo's own mask."""
    rows, cols = _photo_box(rgb)
    mask = np.zeros(rgb.shape[:2], dtype=bool)
    mask[rows, cols] = _photo_mask(lab[rows, cols], tolerance)
    return mask


def foreground_mask(pixels: np.ndarray) -> np.ndarray:
    """Which pixels of an RGB image (HxWx3 uint8) belong to the product: a bool HxW array.

    `fit_square`'s white padding bars are background. In the photo between them, the
    background is the colour that most of the photo's border is close to, if that is a
    light neutral (studio white or grey): pixels within a CIE76 tolerance of it (growing
    with the border's own noise) connected to the border, so a white shirt on white keeps
    its inside. When no such colour owns the border (a room, a close-up of the product),
    or nearly everything is background, the central ellipse of the photo is the mask.
    Computed on the ~74 px reduction and scaled back. Never empty.
    """
    rgb = _as_rgb(pixels)
    height, width = rgb.shape[:2]
    small = _downsized(rgb)
    mask = _mask(small, srgb_to_lab(small))
    if mask.shape == (height, width):
        return mask
    scaled = Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST)
    result = np.asarray(scaled, dtype=bool)
    return result if result.any() else np.ones((height, width), dtype=bool)


class LabGrid:
    """The bins of a colour vector: the nodes of a regular CIELAB grid of ``step`` that are
    (nearly, within ``slack``) sRGB colours, in a fixed order.

    ``anchored``: the nodes include white (L=100) and the neutral axis (a=b=0), so greys
    fall on bins; otherwise the grid starts at L=0, a=b=-100.
    """

    def __init__(self, step: float = 20.0, *, anchored: bool = True, slack: float = 0.03):
        self.step = float(step)
        self.anchored = anchored
        if anchored:
            count = int(np.floor(100 / step)) + 1
            lightness = 100.0 - step * np.arange(count)[::-1]
            axis = step * np.arange(-int(np.ceil(110 / step)), int(np.ceil(110 / step)) + 1)
        else:
            lightness = np.arange(0.0, 100.0 + 1e-6, step)
            axis = np.arange(-100.0, 100.0 + 1e-6, step)
        nodes = np.stack(np.meshgrid(lightness, axis, axis, indexing="ij"), axis=-1)
        rgb = _lab_to_srgb_float(nodes)
        inside = ((rgb > -slack) & (rgb < 1 + slack)).all(axis=-1)
        self.origin = np.array([lightness[0], axis[0], axis[0]], dtype=np.float32)
        self.shape = np.array(inside.shape)
        self.index = np.where(inside, np.cumsum(inside).reshape(inside.shape) - 1, -1)
        self.centres = nodes[inside].astype(np.float32)

    def __len__(self) -> int:
        return len(self.centres)

    def __repr__(self) -> str:
        return f"LabGrid(step={self.step:g}, anchored={self.anchored}, bins={len(self)})"


# The bins and vote width chosen by demo_shop/bench/colour_research.py (Luma tune half).
GRID = LabGrid(20.0)
BIN_CENTRES = GRID.centres
DIMENSIONS = len(GRID)
# Width of each pixel's Gaussian vote over the bins, in CIE76 units: half the grid step, so
# a colour between bins is shared by them instead of jumping from one to the other.
BIN_SIGMA = 10.0
# Exponent of the colour cosine in a blend (`colour_similarity`).
SHARPNESS = 16.0
# Skin in CIELAB for `colour_vector`'s ``skin`` weighting: (a, b) centre and spreads,
# lightness range; over this share of the foreground skin-coloured pixels are taken for the
# product (beige, tan) and keep their weight.
SKIN_AB = (13.0, 18.0)
SKIN_SPREAD = (6.0, 8.0)
SKIN_LIGHTNESS = (20.0, 95.0)
MAX_SKIN_SHARE = 0.5
_CORNERS = np.array([(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)])


def lab_histogram(lab: np.ndarray, grid: LabGrid = GRID, sigma: float | None = BIN_SIGMA,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """Share of ``lab`` colours (N x 3) in each bin of ``grid``: Gaussian votes of width
    ``sigma`` shared by the (in-gamut) 8 grid nodes around each colour, or with
    ``sigma=None`` all to the nearest bin; each colour counts its ``weights`` (N values
    >= 0, default 1). Sums to 1 (unless every weight is 0).

    Nodes further away are left out: at sigma = step / 2 they would get at most ~2% of a
    vote, at step / 4 under 1e-6.
    """
    lab = np.asarray(lab, dtype=np.float32).reshape(-1, 3)
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float32).reshape(-1)
    total = float(len(lab) if weights is None else weights.sum())
    if len(lab) == 0 or total <= 0:
        return np.zeros(len(grid), dtype=np.float32)
    if sigma is None:
        return (_nearest_counts(lab, grid, weights) / total).astype(np.float32)
    bins, votes, kept = _votes(lab, grid, sigma)
    if weights is not None:
        votes *= weights
    # As float even when no colour is kept (bincount of nothing is int64).
    histogram = np.bincount(bins[:, kept].ravel(), weights=votes[:, kept].ravel(),
                            minlength=len(grid)).astype(np.float64)
    if not kept.all():
        # Colours whose surrounding nodes are all outside the gamut: their nearest bin.
        histogram += _nearest_counts(lab[~kept], grid,
                                     None if weights is None else weights[~kept])
    return (histogram / total).astype(np.float32)


def _votes(lab: np.ndarray, grid: LabGrid,
           sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each colour's votes: the bins of its 8 surrounding nodes and their shares (8 x N,
    each column summing to 1), and whether any of those nodes is in the gamut."""
    position = (lab - grid.origin) / grid.step
    base = np.clip(np.floor(position).astype(np.int64), 0, grid.shape - 2)
    offset = position - base
    bins = np.empty((8, len(lab)), dtype=np.int64)
    votes = np.empty((8, len(lab)), dtype=np.float32)
    for corner, delta in enumerate(_CORNERS):
        node = base + delta
        bins[corner] = grid.index[node[:, 0], node[:, 1], node[:, 2]]
        squared = (((offset - delta) * grid.step) ** 2).sum(axis=1)
        votes[corner] = np.exp(-squared / (2 * sigma ** 2))
    outside = bins < 0
    votes[outside], bins[outside] = 0.0, 0
    total = votes.sum(axis=0)
    kept = total > 1e-12
    votes[:, kept] /= total[kept]
    return bins, votes, kept


def _nearest_counts(lab: np.ndarray, grid: LabGrid,
                    weights: np.ndarray | None) -> np.ndarray:
    centres = grid.centres
    squared = ((lab ** 2).sum(axis=1)[:, None] + (centres ** 2).sum(axis=1)[None, :]
               - 2 * lab @ centres.T)
    return np.bincount(np.argmin(squared, axis=1), weights=weights,
                       minlength=len(grid)).astype(np.float64)


def _focus_weights(lab: np.ndarray, foreground: np.ndarray, *, centre: float | None,
                   skin: float) -> np.ndarray:
    """How much each pixel of a (square, model-input) CIELAB image counts in its colour
    histogram, HxW float32 in (0, 1], to favour the product over the model wearing it.

    ``centre``: a Gaussian of the distance from the image's centre, of standard deviation
    this fraction of each side (None: 1 everywhere), since products are centred and a
    model's head, shoes and other garment lie towards the edges. ``skin``: the weight of
    skin-coloured pixels (`_skin`; 1: as any other), unless skin is over
    `MAX_SKIN_SHARE` of the ``foreground`` (HxW bool), when it is more likely a beige
    product than a model.
    """
    height, width = lab.shape[:2]
    weights = np.ones((height, width), dtype=np.float32)
    if centre is not None:
        rows = ((np.arange(height) + 0.5) / height - 0.5) / centre
        cols = ((np.arange(width) + 0.5) / width - 0.5) / centre
        weights *= np.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / 2)
    if skin < 1.0:
        skin_like = _skin(lab)
        if skin_like[foreground].mean() <= MAX_SKIN_SHARE:
            weights *= 1.0 - (1.0 - skin) * skin_like
    return weights


def _skin(lab: np.ndarray) -> np.ndarray:
    """How skin-like each CIELAB colour is, 0..1: a Gaussian around `SKIN_AB` in (a, b),
    for lightness between `SKIN_LIGHTNESS`."""
    a, b = lab[..., 1] - SKIN_AB[0], lab[..., 2] - SKIN_AB[1]
    likeness = np.exp(-(a ** 2 / (2 * SKIN_SPREAD[0] ** 2) + b ** 2 / (2 * SKIN_SPREAD[1] ** 2)))
    lightness = lab[..., 0]
    return likeness * ((lightness > SKIN_LIGHTNESS[0]) & (lightness < SKIN_LIGHTNESS[1]))


def colour_vector(pixels: np.ndarray, *, mask: bool = True, grid: LabGrid = GRID,
                  sigma: float | None = BIN_SIGMA, tolerance: float | None = None,
                  side: int = WORK_SIDE, centre: float | None = None,
                  skin: float = 1.0) -> np.ndarray:
    """The colour vector of an RGB image (HxWx3 uint8, or floats in 0-255): float32, L2 norm 1.

    Takes the model's input as it is (e.g. the 299 px white-padded array of
    `visual_reco.preprocessing.fit_square`) and works on it reduced by an integer factor to
    at least ``side`` px. The vector is the square root of the soft CIELAB histogram
    (`lab_histogram`) of the foreground pixels (`foreground_mask`), so the dot product of
    two vectors is the overlap of their colour distributions (Bhattacharyya coefficient)
    and the squares of a vector's entries are its histogram. The keywords exist to measure
    alternatives (``mask=False``: every pixel, padding included; ``tolerance``: a fixed
    background tolerance; ``centre`` and ``skin``: pixel weights that favour the middle of
    the photo and down-weight skin, `_focus_weights`, measured and left off because they
    did not help on every set: docs/QUALITY.md, "Focusing the colour on the product");
    vectors are comparable only under the same ones.
    """
    small = _downsized(_as_rgb(pixels), side)
    lab = srgb_to_lab(small)
    foreground = (_mask(small, lab, tolerance) if mask
                  else np.ones(lab.shape[:2], dtype=bool))
    # Unfocused (the stored vectors), every pixel counts alike: no weights to make or apply.
    weights = (_focus_weights(lab, foreground, centre=centre, skin=skin)[foreground]
               if centre is not None or skin < 1.0 else None)
    histogram = lab_histogram(lab[foreground], grid, sigma, weights)
    vector = np.sqrt(histogram)
    return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)


# Fixed palette: plain English names (keys to translate), each with sRGB prototypes. Photos
# show dark products as dark greys with highlights, so "black", "navy" and "brown" reach
# further into the dark greys than their textbook colours.
PALETTE: dict[str, Sequence[tuple[int, int, int]]] = {
    "black": [(12, 12, 12), (38, 38, 40), (58, 58, 60)],
    "grey": [(105, 105, 107), (145, 145, 147), (185, 185, 187)],
    "white": [(248, 248, 248), (228, 228, 226)],
    "navy": [(25, 32, 65), (40, 48, 80), (55, 62, 90)],
    "blue": [(30, 80, 170), (60, 110, 200), (50, 70, 130), (70, 100, 150), (45, 55, 200),
             (70, 70, 215)],
    "light blue": [(140, 180, 225), (100, 160, 210), (170, 195, 220)],
    "teal": [(0, 120, 125), (60, 160, 160)],
    "green": [(40, 140, 60), (90, 180, 90), (25, 85, 45), (140, 210, 120), (85, 115, 85)],
    "olive": [(100, 100, 45), (80, 85, 50)],
    "yellow": [(240, 220, 50), (230, 230, 100), (235, 215, 120)],
    "orange": [(240, 130, 30), (230, 100, 50), (205, 95, 40), (225, 120, 70)],
    "red": [(200, 30, 35), (220, 50, 50), (210, 60, 70), (235, 85, 85)],
    "maroon": [(110, 25, 35), (80, 20, 30), (90, 40, 45)],
    "pink": [(240, 150, 180), (230, 70, 140), (245, 190, 200)],
    "purple": [(110, 50, 140), (80, 40, 100), (170, 140, 200), (90, 70, 110)],
    "brown": [(110, 70, 40), (140, 90, 55), (70, 45, 30), (60, 45, 38), (95, 70, 55)],
    "beige": [(220, 200, 165), (200, 175, 135)],
}
_NAMES = list(PALETTE)
_PROTOTYPE_NAMES = np.array([_NAMES.index(name) for name, colours in PALETTE.items()
                             for _ in colours])
# Names are decided more by hue and chroma than by lightness (shading, highlights).
_NAMING_WEIGHTS = np.array([0.5, 1.0, 1.0], dtype=np.float32)
_PROTOTYPES = srgb_to_lab(np.array([c for colours in PALETTE.values() for c in colours],
                                   dtype=np.uint8)) * _NAMING_WEIGHTS
# Pixels named per image at most (a stride over the foreground): shares move by < 1%.
_NAMING_SAMPLE = 1500


def _nearest_names(lab: np.ndarray) -> np.ndarray:
    """The index in `_NAMES` of each CIELAB colour's nearest palette prototype."""
    distances = (((lab * _NAMING_WEIGHTS)[:, None, :] - _PROTOTYPES[None, :, :]) ** 2).sum(axis=2)
    return _PROTOTYPE_NAMES[np.argmin(distances, axis=1)]


def _name_shares(lab: np.ndarray) -> np.ndarray:
    """Each palette name's share of the ``lab`` colours (every one of at most about
    `_NAMING_SAMPLE`, by a stride)."""
    stride = max(len(lab) // _NAMING_SAMPLE, 1)
    shares = np.bincount(_nearest_names(lab[::stride]), minlength=len(_NAMES)).astype(float)
    return shares / max(float(shares.sum()), 1e-12)


# sRGB colours (every 8th level per channel) that stand for "any colour" when naming bins.
_GAMUT_LEVELS = np.arange(4, 256, 8, dtype=np.uint8)


@functools.cache
def _bin_name_shares() -> np.ndarray:
    """How each bin's share of a colour vector splits between the palette names (bins x
    names, rows summing to 1): the names of the sRGB colours that vote into the bin, by
    their votes. Naming a bin by its centre alone named whole bins of orange "brown" and
    of royal blue "purple"; computed once per process (the API names every result)."""
    rgb = np.stack(np.meshgrid(_GAMUT_LEVELS, _GAMUT_LEVELS, _GAMUT_LEVELS, indexing="ij"),
                   axis=-1).reshape(-1, 3)
    lab = srgb_to_lab(rgb)
    bins, votes, kept = _votes(lab, GRID, BIN_SIGMA)
    names = np.broadcast_to(_nearest_names(lab), bins.shape)
    shares = np.zeros((DIMENSIONS, len(_NAMES)))
    np.add.at(shares, (bins[:, kept].ravel(), names[:, kept].ravel()),
              votes[:, kept].ravel())
    return shares / np.maximum(shares.sum(axis=1, keepdims=True), 1e-12)


def dominant_colours(pixels_or_vector: np.ndarray, *, limit: int = 3,
                     min_share: float = 0.15) -> list[tuple[str, float]]:
    """The main colours of a product as ``(name, share)`` pairs, largest first.

    Accepts an RGB image (HxWx3; its foreground is used, as in `colour_vector`) or a vector
    from `colour_vector` with the default bins (coarser: each bin's share, its square,
    splits between the names of the colours that vote into it). Every foreground pixel
    takes the name of its nearest `PALETTE` prototype (CIELAB, lightness differences
    counted half). At most
    ``limit`` names are returned, largest share first, those under ``min_share`` of the
    foreground left out except the first. Shares are of the whole foreground, so they need
    not sum to 1.
    """
    data = np.asarray(pixels_or_vector)
    if data.ndim == 1:
        if len(data) != DIMENSIONS:
            raise ValueError(f"A colour vector has {DIMENSIONS} values, not {len(data)}")
        histogram = data.astype(np.float64) ** 2
        shares = histogram @ _bin_name_shares() / max(float(histogram.sum()), 1e-12)
    else:
        small = _downsized(_as_rgb(data))
        lab = srgb_to_lab(small)
        foreground = lab[_mask(small, lab)]
        shares = _name_shares(foreground)
    order = np.argsort(-shares, kind="stable")[:max(limit, 1)]
    return [(_NAMES[i], round(float(shares[i]), 3)) for rank, i in enumerate(order)
            if rank == 0 or shares[i] >= min_share]


def colour_similarity(query: np.ndarray, vectors: np.ndarray,
                      sharpness: float = SHARPNESS) -> np.ndarray:
    """The colour term of a ranking: ``max(cos, 0) ** sharpness`` between a query's colour
    vector and each row of ``vectors``.

    Histograms of the same item seen from another side stay near 1 while any real colour
    difference falls towards 0, so a blend ``cos_cnn + w * colour_similarity`` moves the same
    item up without pulling in products of another kind that merely share some colours
    (docs: demo_shop/bench/colour_research.py; there s = 16, w = 0.4 for the default mode).
    """
    cosines = np.asarray(vectors, dtype=np.float32) @ np.asarray(query, dtype=np.float32)
    return np.clip(cosines, 0.0, 1.0) ** sharpness
