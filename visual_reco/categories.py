"""Categories: the prediction a photo search returns, and the one nearest-neighbour vote
that makes it (the evaluation's kNN accuracy measures this same vote).

Pure functions of similarities and labels: no database, no model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from django.db import models

from visual_reco.conf import reco_settings


@dataclass
class CategoryPrediction:
    """The predicted category, its confidence (0-1) and how it was obtained."""

    category: str | None
    confidence: float
    method: str
    scores: dict[str, float] = field(default_factory=dict)


def vote(neighbours: Iterable[tuple[str | None, float]],
         temperature: float | None = None) -> CategoryPrediction:
    """Softmax-weighted vote of ``(category, similarity)`` pairs, nearest first; empty
    categories abstain, and a tie goes to the category of the nearest tied neighbour."""
    temperature = reco_settings.CATEGORY_TEMPERATURE if temperature is None else temperature
    pairs = [(c, s) for c, s in neighbours if c]
    if not pairs:
        return CategoryPrediction(None, 0.0, "knn")
    similarities = np.array([s for _, s in pairs], dtype=np.float64)
    weights = np.exp((similarities - similarities.max()) / temperature)
    scores: dict[str, float] = {}
    nearest: dict[str, int] = {}
    for rank, ((category, _), weight) in enumerate(zip(pairs, weights, strict=True)):
        scores[category] = scores.get(category, 0.0) + float(weight)
        nearest.setdefault(category, rank)
    total = sum(scores.values())
    order = sorted(scores, key=lambda c: (-scores[c], nearest[c]))
    scores = {c: scores[c] / total for c in order}
    best = next(iter(scores))
    return CategoryPrediction(best, scores[best], "knn", scores)


def category_field(model: type[models.Model]) -> str | None:
    """The configured category field if ``model`` has it."""
    name = reco_settings.CATEGORY_FIELD
    if name and any(f.name == name for f in model._meta.fields):
        return name
    return None
