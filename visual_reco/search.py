"""Search by photo: embed the customer's photo, predict its category, rank the catalog."""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from django.db import models
from PIL import Image

from visual_reco.categories import CategoryPrediction, category_field, predict_category
from visual_reco.conf import reco_settings
from visual_reco.embedders import get_embedder
from visual_reco.embedders.base import l2_normalise
from visual_reco.images import open_image, read_limited
from visual_reco.preprocessing import multi_crops
from visual_reco.query import visual


class SearchUnavailable(RuntimeError):
    """The query photo could not be embedded right now (no worker answered, broker down)."""


@dataclass
class PhotoSearch:
    """The outcome of a photo search."""

    results: list[models.Model]
    category: CategoryPrediction | None
    timings_ms: dict[str, float] = field(default_factory=dict)


def embed_query_images(images: list[Image.Image]) -> np.ndarray:
    """Embed search photos: with ``QUERY_MULTI_CROP`` set, each is the normalised mean of the
    whole photo and five crops (see `visual_reco.preprocessing.multi_crops`)."""
    embedder = get_embedder()
    fraction = reco_settings.QUERY_MULTI_CROP
    if not fraction:
        return embedder.embed(images)
    views = 6
    vectors = embedder.embed([crop for image in images for crop in multi_crops(image, fraction)])
    return l2_normalise(vectors.reshape(len(images), views, -1).mean(axis=1))


def warm_up() -> None:
    """Load the model and embed one blank photo, so that no customer waits for it.

    With ``QUERY_EMBEDDING = "process"`` the first search in a web process otherwise pays
    the model load (seconds); call this where web processes start, e.g. in gunicorn's
    ``post_worker_init`` hook. Does nothing with ``"worker"``.
    """
    if reco_settings.QUERY_EMBEDDING == "process":
        embed_query_images([Image.new("RGB", (320, 320), "white")])


def embed_query(file: IO[bytes]) -> np.ndarray:
    """Embed an uploaded photo where ``QUERY_EMBEDDING`` says.

    Raises `visual_reco.images.ImageError` for a bad upload (checked in this process in
    both modes, so a bad file never reaches a worker) and `SearchUnavailable` when a worker
    does not answer within ``QUERY_TIMEOUT`` seconds.
    """
    data = read_limited(file)
    image = open_image(io.BytesIO(data))
    if reco_settings.QUERY_EMBEDDING == "process":
        return embed_query_images([image])[0]
    if reco_settings.QUERY_EMBEDDING != "worker":
        raise ValueError("QUERY_EMBEDDING must be 'process' or 'worker'")
    from visual_reco.tasks import embed_query_task

    try:
        result = embed_query_task.apply_async(
            args=(base64.b64encode(data).decode(),), retry=False, ignore_result=False,
            expires=reco_settings.QUERY_TIMEOUT)
        vector = result.get(timeout=reco_settings.QUERY_TIMEOUT)
    except Exception as exc:  # broker down, no worker, no result backend
        raise SearchUnavailable(
            f"Photo search is unavailable right now ({type(exc).__name__}). Try again soon."
        ) from exc
    return np.asarray(vector, dtype=np.float32)


def search_by_photo(file: IO[bytes], queryset: models.QuerySet, *, limit: int | None = None,
                    filter_by_predicted_category: bool = False,
                    filters: dict[str, Any] | None = None) -> PhotoSearch:
    """The products of ``queryset`` that look most like the photo in ``file``."""
    started = time.perf_counter()
    vector = embed_query(file)
    embedded = time.perf_counter()
    queryset = queryset.filter(**(filters or {}))
    prediction = predict_category(vector, queryset)
    predicted = time.perf_counter()
    name = category_field(queryset.model)
    if filter_by_predicted_category and prediction and prediction.category and name:
        queryset = queryset.filter(**{name: prediction.category})
    results = list(visual(queryset).similar_to_vector(vector, limit))
    done = time.perf_counter()
    return PhotoSearch(results, prediction, {
        "embed": (embedded - started) * 1000, "category": (predicted - embedded) * 1000,
        "rank": (done - predicted) * 1000, "total": (done - started) * 1000})
