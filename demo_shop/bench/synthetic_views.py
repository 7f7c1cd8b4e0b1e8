"""Synthetic shopper's-eye views of a studio product photo (issue 13, point 3).

A customer's phone photo shows the product large, tilted, partly out of frame, in a hand or
on a shelf among other products, under shop light; the catalog holds one studio shot on
white. `views` draws such photos from the studio shot alone: the product is cut out of its
white background (`cutout`), scaled, rotated, tilted in perspective and pasted on a
cluttered background, sometimes held by a drawn hand, then relit, blurred and JPEG-compressed.

Backgrounds, by family:

- ``clutter``: what a shop has without any shopper's photo: a shelf of its other catalog
  products, a pile of the product itself, a random texture or a colour gradient;
- ``shop``: a phone photo taken in the shop (the caller's ``backgrounds``), pasted over
  with the product; for the scenario where the shop has its own photos anyway;
- ``plain``: white, as the studio shot (the geometric and photometric changes only).

Every view is drawn from a generator seeded by (family, product, view), so the first N views
of a product are the same whatever the number asked for, and a run draws the same pixels.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

FAMILIES = ("clutter", "shop", "plain")
SIDE = 348  # the phone photos' side in the Grocery Store set
FAMILY_SEEDS = {name: index for index, name in enumerate(FAMILIES)}
# Version of the drawing: part of the embedding caches' keys.
VERSION = 1
WHITE_THRESHOLD = 236


@dataclass(frozen=True)
class Cutout:
    """A product cut out of its studio photo: RGB pixels and an alpha mask, cropped to it."""

    image: Image.Image
    alpha: Image.Image


def cutout(photo: Image.Image) -> Cutout:
    """The product of a studio photo on white: every pixel not connected to the border
    through near-white pixels, with a softened edge, cropped to its bounding box."""
    rgb = photo.convert("RGB")
    pixels = np.asarray(rgb, dtype=np.int16)
    near_white = (pixels.min(axis=2) >= WHITE_THRESHOLD) & (np.ptp(pixels, axis=2) < 24)
    mask = Image.fromarray(np.where(near_white, 0, 255).astype(np.uint8))
    # Close small gaps in the outline so the flood fill below cannot leak into the product.
    mask = mask.filter(ImageFilter.MaxFilter(5)).filter(ImageFilter.MinFilter(5))
    framed = Image.new("L", (mask.width + 2, mask.height + 2), 0)
    framed.paste(mask, (1, 1))
    ImageDraw.floodfill(framed, (0, 0), 128)
    outside = np.asarray(framed, dtype=np.uint8)[1:-1, 1:-1] == 128
    alpha = Image.fromarray(np.where(outside, 0, 255).astype(np.uint8))
    alpha = alpha.filter(ImageFilter.GaussianBlur(0.8))
    box = alpha.getbbox() or (0, 0, rgb.width, rgb.height)
    return Cutout(rgb.crop(box), alpha.crop(box))


def _scaled(part: Cutout, longest: float, angle: float = 0.0) -> Cutout:
    """``part`` with its longer side ``longest`` pixels, rotated by ``angle`` degrees."""
    factor = longest / max(part.image.size)
    size = (max(int(part.image.width * factor), 1), max(int(part.image.height * factor), 1))
    image = part.image.resize(size, Image.Resampling.BICUBIC)
    alpha = part.alpha.resize(size, Image.Resampling.BICUBIC)
    if angle:
        image = image.rotate(angle, Image.Resampling.BICUBIC, expand=True)
        alpha = alpha.rotate(angle, Image.Resampling.BICUBIC, expand=True)
    return Cutout(image, alpha)


def _paste(canvas: Image.Image, part: Cutout, centre: tuple[float, float]) -> None:
    canvas.paste(part.image, (int(centre[0] - part.image.width / 2),
                              int(centre[1] - part.image.height / 2)), part.alpha)


def _noise_field(rng: np.random.Generator, cells: int) -> Image.Image:
    """Smooth random colour: a ``cells`` x ``cells`` grid of random colours, upscaled."""
    grid = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize((SIDE, SIDE), Image.Resampling.BICUBIC)


def _texture(rng: np.random.Generator) -> Image.Image:
    """A colour gradient, blotches, or stripes (tiles, crates, shelf edges)."""
    kind = rng.integers(3)
    if kind == 0:
        return _noise_field(rng, int(rng.integers(2, 4)))
    if kind == 1:
        return _noise_field(rng, int(rng.integers(6, 24))).filter(ImageFilter.GaussianBlur(2))
    canvas = Image.new("RGB", (SIDE, SIDE), tuple(int(c) for c in rng.integers(60, 240, 3)))
    draw = ImageDraw.Draw(canvas)
    step = int(rng.integers(12, 60))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    for offset in range(-SIDE, 2 * SIDE, step):
        draw.line([(offset, 0), (offset + int(rng.integers(-SIDE, SIDE)), SIDE)],
                  fill=colour, width=int(rng.integers(2, step // 2 + 3)))
    return canvas


def _shelf(rng: np.random.Generator, others: Sequence[Cutout]) -> Image.Image:
    """Rows of other catalog products on shelves."""
    tone = rng.integers(150, 235)
    canvas = Image.new("RGB", (SIDE, SIDE), (int(tone), int(tone - 8), int(tone - 20)))
    draw = ImageDraw.Draw(canvas)
    rows = int(rng.integers(2, 4))
    height = SIDE / rows
    for row in range(rows):
        floor = (row + 1) * height
        x = float(rng.uniform(-30, 0))
        while x < SIDE:
            other = _scaled(others[int(rng.integers(len(others)))],
                            float(rng.uniform(0.6, 0.95)) * height)
            _paste(canvas, other, (x + other.image.width / 2, floor - other.image.height / 2))
            x += other.image.width * float(rng.uniform(0.75, 1.05))
        draw.rectangle([0, floor - 4, SIDE, floor + 4], fill=(90, 90, 95))
    return canvas


def _pile(rng: np.random.Generator, product: Cutout) -> Image.Image:
    """Many copies of the product itself, as loose fruit in a crate."""
    canvas = _noise_field(rng, 3)
    for _ in range(int(rng.integers(8, 20))):
        copy = _scaled(product, float(rng.uniform(0.2, 0.4)) * SIDE, float(rng.uniform(0, 360)))
        _paste(canvas, copy, tuple(rng.uniform(0, SIDE, 2)))
    return canvas


def _hand(canvas: Image.Image, rng: np.random.Generator, centre: tuple[float, float],
          size: float) -> None:
    """A drawn hand holding the product from below: a palm and four fingers over it."""
    layer = Image.new("L", canvas.size, 0)
    draw = ImageDraw.Draw(layer)
    side = 1 if rng.random() < 0.5 else -1
    x = centre[0] + side * float(rng.uniform(0.5, 0.8)) * size
    y = centre[1] + float(rng.uniform(0.1, 0.5)) * size
    width = float(rng.uniform(0.25, 0.4)) * size
    # The palm beside the product, the fingers across its near edge.
    draw.ellipse([x - width, y - 0.6 * width, x + width, y + 1.8 * width], fill=255)
    finger = width * 0.3
    for index in range(4):
        top = y - index * finger * 1.05
        reach = x - side * width * 1.6
        draw.rounded_rectangle([min(x, reach), top - finger, max(x, reach), top],
                               radius=int(finger / 2), fill=255)
    tone = np.array([rng.uniform(150, 240), rng.uniform(100, 190), rng.uniform(80, 160)])
    skin = Image.new("RGB", canvas.size, tuple(int(c) for c in tone))
    canvas.paste(skin, (0, 0), layer.filter(ImageFilter.GaussianBlur(1.5)))


def _perspective(image: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    """A small random perspective tilt (corners moved by up to ``strength`` of the side)."""
    width, height = image.size
    shift = rng.uniform(-strength, strength, 8) * np.array([width, height] * 4)
    corners = np.array([0, 0, width, 0, width, height, 0, height], dtype=float)
    source = corners + shift
    matrix = []
    for (x, y), (u, v) in zip(corners.reshape(4, 2), source.reshape(4, 2), strict=True):
        matrix.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        matrix.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    coefficients = np.linalg.solve(np.array(matrix), source)
    return image.transform(image.size, Image.Transform.PERSPECTIVE, tuple(coefficients),
                           Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))


def _relit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Shop light: brightness, contrast, saturation and a white-balance cast, then blur and
    JPEG compression as a phone camera adds."""
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.7, 1.2)))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.75, 1.2)))
    image = ImageEnhance.Color(image).enhance(float(rng.uniform(0.7, 1.3)))
    gains = rng.uniform(0.88, 1.12, 3)
    pixels = np.clip(np.asarray(image, dtype=np.float32) * gains, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if rng.random() < 0.6:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.8))))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(35, 92)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def view(product: Cutout, family: str, product_index: int, view_index: int,
         others: Sequence[Cutout] = (), backgrounds: Sequence[Image.Image] = ()) -> Image.Image:
    """View ``view_index`` of ``product`` (the ``product_index``-th of the catalog) in
    ``family``; ``others`` are the other products' cutouts (``clutter`` shelves),
    ``backgrounds`` the shop's photos (``shop``)."""
    rng = np.random.default_rng([VERSION, FAMILY_SEEDS[family], product_index, view_index])
    if family == "plain":
        canvas = Image.new("RGB", (SIDE, SIDE), (255, 255, 255))
    elif family == "shop":
        background = backgrounds[int(rng.integers(len(backgrounds)))].convert("RGB")
        canvas = background.resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    else:
        kind = rng.choice(["shelf", "pile", "texture"], p=[0.45, 0.2, 0.35])
        canvas = (_shelf(rng, others) if kind == "shelf" and others
                  else _pile(rng, product) if kind == "pile" else _texture(rng))
    # Phone photos show the product large, often cut by the frame.
    longest = float(rng.uniform(0.45, 1.1)) * SIDE
    placed = _scaled(product, longest, float(rng.uniform(-15, 15)))
    centre = (float(rng.uniform(0.3, 0.7)) * SIDE, float(rng.uniform(0.3, 0.7)) * SIDE)
    _paste(canvas, placed, centre)
    if family != "plain" and rng.random() < 0.4:
        _hand(canvas, rng, centre, max(placed.image.size) / 2)
    canvas = _perspective(canvas, rng, 0.06)
    return _relit(canvas, rng)


def views(products: Sequence[Cutout], family: str, count: int,
          backgrounds: Sequence[Image.Image] = ()) -> Iterator[Image.Image]:
    """``count`` views of every product of the catalog ``products`` (their `cutout`),
    product by product: the ``p * count + v``-th is view v of product p. Drawn lazily."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")
    if family == "shop" and not backgrounds:
        raise ValueError("the shop family needs the shop's photos as backgrounds")
    for index, product in enumerate(products):
        others = [other for o, other in enumerate(products) if o != index]
        for number in range(count):
            yield view(product, family, index, number, others, backgrounds)
