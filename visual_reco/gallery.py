"""Products with several photos: image rows found by a search, grouped into products.

A gallery field (``ImageEmbeddingField(source="image", product="product")`` on a child image
model) is searched on its image rows, with every option of an image search (HNSW or exact,
blends of aspects); each product is kept once, with the score of its best image pair (the
aggregate chosen on Luma, docs/QUALITY.md "Products with several photos"), and that image is
remembered as the product's ``visual_image``. `VisualQuerySet` (`visual_reco.query`) asks
for `GALLERY_OVERSAMPLE` x the products it needs in image rows per query image, and asks
again for more while the rows it got hold too few distinct products.

`statement` is the SQL of one such try: the image search of every source photo of a product
in one statement (``LEFT JOIN LATERAL``, so Postgres runs the per-photo index walks in one
round trip), grouped by product in SQL, so only the products come back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from visual_reco.choices import EmbeddingStatus
from visual_reco.conf import reco_settings
from visual_reco.databases import read_database
from visual_reco.registry import is_gallery

# The attribute of a product row holding its matching image's colour vector (the row
# itself has none): what captions and colour names read for a gallery search.
COLOUR_ATTRIBUTE = "visual_colour"
# How much more the next try asks for when the image rows held too few products.
GROWTH = 4
# The alias of the source photos in `statement`: an image search's SQL names their columns
# (``"visual_source"."embedding"``) for its query vectors.
SOURCE = "visual_source"
# The names `statement` reads an image search's rows by: the image's primary key, its
# product's and its source file.
HIT_PK, HIT_PRODUCT, HIT_FILE = "visual_hit_pk", "visual_hit_product", "visual_hit_file"


@dataclass
class Match:
    """A product's best image in a search: its score, the image row (with its
    ``visual_score``, ``visual_distance`` and, in a blend, ``aspect_scores``), that image's
    stored colour vector and the product's ``VARIANT_FIELD`` value (when asked for)."""

    product: Any
    score: float
    image: Any
    colour: Any = None
    variant: Any = None


def best_of(*tries: list[Match]) -> list[Match]:
    """Each product of the ``tries`` (each best first) once, with its best match over all
    of them, best first (ties: the smaller primary key)."""
    best: dict[Any, Match] = {}
    for matches in tries:
        for match in matches:
            found = best.get(match.product)
            if found is None or match.score > found.score:
                best[match.product] = match
    return sorted(best.values(), key=lambda match: (-match.score, _key(match.product)))


def statement(hits: str, sources: str, where: str = "", *, pk: str,
              variant: tuple[str, str, str] | None = None) -> str:
    """One try of a gallery search as SQL, from the image search ``hits`` (SQL naming its
    query vectors in the `SOURCE` rows; its columns include `HIT_PK`, `HIT_PRODUCT` and
    ``visual_score``), ``sources`` (the FROM item of the `SOURCE` rows: the image table, or
    one row for a query vector), ``where`` (the condition on them: the product's photos
    with a vector) and ``pk`` (their primary key column, quoted); ``variant``: the product
    table, its primary key and its ``VARIANT_FIELD`` column (quoted), to read it.

    Parameters, in order: those of ``sources``, of ``hits``, of ``where``, the pool (a source photo
    whose search found fewer rows is reported), the product left out (None: none) and the
    most products to answer (None: all). One row always comes back: ``visual_fullest`` (the
    most rows a source's search found; NULL without sources) and ``visual_short`` (the
    sources whose search found fewer than the pool), with each product's best hit (NULL
    columns without one), best first, and its ``visual_variant``.
    """
    where = f" WHERE {where}" if where else ""
    key = HIT_PRODUCT
    joined, value = "", "NULL"
    if variant is not None:
        table, table_pk, column = variant
        joined = f" LEFT JOIN {table} AS visual_product ON visual_product.{table_pk} = b.{key}"
        value = f"visual_product.{column}"
    return (
        f"WITH visual_hit AS (SELECT {SOURCE}.{pk} AS visual_from, visual_found.* "
        f"FROM {sources} LEFT JOIN LATERAL ({hits}) AS visual_found ON true{where}) "
        "SELECT visual_stats.*, visual_best.* FROM ("
        "SELECT max(n) AS visual_fullest, array_agg(visual_from) FILTER (WHERE n < %s) "
        f"AS visual_short FROM (SELECT visual_from, count({HIT_PK}) AS n FROM visual_hit "
        "GROUP BY visual_from) AS visual_counts) AS visual_stats "
        f"LEFT JOIN LATERAL (SELECT b.*, {value} AS visual_variant FROM ("
        f"SELECT DISTINCT ON (h.{key}) h.* FROM visual_hit AS h WHERE h.{key} IS NOT NULL "
        f"AND h.{key} IS DISTINCT FROM %s ORDER BY h.{key}, h.visual_score DESC, h.{HIT_PK}"
        f") AS b{joined} ORDER BY b.visual_score DESC, b.{key} LIMIT %s) AS visual_best ON true")


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
    found = set(embedding.model._base_manager.using(product._state.db
                                                    or read_database(embedding.model))
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
