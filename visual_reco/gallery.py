"""Products with several photos: image rows found by a search, grouped into products.

A gallery field (``ImageEmbeddingField(source="image", product="product")`` on a child image
model) is searched on its image rows, with every option of an image search (HNSW or exact,
blends of aspects); `group` keeps each product once, with the score of its best image pair
(the aggregate chosen on Luma, docs/QUALITY.md "Products with several photos"), and
remembers that image as the product's ``visual_image``. `VisualQuerySet` (`visual_reco.query`)
asks for `GALLERY_OVERSAMPLE` x the products it needs in image rows and asks again for more
while the rows it got hold too few distinct products.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from visual_reco.choices import EmbeddingStatus
from visual_reco.conf import reco_settings
from visual_reco.registry import is_gallery

# The attribute of a product row holding its matching image's colour vector (the row
# itself has none): what captions and colour names read for a gallery search.
COLOUR_ATTRIBUTE = "visual_colour"
# How much more the next try asks for when the image rows held too few products.
GROWTH = 4


@dataclass
class Match:
    """A product's best image in a search: its score, the image row (with its
    ``visual_score``, ``visual_distance`` and, in a blend, ``aspect_scores``) and that
    image's stored colour vector."""

    product: Any
    score: float
    image: Any
    colour: Any = None


def group(hits: Iterable[list[Any]], product_attname: str) -> list[Match]:
    """Each product of the image rows ``hits`` (one list per query image, each best first)
    once, with its best row over every list, best first (ties: the smaller primary key)."""
    best: dict[Any, Match] = {}
    for rows in hits:
        for row in rows:
            product = getattr(row, product_attname)
            score = float(row.visual_score)
            found = best.get(product)
            if found is None or score > found.score:
                best[product] = Match(product, score, row)
    return sorted(best.values(), key=lambda match: (-match.score, _key(match.product)))


def _key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def first_pool(limit: int) -> int:
    """How many image rows the first try asks each query image for, for ``limit``
    products."""
    return max(int(limit), 1) * max(int(reco_settings.GALLERY_OVERSAMPLE), 1)


def pairwise_max(owners: list[Any], products: list[Any], similarity: np.ndarray) -> np.ndarray:
    """The ``(n, n)`` similarity of ``products`` to each other: the best pair of their
    images, from the images' ``similarity`` (``owners``: each image's product). A product
    without an image is 0 to the others and 1 to itself."""
    index = {product: position for position, product in enumerate(products)}
    count = len(products)
    result = np.zeros((count, count), dtype=np.float32)
    np.fill_diagonal(result, 1.0)
    rows = np.array([index.get(owner, -1) for owner in owners])
    for a in range(count):
        mine = rows == a
        if not mine.any():
            continue
        best = similarity[mine].max(axis=0)
        for b in range(count):
            theirs = rows == b
            if b != a and theirs.any():
                result[a, b] = best[theirs].max()
    return result


# A product's status from its images' statuses: the first of these that one of them has.
STATUS_PRECEDENCE = (EmbeddingStatus.READY, EmbeddingStatus.PENDING, EmbeddingStatus.STALE,
                     EmbeddingStatus.FAILED)


def product_status(embedding: Any, product: Any) -> str:
    """The embedding status of ``product`` through the gallery field ``embedding``: ready
    when one of its images is (it can be compared), else pending or stale when one waits,
    else failed when one failed, else no image."""
    key = embedding.product_key().attname
    found = set(embedding.model._base_manager.using(product._state.db or "default")
                .filter(**{key: product.pk}).values_list(embedding.status_name, flat=True)
                .distinct())
    return next((status for status in STATUS_PRECEDENCE if status in found),
                EmbeddingStatus.NO_IMAGE)


def status_of(obj: Any, embedding: Any) -> str:
    """``obj``'s embedding status for ``embedding``: its own status column, or for a
    gallery field `product_status`."""
    if is_gallery(embedding, type(obj)):
        return product_status(embedding, obj)
    return getattr(obj, embedding.status_name)
