"""Search photos to query vectors: the one path every photo search takes.

A customer's photo is read up to ``MAX_IMAGE_BYTES``, decoded by the embedder that made the
catalog's vectors (its EXIF rule), and embedded with ``QUERY_MULTI_CROP``: the mean of the
whole photo and five crops. ``QUERY_EMBEDDING`` says where the model runs: in this process,
or in a Celery worker (task ``visual_reco.embed_query``, which runs `embed_query_bytes`), so
that web processes need no TensorFlow. Either way the upload is checked here first, so a bad
file never reaches a worker.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import IO

import numpy as np
from django.core.exceptions import ImproperlyConfigured
from PIL import Image

from visual_reco import broker
from visual_reco.conf import reco_settings
from visual_reco.embedders import DEFAULT_EMBEDDER, get_embedder
from visual_reco.embedders.base import l2_normalise
from visual_reco.images import read_limited
from visual_reco.preprocessing import multi_crops

EMBED_QUERY_TASK = "visual_reco.embed_query"
QUERY_EMBEDDING_MODES = ("process", "worker")


class SearchUnavailable(RuntimeError):
    """The query photo could not be embedded right now (no worker answered, broker down)."""


def embed_query_images(images: Sequence[Image.Image], *,
                       embedder: str = DEFAULT_EMBEDDER) -> np.ndarray:
    """Embed decoded search photos in this process: with ``QUERY_MULTI_CROP`` set, each is
    the normalised mean of the whole photo and five crops (`preprocessing.multi_crops`)."""
    model = get_embedder(embedder)
    fraction = reco_settings.QUERY_MULTI_CROP
    if not fraction:
        return model.embed(list(images))
    views = [multi_crops(image, fraction) for image in images]
    vectors = model.embed([view for group in views for view in group])
    return l2_normalise(vectors.reshape(len(images), len(views[0]), -1).mean(axis=1))


def embed_query_bytes(data: bytes, *, embedder: str = DEFAULT_EMBEDDER) -> np.ndarray:
    """Decode and embed one search photo in this process (what a worker runs)."""
    return embed_query_images([decode_query(data, embedder)], embedder=embedder)[0]


def decode_query(data: bytes, embedder: str = DEFAULT_EMBEDDER) -> Image.Image:
    """Decode a search photo as ``embedder`` does, within ``SEARCH_MAX_FULL_DECODE_PIXELS``."""
    return get_embedder(embedder).decode(
        io.BytesIO(data), full_decode_limits=reco_settings.SEARCH_MAX_FULL_DECODE_PIXELS)


def embed_query(file: IO[bytes], *, embedder: str = DEFAULT_EMBEDDER) -> np.ndarray:
    """The query vector of an uploaded photo, embedded where ``QUERY_EMBEDDING`` says.

    Raises `visual_reco.images.ImageError` for a bad upload and `SearchUnavailable` when no
    worker answers within ``QUERY_TIMEOUT`` seconds.
    """
    mode = reco_settings.QUERY_EMBEDDING
    if mode not in QUERY_EMBEDDING_MODES:
        raise ImproperlyConfigured(
            f"VISUAL_RECO['QUERY_EMBEDDING'] must be one of {QUERY_EMBEDDING_MODES}, not {mode!r}")
    data = read_limited(file)
    if mode == "process":
        return embed_query_bytes(data, embedder=embedder)
    decode_query(data, embedder)
    try:
        vector = broker.call(EMBED_QUERY_TASK, (base64.b64encode(data).decode(), embedder),
                             reco_settings.QUERY_TIMEOUT, **reco_settings.task_options)
    except Exception as exc:  # broker down or frozen, no worker, no result backend
        raise SearchUnavailable(
            f"Photo search is unavailable right now ({type(exc).__name__}). Try again soon."
        ) from exc
    return np.asarray(vector, dtype=np.float32)


def warm_up(embedder: str = DEFAULT_EMBEDDER) -> None:
    """Load the model and embed one blank photo, so that no customer waits for it.

    With ``QUERY_EMBEDDING = "process"`` the first search in a web process otherwise pays
    the model load (seconds); call this where web processes start, e.g. in gunicorn's
    ``post_worker_init`` hook. Does nothing with ``"worker"``.
    """
    if reco_settings.QUERY_EMBEDDING == "process":
        embed_query_images([Image.new("RGB", (320, 320), "white")], embedder=embedder)
