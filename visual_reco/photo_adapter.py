"""The photo-search adapter at serve time: numpy only (training, with TensorFlow, is
`visual_reco.photo_adapter_learning`).

An adapter maps an embedding field's frozen unit vectors ``x -> l2(x + x A B)`` (low rank,
``B`` starting at zero, so an untrained one is the identity), learned from a gallery's extra
photos (customer or in-store shots) so that a phone photo lands nearer its product's
images. Only photo search uses it, and only to re-order: the ``PHOTO_ADAPTER["POOL"]``
best products (at least the limit) by the raw vectors (the HNSW index, as without an
adapter) are re-scored with the projected query and the projected vectors of each one's
``IMAGES`` images nearest the raw query, the blend's other aspects (colour) unchanged. So
no column or index holds projected vectors, and item-to-item similarity never sees the map.

Each process loads the serving version of a field once and looks again every
``SERVING_TTL`` seconds; a version trained on another embedder's vectors (fingerprint) is
never used (`visual_reco.versions`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import models
from django.db.models import F, Value, Window
from django.db.models.functions import RowNumber
from pgvector import HalfVector
from pgvector.django import CosineDistance

from visual_reco.aspects import get_aspect
from visual_reco.conf import reco_settings
from visual_reco.gallery import COLOUR_ATTRIBUTE
from visual_reco.models import PhotoAdapter
from visual_reco.modes import SHAPE, Blend, Term, unit_rows
from visual_reco.query import DISTANCE, binary_vector, from_binary, halfvec_text, score_name
from visual_reco.registry import get_embedding_field, is_gallery
from visual_reco.versions import ServingVersions


@dataclass(frozen=True)
class Adapter:
    """One version's map: ``a`` (dimensions, rank) and ``b`` (rank, dimensions), float32."""

    version: str
    fingerprint: str
    a: np.ndarray
    b: np.ndarray

    def project(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` (n, dimensions) mapped and scaled to unit length (zero rows stay zero)."""
        rows = np.asarray(rows, dtype=np.float32)
        return unit_rows(rows + (rows @ self.a) @ self.b, np.float32)

    def to_bytes(self) -> bytes:
        """The weights as an ``.npz`` file's bytes (what `PhotoAdapter.weights` stores)."""
        buffer = io.BytesIO()
        np.savez(buffer, a=self.a.astype(np.float32), b=self.b.astype(np.float32))
        return buffer.getvalue()

    @classmethod
    def from_row(cls, row: PhotoAdapter) -> Adapter:
        """The adapter a `PhotoAdapter` row stores."""
        with np.load(io.BytesIO(bytes(row.weights)), allow_pickle=False) as arrays:
            return cls(row.version, row.fingerprint, arrays["a"], arrays["b"])


# The serving version of each field, kept by this process.
SERVING = ServingVersions(PhotoAdapter, Adapter.from_row)


def serving_adapter(model: type[models.Model], field: str | None = None) -> Adapter | None:
    """The adapter serving photo search on ``field`` of ``model``: None when none serves,
    when ``PHOTO_ADAPTER["SERVE"]`` is off, or when it was trained on vectors of another
    embedder than the one the field's column holds
    (`visual_reco.versions.ServingVersions`: looked up again every ``SERVING_TTL``
    seconds, as the learned ranking is)."""
    if not reco_settings.PHOTO_ADAPTER["SERVE"]:
        return None
    return SERVING.get(model, field)


def forget_serving() -> None:
    """Look for the serving versions again on next use (after serving another one)."""
    SERVING.forget()


def image_vectors(model: type[models.Model], field: str | None, pks: Sequence[Any],
                  aspects: Sequence[str], using: str | None = None, *,
                  nearest: tuple[Any, int] | None = None,
                  ) -> tuple[list[Any], list[Any], dict[str, np.ndarray]]:
    """The vectors of the images of the products ``pks`` (a gallery field: each embedded
    image; else the products' own), in one query: (each image's product, each image's
    primary key, ``{aspect: (images, dimensions)}`` with ``"shape"`` the embedding and a
    missing aspect vector a NaN row). ``nearest`` (vector, count): only each product's
    ``count`` images nearest to the vector (cosine), chosen in SQL."""
    embedding = get_embedding_field(model, field)
    columns = [embedding.attname, *(embedding.aspect_name(a) for a in aspects)]
    if is_gallery(embedding, model):
        key = embedding.product_key().attname
        manager = embedding.model._base_manager
    else:
        key = "pk"
        manager = model._base_manager
    manager = manager.using(using) if using else manager
    found = manager.filter(**{f"{key}__in": list(pks), f"{embedding.attname}__isnull": False})
    if nearest is not None:
        query = Value(halfvec_text(HalfVector(np.asarray(nearest[0], dtype=np.float32))))
        found = found.annotate(_visual_reco_rank=Window(
            RowNumber(), partition_by=[F(key)],
            order_by=[CosineDistance(embedding.attname, query).asc(), F("pk").asc()],
        )).filter(_visual_reco_rank__lte=nearest[1])
    binaries = [binary_vector(column) for column in columns]
    if key == "pk":  # the products' own vectors: each is its own image
        rows = [(row[0], *row) for row in found.order_by("pk").values_list("pk", *binaries)]
    else:
        rows = list(found.order_by("pk").values_list(key, "pk", *binaries))
    vectors: dict[str, np.ndarray] = {}
    for position, aspect in enumerate((SHAPE, *aspects)):
        decoded = [None if row[2 + position] is None else from_binary(row[2 + position])
                   for row in rows]
        width = embedding.dimensions if aspect == SHAPE else get_aspect(aspect).dimensions
        vectors[aspect] = np.stack([np.full(width, np.nan, np.float32) if v is None else v
                                    for v in decoded]) if rows else np.zeros((0, width))
    return [row[0] for row in rows], [row[1] for row in rows], vectors


def rescore(adapter: Adapter, rows: list[models.Model], vector: Any, blend: Blend | None, *,
            colour: Any = None, field: str | None = None) -> list[models.Model]:
    """``rows`` (a visual search's result, products of one model) re-ordered by ``blend``
    (None: the cosine) with the shape cosine taken between the projected query ``vector``
    and each image's projected vector, each product by its best image; ``visual_score``,
    ``visual_distance`` and the aspect scores become the new ones, and a gallery row's
    ``visual_image`` the image that now matches best. Rows without a stored vector keep
    their place after the re-scored ones."""
    if not rows:
        return rows
    model = type(rows[0])
    embedding = get_embedding_field(model, field)
    blend = blend or Blend((Term(SHAPE, 1.0),))
    queries = {SHAPE: adapter.project(np.asarray(vector, dtype=np.float32)[None, :])}
    if colour is not None and "colour" in blend.aspects and "colour" in embedding.aspects:
        queries["colour"] = np.asarray(colour, dtype=np.float32)[None, :]
    aspects = [a for a in queries if a != SHAPE]
    # Reading and projecting cost per image: only each product's images nearest to the
    # raw query are re-scored, its best under the map mostly among them (grocery val R@1
    # 0.713 with 8, 0.720 with all: docs/QUALITY.md), so a search's cost stays bounded.
    owners, images, vectors = image_vectors(
        model, embedding.name, [row.pk for row in rows], aspects, using=rows[0]._state.db,
        nearest=(vector, int(reco_settings.PHOTO_ADAPTER["IMAGES"])))
    if not images:
        return rows
    usable = blend.without({a for a in blend.aspects if a not in queries})
    cosines = {aspect: (unit_rows(queries[aspect]) @ unit_rows(vectors[aspect]).T)[0]
               for aspect in usable.aspects if aspect != SHAPE}
    cosines[SHAPE] = adapter.project(np.nan_to_num(vectors[SHAPE])) @ queries[SHAPE][0]
    scores = usable.combine(cosines)
    best: dict[Any, int] = {}
    for index, owner in enumerate(owners):
        if owner not in best or scores[index] > scores[best[owner]]:
            best[owner] = index
    found = [row for row in rows if row.pk in best]
    found.sort(key=lambda row: -scores[best[row.pk]])
    gallery = is_gallery(embedding, model)
    if gallery:
        _attach_images(found, {row.pk: images[best[row.pk]] for row in found}, embedding)
    for row in found:
        index = best[row.pk]
        row.visual_score = float(scores[index])
        setattr(row, DISTANCE, 1.0 - row.visual_score)
        row.aspect_scores = {aspect: float(cosines[aspect][index])
                             for aspect in usable.aspects}
        for aspect, value in row.aspect_scores.items():
            setattr(row, score_name(aspect), value)
        if gallery and "colour" in vectors:
            row.__dict__[COLOUR_ATTRIBUTE] = vectors["colour"][index]
    return found + [row for row in rows if row.pk not in best]


def _attach_images(rows: list[models.Model], chosen: dict[Any, Any], embedding: Any) -> None:
    """Give each gallery row its best image under the adapter (read when it changed)."""
    current = {row.pk: getattr(row, "visual_image_id", None) for row in rows}
    changed = {pk: image for pk, image in chosen.items() if current[pk] != image}
    if not changed:
        return
    images = embedding.model._base_manager.using(rows[0]._state.db).defer(
        embedding.attname, *(embedding.aspect_name(a) for a in embedding.aspects)).in_bulk(
        list(changed.values()))
    for row in rows:
        image = images.get(changed.get(row.pk))
        if image is not None:
            row.visual_image, row.visual_image_id = image, image.pk
