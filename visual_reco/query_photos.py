"""Search photos to query vectors: the one path every photo search takes.

A customer's photo is read up to ``MAX_IMAGE_BYTES``, decoded by the embedder that made the
catalog's vectors (its EXIF rule), and embedded whole (one model pass), or with
``QUERY_MULTI_CROP`` as the mean of the whole photo and five crops; the aspects a search
blends (the colour vector) come from the photo's centre (``QUERY_ASPECT_CROP``), where the
product is, computed as a stored product's are. ``QUERY_EMBEDDING`` says where the model runs: in
this process, or in a Celery worker (task ``visual_reco.embed_query``, which runs
`embed_query_bytes`), so that web processes need no TensorFlow. Either way the upload is
checked here first, so a bad file never reaches a worker.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from django.core.exceptions import ImproperlyConfigured
from PIL import Image

from visual_reco import broker
from visual_reco.aspects import compute_aspects
from visual_reco.conf import reco_settings
from visual_reco.embedders import DEFAULT_EMBEDDER, get_embedder
from visual_reco.embedders.base import l2_normalise
from visual_reco.images import read_limited
from visual_reco.preprocessing import center_crop, multi_crops

EMBED_QUERY_TASK = "visual_reco.embed_query"
QUERY_EMBEDDING_MODES = ("process", "worker")


class SearchUnavailable(RuntimeError):
    """The query photo could not be embedded right now (no worker answered, broker down)."""


@dataclass(frozen=True)
class QueryVectors:
    """A search photo's vector and the aspect vectors asked for, by aspect name."""

    vector: np.ndarray
    aspects: dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Lists for a task result."""
        return {"vector": self.vector.tolist(),
                "aspects": {name: value.tolist() for name, value in self.aspects.items()}}

    @classmethod
    def from_json(cls, data: Any) -> QueryVectors:
        """From `to_json`, or from the bare vector list an older worker returns."""
        if isinstance(data, dict):
            return cls(np.asarray(data["vector"], dtype=np.float32),
                       {name: np.asarray(value, dtype=np.float32)
                        for name, value in data.get("aspects", {}).items()})
        return cls(np.asarray(data, dtype=np.float32))


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


def embed_query_images_with_aspects(images: Sequence[Image.Image], aspects: Sequence[str], *,
                                    embedder: str = DEFAULT_EMBEDDER,
                                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`embed_query_images`, and the ``aspects`` of each photo's centre (``QUERY_ASPECT_CROP``
    of each side; None: the whole photo) from the array the embedder prepares of it, as a
    stored product's (`{name: (len(images), dimensions)}`)."""
    vectors = embed_query_images(images, embedder=embedder)
    if not aspects:
        return vectors, {}
    model = get_embedder(embedder)
    fraction = reco_settings.QUERY_ASPECT_CROP
    centres = [center_crop(image, fraction) if fraction else image for image in images]
    return vectors, compute_aspects([model.prepare(image) for image in centres], aspects)


def embed_query_bytes(data: bytes, *, embedder: str = DEFAULT_EMBEDDER,
                      aspects: Sequence[str] = ()) -> QueryVectors:
    """Decode and embed one search photo in this process (what a worker runs), with its
    ``aspects``."""
    vectors, found = embed_query_images_with_aspects([decode_query(data, embedder)], aspects,
                                                     embedder=embedder)
    return QueryVectors(vectors[0], {name: rows[0] for name, rows in found.items()})


def decode_query(data: bytes, embedder: str = DEFAULT_EMBEDDER) -> Image.Image:
    """Decode a search photo as ``embedder`` does, within ``SEARCH_MAX_FULL_DECODE_PIXELS``."""
    return get_embedder(embedder).decode(
        io.BytesIO(data), full_decode_limits=reco_settings.SEARCH_MAX_FULL_DECODE_PIXELS)


def embed_query(file: IO[bytes], *, embedder: str = DEFAULT_EMBEDDER,
                aspects: Sequence[str] = ()) -> QueryVectors:
    """The query vector of an uploaded photo and its ``aspects``, embedded where
    ``QUERY_EMBEDDING`` says.

    Raises `visual_reco.images.ImageError` for a bad upload and `SearchUnavailable` when no
    worker answers within ``QUERY_TIMEOUT`` seconds.
    """
    mode = reco_settings.QUERY_EMBEDDING
    if mode not in QUERY_EMBEDDING_MODES:
        raise ImproperlyConfigured(
            f"VISUAL_RECO['QUERY_EMBEDDING'] must be one of {QUERY_EMBEDDING_MODES}, not {mode!r}")
    data = read_limited(file)
    if mode == "process":
        return embed_query_bytes(data, embedder=embedder, aspects=aspects)
    decode_query(data, embedder)
    try:
        # The aspects argument only when asked for: a worker of the previous release takes
        # two arguments and still serves plain searches during an upgrade.
        arguments = (base64.b64encode(data).decode(), embedder) + (
            (list(aspects),) if aspects else ())
        result = broker.call(EMBED_QUERY_TASK, arguments, reco_settings.QUERY_TIMEOUT,
                             **reco_settings.task_options("query"))
    except Exception as exc:  # broker down or frozen, no worker, no result backend
        raise SearchUnavailable(
            f"Photo search is unavailable right now ({type(exc).__name__}). Try again soon."
        ) from exc
    return QueryVectors.from_json(result)


def warm_up(embedder: str = DEFAULT_EMBEDDER) -> None:
    """Load the model and embed one blank photo, so that no customer waits for it.

    With ``QUERY_EMBEDDING = "process"`` the first search in a web process otherwise pays
    the model load (seconds); call this where web processes start, e.g. in gunicorn's
    ``post_worker_init`` hook. Does nothing with ``"worker"``.
    """
    if reco_settings.QUERY_EMBEDDING == "process":
        embed_query_images([Image.new("RGB", (320, 320), "white")], embedder=embedder)
