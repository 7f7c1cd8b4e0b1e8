"""Cached similar-products lists for the template tag and the API.

With ``SIMILAR_CACHE`` set to a Django cache alias, the ids and distances of a product's
similar products are kept in that cache, keyed by the product, the limit and the candidate
queryset's SQL; a hit costs one cache read and one primary-key query instead of a vector
search. Every entry carries the catalog version it was computed under: saving or deleting a
row of the model (``post_save``/``post_delete``) and every embedding the workers write set a
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
from typing import Any

from django.core.cache import BaseCache, caches
from django.db import models

from visual_reco.commit_hooks import OnCommit, add_on_commit
from visual_reco.conf import reco_settings
from visual_reco.diversity import diversity_lambda
from visual_reco.modes import Blend, blend_for
from visual_reco.query import DISTANCE, hnsw_settings, score_name, visual
from visual_reco.registry import get_embedding_field

logger = logging.getLogger("visual_reco")

PREFIX = "visual_reco:similar"
PENDING = "_visual_reco_pending_invalidation"


def similar_cache() -> BaseCache | None:
    """The cache configured in ``SIMILAR_CACHE``, or None when caching is off."""
    alias = reco_settings.SIMILAR_CACHE
    return caches[alias] if alias else None


def _version_key(model: type[models.Model]) -> str:
    return f"{PREFIX}:{model._meta.label_lower}:version"


def invalidate(model: type[models.Model]) -> None:
    """Drop every cached similar-products list of ``model`` (set a new catalog version)."""
    cache = similar_cache()
    if cache is not None:
        cache.set(_version_key(model), time.time_ns(), None)


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


def _entry_key(obj: models.Model, candidates: models.QuerySet, limit: int, field: str,
               blend: Blend | None, collapse: bool, diversity: float | None) -> str:
    sql, params = candidates.query.sql_with_params()
    ranking = None
    if blend is not None:
        ranking = (blend.key(), collapse, reco_settings.ASPECT_CANDIDATES,
                   reco_settings.VARIANT_FIELD)
    parts: tuple[Any, ...] = (sql, params, field, hnsw_settings(),
                              reco_settings.EXACT_SEARCH_MAX_ROWS, candidates.db, ranking)
    if diversity is not None:  # only then, so that turning it on leaves other keys alone
        parts += (("diversity", diversity, reco_settings.DIVERSITY_POOL),)
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


def _from_entry(candidates: models.QuerySet, pairs: list[tuple[Any, float, Any]],
                attname: str) -> list[models.Model] | None:
    if not pairs:
        return []
    rows = {row.pk: row for row in candidates.filter(pk__in=[pair[0] for pair in pairs])
            .defer(attname).order_by()}
    if len(rows) != len(pairs):
        return None  # a row left the candidates without a signal (update(), raw SQL)
    results = []
    for pk, distance, aspect_scores in pairs:
        row = rows[pk]
        setattr(row, DISTANCE, distance)
        row.visual_score = 1.0 - distance
        if aspect_scores is not None:
            row.aspect_scores = aspect_scores
            for aspect, score in aspect_scores.items():
                setattr(row, score_name(aspect), score)
        results.append(row)
    return results


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
    model = type(obj)
    if candidates is None:
        candidates = model._default_manager.all()
    limit = reco_settings.DEFAULT_LIMIT if limit is None else int(limit)
    embedding = get_embedding_field(model, field)
    blend = blend_for(mode, aspects, default=True)
    diversity = diversity_lambda(reco_settings.DIVERSITY) if diverse else None

    def live() -> list[models.Model]:
        # Built only when needed: putting a blended query together costs more Python
        # than a cache hit's whole answer.
        return list(visual(candidates).visually_similar(
            obj, limit=limit, field=embedding.name, aspects=blend,
            collapse_variants=collapse_variants, diversity=diversity))

    cache = similar_cache()
    if cache is None:
        return live()
    key = _entry_key(obj, candidates, limit, embedding.name, blend, collapse_variants,
                     diversity)
    try:
        found = cache.get_many([_version_key(model), key])
        version = _current_version(cache, model, found)
    except Exception:
        logger.warning("SIMILAR_CACHE is unavailable; similar products computed live",
                       exc_info=True)
        return live()
    entry = found.get(key)
    if entry is not None and entry[0] == version:
        results = _from_entry(candidates, entry[1], embedding.attname)
        if results is not None:
            return results
    results = live()
    pairs = [(row.pk, float(getattr(row, DISTANCE)), getattr(row, "aspect_scores", None))
             for row in results]
    try:
        cache.set(key, (version, pairs), reco_settings.SIMILAR_CACHE_TIMEOUT)
    except Exception:
        logger.warning("SIMILAR_CACHE is unavailable; the list was not stored", exc_info=True)
    return results
