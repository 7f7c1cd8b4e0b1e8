"""Cached similar-products lists for the template tag and the API.

With ``SIMILAR_CACHE`` set to a Django cache alias, the ids and distances of a product's
similar products are kept in that cache, keyed by the product, the limit and the candidate
queryset's SQL; a hit costs one cache read and one primary-key query instead of a vector
search. A pool that a caller ranks further (`similar_pool`) keeps, with ``pairwise``, the
rows' similarity to each other too (for maximal marginal relevance), so that it can be
ranked before any row is read, and only the rows shown are.

Every entry carries the catalog version it was computed under: saving or deleting a row of
the model (``post_save``/``post_delete``) and every embedding the workers write set a
new version once the transaction commits, so no entry outlives a change it could depend on.
Changes that bypass signals (``QuerySet.update()``, raw SQL) are caught by
``SIMILAR_CACHE_TIMEOUT``, or at once by calling `invalidate`.

The cache must be shared by all processes (Redis, Memcached, the database cache): a
per-process ``LocMemCache`` never hears of the workers' writes (check ``visual_reco.W001``).
A cache that fails (down, or slower than its client's socket timeout) is skipped: the list is
computed live, and the error logged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.core.cache import BaseCache, caches
from django.db import models

from visual_reco.commit_hooks import OnCommit, add_on_commit
from visual_reco.conf import reco_settings
from visual_reco.databases import reading
from visual_reco.diversity import PLAIN, diversity_lambda
from visual_reco.gallery import Match
from visual_reco.modes import Blend, blend_for
from visual_reco.pk_rows import holds_every_row, rows_by_pk
from visual_reco.query import (
    DISTANCE,
    attach_matches,
    candidate_similarity,
    hnsw_settings,
    score_name,
    visual,
)
from visual_reco.registry import gallery_products, get_embedding_field, is_gallery

logger = logging.getLogger("visual_reco")

PREFIX = "visual_reco:similar"
PENDING = "_visual_reco_pending_invalidation"
# In every key: a new entry layout gets new keys rather than misreading the old entries.
ENTRY_LAYOUT = 3


def similar_cache() -> BaseCache | None:
    """The cache configured in ``SIMILAR_CACHE``, or None when caching is off."""
    alias = reco_settings.SIMILAR_CACHE
    return caches[alias] if alias else None


def _version_key(model: type[models.Model]) -> str:
    return f"{PREFIX}:{model._meta.label_lower}:version"


def invalidate(model: type[models.Model]) -> None:
    """Drop every cached similar-products list of ``model`` (set a new catalog version), and
    of the products whose gallery ``model``'s rows are."""
    cache = similar_cache()
    if cache is not None:
        version = time.time_ns()
        cache.set_many({_version_key(m): version for m in [model, *gallery_products(model)]},
                       None)


class PendingInvalidation(OnCommit):
    """The models changed in one transaction, invalidated together when it commits."""

    def __init__(self) -> None:
        self.models: set[type[models.Model]] = set()

    def run(self) -> None:
        """`invalidate` every model the transaction changed."""
        for model in self.models:
            invalidate(model)


def invalidate_on_commit(model: type[models.Model], using: str = "default") -> None:
    """`invalidate` ``model`` once the current transaction commits (at once outside one).

    One callback per transaction, however many rows it changes.
    """
    if reco_settings.SIMILAR_CACHE:
        add_on_commit(using, PENDING, PendingInvalidation,
                      lambda pending: pending.models.add(model))


def _candidates_signature(candidates: models.QuerySet) -> tuple[Any, ...]:
    """What decides which rows ``candidates`` holds: nothing for every row of its table (the
    common case, told apart without compiling the query), else its SQL and parameters. The
    columns it reads do not matter: a hit reads its rows through ``candidates``."""
    if holds_every_row(candidates):
        return ("all", candidates.model._meta.db_table)
    return candidates.query.sql_with_params()


def _entry_key(obj: models.Model, candidates: models.QuerySet, limit: int, field: str,
               blend: Blend | None, collapse: bool, diversity: float | None,
               pairwise: bool) -> str:
    sql, params = _candidates_signature(candidates)
    ranking = None
    if blend is not None:
        ranking = (blend.key(), collapse, reco_settings.ASPECT_CANDIDATES,
                   reco_settings.VARIANT_FIELD)
    parts: tuple[Any, ...] = (ENTRY_LAYOUT, sql, params, field, hnsw_settings(),
                              reco_settings.EXACT_SEARCH_MAX_ROWS, candidates.db, ranking)
    if diversity is not None:  # only then, so that turning it on leaves other keys alone
        parts += (("diversity", diversity, reco_settings.DIVERSITY_POOL),)
    if pairwise:
        parts += ("pairwise",)
    signature = repr(parts)
    digest = hashlib.blake2b(signature.encode(), digest_size=12).hexdigest()
    return f"{PREFIX}:{type(obj)._meta.label_lower}:{obj.pk}:{limit}:{digest}"


def _current_version(cache: BaseCache, model: type[models.Model],
                     found: dict[str, Any]) -> int:
    key = _version_key(model)
    if key in found:
        return found[key]
    cache.add(key, time.time_ns(), None)
    return cache.get(key)


@dataclass
class SimilarPool:
    """A similar-products list as the cache keeps it, before its rows are read: each row's
    primary key, distance and per-aspect scores (``entries``, nearest first) and, when asked
    for, the rows' ``similarity`` to each other under the list's blend
    (`visual_reco.query.candidate_similarity`). ``loaded``: the rows, when the list was
    computed live just now."""

    candidates: models.QuerySet
    attname: str | None
    entries: list[tuple[Any, float, dict[str, float] | None]]
    similarity: np.ndarray | None = None
    loaded: list[models.Model] | None = None
    # A gallery search's matching image of each row, by position, and the gallery field.
    images: list[Any] | None = None
    gallery: Any = None

    @property
    def pks(self) -> list[Any]:
        """The rows' primary keys, nearest first."""
        return [entry[0] for entry in self.entries]

    @property
    def visual_scores(self) -> np.ndarray:
        """Each row's ``visual_score`` (1 - its distance), as its row carries it."""
        if self.loaded is not None:
            return np.array([row.visual_score for row in self.loaded], dtype=np.float64)
        return 1.0 - np.array([entry[1] for entry in self.entries], dtype=np.float64)

    def rows(self, indices: Sequence[int] | None = None) -> list[models.Model] | None:
        """The rows at ``indices`` (default: all) in that order, annotated as the live query
        annotates them, read in one primary-key query; None when one of them has left the
        candidates without a signal (``update()``, raw SQL) since the list was cached."""
        indices = range(len(self.entries)) if indices is None else indices
        if self.loaded is not None:
            return [self.loaded[index] for index in indices]
        wanted = [self.entries[index] for index in indices]
        if not wanted:
            return []
        found = {row.pk: row for row in rows_by_pk(
            self.candidates, [entry[0] for entry in wanted],
            [self.attname] if self.attname is not None else [])}
        if len(found) != len(wanted):
            return None
        results = []
        for pk, distance, aspect_scores in wanted:
            row = found[pk]
            setattr(row, DISTANCE, distance)
            row.visual_score = 1.0 - distance
            if aspect_scores is not None:
                row.aspect_scores = aspect_scores
                for aspect, score in aspect_scores.items():
                    setattr(row, score_name(aspect), score)
            results.append(row)
        if self.gallery is not None:
            self._attach_images(results, [self.images[index] for index in indices])
        return results

    def _attach_images(self, rows: list[models.Model], images: list[Any]) -> None:
        """Give the rows of a gallery search their matching images, read in one query."""
        embedding = self.gallery
        columns = ["pk", embedding.source] + ([embedding.colour_attname]
                                              if embedding.colour_attname else [])
        found = embedding.model._base_manager.using(self.candidates.db).filter(pk__in=images)
        found = {image.pk: image for image in found.only(*columns)}
        matches = {}
        for row, pk in zip(rows, images, strict=True):
            image = found.get(pk)
            if image is None:  # deleted since the list was cached: no caption or photo
                continue
            image.visual_score, image.aspect_scores = row.visual_score, getattr(
                row, "aspect_scores", None)
            setattr(image, DISTANCE, getattr(row, DISTANCE))
            colour = image.__dict__.get(embedding.colour_attname or "")
            matches[row.pk] = Match(row.pk, row.visual_score, image, colour)
        attach_matches(rows, matches)


def similar_pool(obj: models.Model, candidates: models.QuerySet | None = None,
                 limit: int | None = None, *, field: str | None = None,
                 mode: str | None = None, aspects: Any = None,
                 collapse_variants: bool = False, diverse: bool = True,
                 pairwise: bool = False, refresh: bool = False) -> SimilarPool:
    """The `SimilarPool` of `similar_products` (same arguments), from the cache when it has
    it, else computed live and stored. With ``pairwise``, its rows' similarity to each other
    under the blend they were ranked by; ``refresh`` computes it live whatever the cache
    holds (for a caller whose cached rows were gone)."""
    model = type(obj)
    if candidates is None:
        candidates = model._default_manager.all()
    candidates = reading(candidates)
    limit = reco_settings.DEFAULT_LIMIT if limit is None else int(limit)
    embedding = get_embedding_field(model, field)
    blend = blend_for(mode, aspects, default=True)
    diversity = diversity_lambda(reco_settings.DIVERSITY) if diverse else None
    gallery = is_gallery(embedding, model)
    attname = None if gallery else embedding.attname

    def live() -> SimilarPool:
        # Built only when needed: putting a blended query together costs more Python
        # than a cache hit's whole answer.
        rows = list(visual(candidates).visually_similar(
            obj, limit=limit, field=embedding.name, aspects=blend,
            collapse_variants=collapse_variants, diversity=diversity))
        similarity = (candidate_similarity(model, [row.pk for row in rows], blend or PLAIN,
                                           embedding.name, using=candidates.db)
                      if pairwise else None)
        entries = [(row.pk, float(getattr(row, DISTANCE)), getattr(row, "aspect_scores", None))
                   for row in rows]
        images = [getattr(row, "visual_image_id", None) for row in rows] if gallery else None
        return SimilarPool(candidates, attname, entries, similarity, rows, images,
                           embedding if gallery else None)

    cache = similar_cache()
    if cache is None:
        return live()
    key = _entry_key(obj, candidates, limit, embedding.name, blend, collapse_variants,
                     diversity, pairwise)
    try:
        found = cache.get_many([_version_key(model), key])
        version = _current_version(cache, model, found)
    except Exception:
        logger.warning("SIMILAR_CACHE is unavailable; similar products computed live",
                       exc_info=True)
        return live()
    entry = found.get(key)
    if entry is not None and entry[0] == version and not refresh:
        return SimilarPool(candidates, attname, entry[1], entry[2], images=entry[3],
                           gallery=embedding if gallery else None)
    pool = live()
    try:
        cache.set(key, (version, pool.entries, pool.similarity, pool.images),
                  reco_settings.SIMILAR_CACHE_TIMEOUT)
    except Exception:
        logger.warning("SIMILAR_CACHE is unavailable; the list was not stored", exc_info=True)
    return pool


def similar_products(obj: models.Model, candidates: models.QuerySet | None = None,
                     limit: int | None = None, *, field: str | None = None,
                     mode: str | None = None, aspects: Any = None,
                     collapse_variants: bool = False, diverse: bool = True
                     ) -> list[models.Model]:
    """``visually_similar(obj)`` among ``candidates`` as a list, cached when configured.

    The rows are those of ``candidates`` (default: the model's default manager), nearest
    first by the embedding ``field`` (default: the model's first), annotated with
    ``visual_distance`` and ``visual_score`` as the live query does. They are ranked by
    ``aspects`` or the ``mode`` (default ``DEFAULT_MODE``; `visual_reco.modes`), blended
    rows carrying ``aspect_scores`` too; `visual_reco.modes.UnknownMode` for a mode that
    ``ASPECT_MODES`` lacks. With ``diverse`` (the default) and ``DIVERSITY`` set, they are
    in maximal marginal relevance order (`visual_reco.diversity`); ``diverse=False`` for a
    candidate pool that a caller ranks further.
    """
    options = {"field": field, "mode": mode, "aspects": aspects,
               "collapse_variants": collapse_variants, "diverse": diverse}
    rows = similar_pool(obj, candidates, limit, **options).rows()
    if rows is None:  # a row left the candidates without a signal (update(), raw SQL)
        rows = similar_pool(obj, candidates, limit, refresh=True, **options).rows()
    return rows
