"""Search by photo: embed the customer's photo, predict its category, rank the catalog."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from django.db import models

from visual_reco.categories import CategoryPrediction, category_field, vote
from visual_reco.classifier import load_classifier
from visual_reco.conf import reco_settings
from visual_reco.modes import blend_for
from visual_reco.query import DISTANCE, photo_aspects, visual
from visual_reco.query_photos import embed_query
from visual_reco.registry import get_embedding_field


@dataclass
class PhotoSearch:
    """The outcome of a photo search."""

    results: list[models.Model]
    category: CategoryPrediction | None
    timings_ms: dict[str, float] = field(default_factory=dict)


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


def search_by_photo(file: IO[bytes], queryset: models.QuerySet, *, limit: int | None = None,
                    filter_by_predicted_category: bool = False,
                    filters: dict[str, Any] | None = None,
                    field: str | None = None) -> PhotoSearch:
    """The products of ``queryset`` that look most like the photo in ``file``, compared on
    the embedding ``field`` (default: the model's first) by ``SEARCH_MODE`` (the category
    is predicted from the CNN vector alone)."""
    embedding = get_embedding_field(queryset.model, field)
    blend = blend_for(reco_settings.SEARCH_MODE)
    started = time.perf_counter()
    query = embed_query(file, embedder=embedding.embedder,
                        aspects=photo_aspects(blend, embedding))
    vector = query.vector
    embedded = time.perf_counter()
    queryset = queryset.filter(**(filters or {}))
    prediction = predict_category(vector, queryset, field=embedding.name)
    predicted = time.perf_counter()
    name = category_field(queryset.model)
    if filter_by_predicted_category and prediction and prediction.category and name:
        queryset = queryset.filter(**{name: prediction.category})
    results = list(visual(queryset).similar_to_vector(vector, limit, field=embedding.name,
                                                      aspects=blend,
                                                      colour=query.aspects.get("colour")))
    done = time.perf_counter()
    return PhotoSearch(results, prediction, {
        "embed": (embedded - started) * 1000, "category": (predicted - embedded) * 1000,
        "rank": (done - predicted) * 1000, "total": (done - started) * 1000})
