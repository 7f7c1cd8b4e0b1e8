"""The ranking learned from feedback, at serve time: numpy only (training, with TensorFlow, is
`visual_reco.feedback.learning`).

A learned version scores a candidate ``y`` for a source ``x`` (both unit vectors of the
field's frozen embeddings) as the cosine plus a low-rank symmetric correction::

    score(x, y) = x.y + ((xU).(yV) + (xV).(yU)) / 2

``V`` starts at zero, so an untrained model is the visual order exactly, and the correction
only moves what shoppers' clicks moved. Each process loads the serving version of a field
once and looks again every ``SERVING_TTL`` seconds; a version trained on another embedder's
vectors (fingerprint) is never used.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from django.db import models

from visual_reco.models import LearnedRanking
from visual_reco.query import binary_vector, from_binary, gallery_vectors
from visual_reco.registry import get_embedding_field, is_gallery
from visual_reco.versions import ServingVersions

# Read in chunks so a large catalogue never builds one huge IN list.
VECTOR_CHUNK = 2000


@dataclass(frozen=True)
class LearnedModel:
    """One learned version's weights: ``u`` and ``v`` are (dimensions, rank) float32."""

    version: str
    fingerprint: str
    u: np.ndarray
    v: np.ndarray

    def scores(self, source: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The score of each row of ``targets`` for ``source`` (see the module docstring)."""
        x = unit(np.asarray(source, dtype=np.float32)[None, :])[0]
        y = unit(np.asarray(targets, dtype=np.float32))
        xu, xv = x @ self.u, x @ self.v
        correction = 0.5 * ((y @ self.v) @ xu + (y @ self.u) @ xv)
        return (y @ x + correction).astype(np.float64)

    def to_bytes(self) -> bytes:
        """The weights as an ``.npz`` file's bytes (what `LearnedRanking.weights` stores)."""
        buffer = io.BytesIO()
        np.savez(buffer, u=self.u.astype(np.float32), v=self.v.astype(np.float32))
        return buffer.getvalue()

    @classmethod
    def from_row(cls, row: LearnedRanking) -> LearnedModel:
        """The model a `LearnedRanking` row stores."""
        with np.load(io.BytesIO(bytes(row.weights)), allow_pickle=False) as arrays:
            return cls(row.version, row.fingerprint, arrays["u"], arrays["v"])


def unit(rows: np.ndarray) -> np.ndarray:
    """``rows`` scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


# The serving version of each field, kept by this process.
SERVING = ServingVersions(LearnedRanking, LearnedModel.from_row)


def serving_model(model: type[models.Model], field: str | None = None) -> LearnedModel | None:
    """The learned version serving for ``field`` of ``model``, None when none does or when
    it was trained on vectors of another embedder than the one the field's column holds
    (`visual_reco.versions.ServingVersions`: looked up again every ``SERVING_TTL``
    seconds)."""
    return SERVING.get(model, field)


def forget_serving() -> None:
    """Look for the serving versions again on next use (after serving another one)."""
    SERVING.forget()


def stored_vectors(model: type[models.Model], field: str | None, pks: Sequence[object],
                   using: str | None = None) -> dict[str, np.ndarray]:
    """The stored vectors of ``pks`` (rows without one are left out), by primary key as
    text, read as ``halfvec`` binary: no text parsing of 2,048 numbers a row."""
    embedding = get_embedding_field(model, field)
    if is_gallery(embedding, model):
        return gallery_vectors(embedding, list(pks), using)
    found: dict[str, np.ndarray] = {}
    manager = model._base_manager.using(using) if using else model._base_manager
    for start in range(0, len(pks), VECTOR_CHUNK):
        rows = (manager.filter(pk__in=list(pks[start:start + VECTOR_CHUNK]),
                               **{f"{embedding.attname}__isnull": False})
                .annotate(_visual_reco_raw=binary_vector(embedding.attname))
                .values_list("pk", "_visual_reco_raw"))
        for pk, raw in rows:
            found[str(pk)] = from_binary(raw)
    return found


def learned_scores(learned: LearnedModel, obj: models.Model, pool: Sequence[models.Model],
                   field: str | None, fallback: np.ndarray) -> np.ndarray:
    """The learned scores of the ``pool`` rows for ``obj``, read with their vectors in one
    query (on the database the pool was read from); ``fallback`` (the visual scores) when a
    vector is missing."""
    using = pool[0]._state.db if pool else obj._state.db
    vectors = stored_vectors(type(obj), field, [obj.pk, *(row.pk for row in pool)],
                             using=using)
    source = vectors.get(str(obj.pk))
    if source is None or any(str(row.pk) not in vectors for row in pool):
        return fallback
    return learned.scores(source, np.stack([vectors[str(row.pk)] for row in pool]))
