"""Search by photo and words: embed the customer's photo, predict its category, rank the
catalog by looks, by words (`visual_reco.text_search`) or by both fused (`visual_reco.fusion`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from django.db import models

from visual_reco import text_search
from visual_reco.categories import CategoryPrediction, category_field, vote
from visual_reco.classifier import load_classifier
from visual_reco.conf import reco_settings
from visual_reco.databases import reading
from visual_reco.fusion import Fusion, fuse
from visual_reco.modes import Blend, blend_for
from visual_reco.photo_adapter import rescore, serving_adapter
from visual_reco.query import DISTANCE, deferred_vectors, photo_aspects, visual
from visual_reco.query_photos import embed_query
from visual_reco.registry import get_embedding_field
from visual_reco.rollout import live_embedder


@dataclass
class PhotoSearch:
    """The outcome of a photo search."""

    results: list[models.Model]
    category: CategoryPrediction | None
    timings_ms: dict[str, float] = field(default_factory=dict)
    # The words searched for (None: the photo alone).
    text: str | None = None


def predict_category(vector: np.ndarray, queryset: models.QuerySet, *,
                     field: str | None = None) -> CategoryPrediction | None:
    """Predict the category of ``vector`` among ``queryset``'s products (None: no category
    field): the trained head for ``field`` when one matches its embedder, else the vote of
    the ``CATEGORY_NEIGHBOURS`` nearest products."""
    name = category_field(queryset.model)
    if name is None:
        return None
    classifier = load_classifier(queryset.model, field)
    if classifier is not None:
        return classifier.predict(vector)
    neighbours = visual(queryset).similar_to_vector(
        vector, reco_settings.CATEGORY_NEIGHBOURS, field=field).values_list(name, DISTANCE)
    return vote((category, 1.0 - distance) for category, distance in neighbours)


def search_by_photo(file: IO[bytes] | None, queryset: models.QuerySet, *,
                    limit: int | None = None, filter_by_predicted_category: bool = False,
                    filters: dict[str, Any] | None = None, field: str | None = None,
                    text: str | None = None) -> PhotoSearch:
    """The products of ``queryset`` that look most like the photo in ``file``, compared on
    the embedding ``field`` (default: the model's first) by ``SEARCH_MODE`` (the category
    is predicted from the CNN vector alone), and whose words match ``text``.

    Photo only: the visual ranking. Words only (``file`` None): the products matching them
    by ``ts_rank_cd`` (`visual_reco.text_search`). Both: the ``TEXT_SEARCH["POOL"]`` best of
    each fused by ``TEXT_SEARCH["FUSION"]`` (`visual_reco.fusion`). ``filters`` and
    ``filter_by_predicted_category`` (a photo's) apply to both. Each row carries
    ``matched_text`` (None without words) and ``text_rank`` (None when it did not match);
    a row found by words alone has no ``visual_score``. Raises ``ValueError`` when neither
    a photo nor words are given, `visual_reco.text_search.TextQueryError` for words that
    cannot be searched.
    """
    text = text_search.clean_text(text)
    if file is None and not text:
        raise ValueError("Send a photo, words, or both.")
    embedding = get_embedding_field(queryset.model, field)
    limit = reco_settings.DEFAULT_LIMIT if limit is None else int(limit)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    queryset = reading(queryset.filter(**(filters or {})))
    prediction, vector, colour = None, None, None
    if file is not None:
        blend = search_blend(serving_adapter(queryset.model, embedding.name) is not None)
        query = embed_query(file, embedder=live_embedder(embedding, queryset.db),
                            aspects=photo_aspects(blend, embedding))
        vector, colour = query.vector, query.aspects.get("colour")
        embedded = time.perf_counter()
        prediction = predict_category(vector, queryset, field=embedding.name)
        timings["embed"] = (embedded - started) * 1000
        timings["category"] = (time.perf_counter() - embedded) * 1000
        name = category_field(queryset.model)
        if filter_by_predicted_category and prediction and prediction.category and name:
            queryset = queryset.filter(**{name: prediction.category})
    ranking = time.perf_counter()
    results = ranked_search(queryset, limit, vector=vector, colour=colour, text=text,
                            field=embedding.name, timings=timings)
    done = time.perf_counter()
    timings["rank"] = (done - ranking) * 1000
    timings["total"] = (done - started) * 1000
    return PhotoSearch(results, prediction, timings, text=text or None)


def visual_pool(queryset: models.QuerySet, vector: Any, limit: int, *, colour: Any = None,
                field: str | None = None) -> list[models.Model]:
    """The ``limit`` products of ``queryset`` nearest to the query ``vector`` (and its
    ``colour``) by ``SEARCH_MODE``, each once (a gallery's with its matching image).

    With a photo adapter serving for the field (`visual_reco.photo_adapter`), the
    ``PHOTO_ADAPTER["POOL"]`` best (at least ``limit``) by the raw vectors are re-scored with the
    projected vectors and the best ``limit`` kept, both by ``PHOTO_ADAPTER["MODE"]``."""
    adapter = (serving_adapter(queryset.model, field) if queryset._fields is None
               else None)
    blend = search_blend(adapter is not None)
    if adapter is None:
        return list(visual(queryset).similar_to_vector(
            vector, limit, field=field, aspects=blend, colour=colour))
    pool = list(visual(queryset).similar_to_vector(
        vector, max(limit, int(reco_settings.PHOTO_ADAPTER["POOL"])), field=field, aspects=blend,
        colour=colour))
    return rescore(adapter, pool, vector, blend, colour=colour, field=field)[:limit]


def search_blend(adapted: bool) -> Blend | None:
    """The blend photo search ranks by: ``PHOTO_ADAPTER["MODE"]`` while an adapter serves
    (``adapted``; a gallery with shop photos), else ``SEARCH_MODE``."""
    mode = reco_settings.PHOTO_ADAPTER["MODE"] if adapted else None
    return blend_for(mode or reco_settings.SEARCH_MODE)


def fusion() -> Fusion:
    """The configured ``TEXT_SEARCH`` fusion."""
    config = reco_settings.TEXT_SEARCH
    return Fusion(str(config["FUSION"]), float(config["RRF_K"]), float(config["TEXT_WEIGHT"]))


def ranked_search(queryset: models.QuerySet, limit: int, *, vector: Any = None,
                  colour: Any = None, text: str = "", field: str | None = None,
                  timings: dict[str, float] | None = None) -> list[models.Model]:
    """The ranking of `search_by_photo` from a query ``vector`` (None: words only) and
    ``text`` ("" : looks only), ``queryset`` already filtered."""
    timings = {} if timings is None else timings
    if not text:
        rows = visual_pool(queryset, vector, limit, colour=colour, field=field)
        for row in rows:
            row.matched_text, row.text_rank = None, None
        return rows
    pool = max(limit, int(reco_settings.TEXT_SEARCH["POOL"]))
    started = time.perf_counter()
    words = text_search.ranked(queryset, text, limit if vector is None else pool)
    timings["text"] = (time.perf_counter() - started) * 1000
    looks = [] if vector is None else visual_pool(queryset, vector, pool, colour=colour,
                                                  field=field)
    if vector is None:
        order = [pk for pk, _ in words]
    else:
        order = [pk for pk, _ in fuse([(row.pk, float(row.visual_score)) for row in looks],
                                      words, fusion())][:limit]
    found = {row.pk: row for row in looks}
    missing = [pk for pk in order if pk not in found]
    if missing:
        rest = queryset.filter(pk__in=missing)
        if queryset._fields is None:
            rest = rest.defer(*deferred_vectors(queryset.model))
        for row in rest:
            row.visual_score = None
            found[row.pk] = row
    ranks = dict(words)
    rows = [found[pk] for pk in order if pk in found]
    for row in rows:
        row.text_rank = ranks.get(row.pk)
        row.matched_text = row.text_rank is not None
    return rows
