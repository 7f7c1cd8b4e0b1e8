"""A visitor's taste from its recent events: the arithmetic, on numbers only
(`visual_reco.feedback.picks` reads the events and the vectors and serves the list).

An event weighs its type's weight (``PICKS["EVENT_WEIGHTS"]``: purchase > cart > click >
0 > impression), halved every ``HALF_LIFE_DAYS`` of age. A product's weight is the sum of
its events'; impressions count only for products the visitor did nothing else with (seen and
passed over: a weak negative). The taste vector is the weighted sum of those products' unit
vectors (the passed-over ones pull away a little), normalised; a category's affinity is its
products' summed weight over the total absolute weight, from -1 (only passed over) to 1
(everything the visitor liked is in it). The taste's colour is the same weighted sum of the
products' colour vectors (`visual_reco.colour`), when they have them; `colour_affinities`
scores candidates against it as a blend's colour term does (`colour_similarity`). On a
product page the page's product can be blended in (`in_context`): what the visitor looks at
now says more than last week's clicks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from visual_reco.choices import EventType
from visual_reco.colour import colour_similarity

# Below this norm the weighted sum is noise (likes and passes that cancel out).
MIN_TASTE_NORM = 1e-6


@dataclass(frozen=True)
class Taste:
    """Where a visitor's taste points in the embedding space (None: nowhere yet), its
    affinity for each category, and where it points among colour vectors (None: no colour
    read, or none liked)."""

    vector: np.ndarray | None
    affinities: dict[str, float] = field(default_factory=dict)
    colour: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        """Whether there is no taste to rank by (no product the visitor liked)."""
        return self.vector is None


def decay(age_days: float, half_life_days: float) -> float:
    """The share of its weight an event keeps at ``age_days`` (1 now, 0.5 after a half-life;
    a timestamp slightly ahead of the server's clock counts as now)."""
    return float(0.5 ** (max(age_days, 0.0) / max(half_life_days, 1e-9)))


def product_weights(events: Iterable[tuple[str, str, float]], weights: Mapping[str, float],
                    half_life_days: float) -> dict[str, float]:
    """What ``events`` (type, product, age in days) say about each product, decayed by age;
    a product's impressions count only when the visitor did nothing else with it."""
    events = list(events)
    engaged = {product for kind, product, _ in events if kind != EventType.IMPRESSION}
    totals: dict[str, float] = {}
    for kind, product, age in events:
        if kind == EventType.IMPRESSION and product in engaged:
            continue
        weight = float(weights.get(kind, 0.0)) * decay(age, half_life_days)
        totals[product] = totals.get(product, 0.0) + weight
    return totals


def strongest(weights: Mapping[str, float], count: int) -> list[str]:
    """The ``count`` products whose weights say the most (largest absolute weight first)."""
    ranked = sorted(weights, key=lambda product: (-abs(weights[product]), product))
    return [product for product in ranked[:count] if weights[product] != 0]


def _direction(weights: Mapping[str, float],
               vectors: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The normalised weighted sum of the unit ``vectors`` of the weighted products (None
    when no product with a vector has a positive weight, or the sum cancels out)."""
    known = [product for product in weights if product in vectors and weights[product] != 0]
    if not any(weights[product] > 0 for product in known):
        return None
    matrix = np.stack([np.asarray(vectors[product], dtype=np.float64) for product in known])
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix = matrix / np.where(norms > 0, norms, 1.0)
    vector = np.array([weights[product] for product in known]) @ matrix
    norm = float(np.linalg.norm(vector))
    if norm < MIN_TASTE_NORM:
        return None
    return (vector / norm).astype(np.float32)


def taste_of(weights: Mapping[str, float], vectors: Mapping[str, np.ndarray],
             categories: Mapping[str, str],
             colours: Mapping[str, np.ndarray] | None = None) -> Taste:
    """The taste of a visitor whose products weigh ``weights``, from their ``vectors``,
    ``categories`` and ``colours`` (a product missing from one does not count there; no
    ``colours``: no colour). Its vector (colour) is None when no product with a vector
    (colour vector) has a positive weight."""
    affinities: dict[str, float] = {}
    for product, category in categories.items():
        if product in weights:
            affinities[category] = affinities.get(category, 0.0) + weights[product]
    total = sum(abs(weights[product]) for product in categories if product in weights)
    if total > 0:
        affinities = {category: value / total for category, value in affinities.items()}
    colour = _direction(weights, colours) if colours else None
    return Taste(_direction(weights, vectors), affinities, colour)


def _blend(taste: np.ndarray, page: np.ndarray | None, weight: float) -> np.ndarray:
    """The normalised ``(1 - weight) x taste + weight x page`` (``taste`` when there is no
    page vector or the blend cancels out)."""
    if page is None:
        return taste
    page = np.asarray(page, dtype=np.float64)
    norm = float(np.linalg.norm(page))
    if norm == 0:
        return taste
    blend = (1.0 - weight) * taste.astype(np.float64) + weight * page / norm
    blend_norm = float(np.linalg.norm(blend))
    if blend_norm < MIN_TASTE_NORM:
        return taste
    return (blend / blend_norm).astype(np.float32)


def in_context(taste: Taste, page_vector: np.ndarray | None, weight: float,
               page_colour: np.ndarray | None = None) -> Taste:
    """``taste`` pulled towards the page's product: the normalised blend ``(1 - weight) x
    taste + weight x page`` of the vectors, and of the colours with ``page_colour`` (the
    taste unchanged without a page vector or a taste, or with ``weight`` 0)."""
    if taste.vector is None or page_vector is None or weight <= 0:
        return taste
    weight = min(float(weight), 1.0)
    vector = _blend(taste.vector, page_vector, weight)
    if vector is taste.vector:
        return taste
    colour = taste.colour if taste.colour is None else _blend(taste.colour, page_colour, weight)
    return Taste(vector, taste.affinities, colour)


def colour_affinities(taste: Taste, colours: Sequence[np.ndarray | None]) -> np.ndarray:
    """How well each candidate's colour vector matches the taste's colour: their
    `colour_similarity` (0 to 1, the modes' colour term), 0 for a candidate without a
    colour vector, and all 0 when the taste has no colour."""
    found = np.zeros(len(colours))
    known = [index for index, vector in enumerate(colours) if vector is not None]
    if taste.colour is None or not known:
        return found
    found[known] = colour_similarity(taste.colour, np.stack([colours[i] for i in known]))
    return found
