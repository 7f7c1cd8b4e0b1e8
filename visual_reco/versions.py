"""Trained versions of an embedding field, as the learned ranking
(`visual_reco.feedback.learned`) and the photo adapter (`visual_reco.photo_adapter`) keep
them: what a training run did, and the version each process serves.

Each process loads the serving version of a field once and looks again every
``SERVING_TTL`` seconds; a version trained on another embedder's vectors (fingerprint) than
the field's live one (`visual_reco.rollout`) is never used. Both are looked up again
together, so for at most ``SERVING_TTL`` after `visual_reco.model_switch` switches the
embedder a version may serve on the new vectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from django.apps import apps
from django.db import models

from visual_reco.databases import read_database
from visual_reco.embedders import get_embedder
from visual_reco.models import LearnedVersion
from visual_reco.registry import get_embedding_field
from visual_reco.rollout import live_embedder

SERVING_TTL = 60.0


@dataclass
class TrainingResult:
    """What a training run did: the version it trained (or found), its held-back numbers
    and whether it serves; ``reason`` says why in words."""

    model: str
    field: str
    version: str | None = None
    serving: bool = False
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    trained: bool = False
    saved: bool = False
    seconds: float = 0.0


class Trained(Protocol):
    """What a loaded version carries: its version and the embedder it was trained on."""

    @property
    def version(self) -> str:
        """The version, as `LearnedVersion.version`."""

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the embedder whose vectors it was trained on."""


T = TypeVar("T", bound=Trained)


def current_fingerprint(row: LearnedVersion) -> str:
    """The fingerprint of the embedder whose vectors ``row``'s field holds now."""
    embedding = get_embedding_field(apps.get_model(row.model), row.field)
    return get_embedder(live_embedder(embedding)).fingerprint


class ServingVersions(Generic[T]):
    """The serving version of each field among the rows of ``table`` (a `LearnedVersion`),
    loaded by ``load`` once per process and looked up again every ``SERVING_TTL``."""

    def __init__(self, table: type[LearnedVersion], load: Callable[[Any], T]) -> None:
        self.table = table
        self.load = load
        self._cache: dict[tuple[str, str], tuple[float, T | None, str]] = {}

    def get(self, model: type[models.Model], field: str | None = None) -> T | None:
        """The version serving ``field`` of ``model``: None when none serves or when it was
        trained on vectors of another embedder than the one the field's column holds."""
        embedding = get_embedding_field(model, field)
        key = (model._meta.label_lower, embedding.name)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is None or cached[0] < now:
            rows = self.table._default_manager.db_manager(read_database(self.table))
            current = (rows.filter(model=key[0], field=key[1], serving=True)
                       .values_list("version", flat=True).first())
            loaded = cached[1] if cached else None
            if current is None:
                loaded = None
            elif loaded is None or loaded.version != current:
                row = rows.filter(version=current).first()
                loaded = self.load(row) if row is not None else None
            live = get_embedder(live_embedder(embedding, read_database(model))).fingerprint
            cached = self._cache[key] = (now + SERVING_TTL, loaded, live)
        found = cached[1]
        if found is None or found.fingerprint != cached[2]:
            return None
        return found

    def forget(self) -> None:
        """Look for the serving versions again on next use (after serving another one)."""
        self._cache.clear()

    def serve(self, row: LearnedVersion) -> None:
        """Make ``row`` the version that serves its field (the one before stops). Raises
        `ValueError` for a version trained on vectors of another embedder than the one the
        field's column holds."""
        current = current_fingerprint(row)
        if row.fingerprint != current:
            raise ValueError(f"{row.version} was trained on vectors of embedder "
                             f"{row.fingerprint}, not of the field's embedder {current}")
        row.make_serving()
        self.forget()

    def retire(self, row: LearnedVersion) -> None:
        """Stop serving ``row``: its field has no serving version."""
        row.make_serving(False)
        self.forget()
