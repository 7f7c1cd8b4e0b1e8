"""Re-ranking a visual candidate pool with shopper feedback: the arithmetic, on numbers only
(the queries that fetch candidates and aggregates call it).

A candidate's score is its visual similarity plus what shoppers said about it::

    score = visual + CTR_WEIGHT * ln(ctr / prior.ctr)
                   + CONVERSION_WEIGHT * ln(conv / prior.conversion)

``ctr`` is the click rate of the (source, target) pair, position-debiased (clicks over the
views shoppers actually gave, impressions weighted by how often each position is looked at)
and smoothed twice: the pair's rate is shrunk towards the target's overall rate, which is
shrunk towards the surface's mean, each by ``prior.strength`` pseudo-views. So one click out
of two views barely moves a product, and a product nobody has seen scores exactly its visual
similarity: with no feedback at all the order is the visual order. ``conv`` is conversions
(carts and purchases) per click, smoothed the same way.

Exploration: a bounded share of the slots goes to Thompson samples of the candidates'
rates, so products with few views get seen; never when there is no feedback yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from visual_reco.diversity import top

CTR_WEIGHT = 0.1
CONVERSION_WEIGHT = 0.05
MIN_EXAMINATION = 0.1
MAX_RATE = 0.99
# The least sampled click rate: a Beta draw can come out as exactly 0 in floating point (a
# tiny alpha), whose log is -inf; this keeps it last among the draws, and finite.
MIN_SAMPLED_RATE = np.finfo(np.float64).tiny


@dataclass(frozen=True)
class Evidence:
    """What shoppers did with one candidate: views (examination-weighted impressions, see
    `debiased_views`), clicks and conversions, for the pair (this source, this target) and
    for the target on every source."""

    pair_views: float = 0.0
    pair_clicks: float = 0.0
    target_views: float = 0.0
    target_clicks: float = 0.0
    target_conversions: float = 0.0

    @property
    def empty(self) -> bool:
        """Whether nobody has seen this candidate yet."""
        return self.pair_views == 0 and self.target_views == 0


@dataclass(frozen=True)
class Prior:
    """The surface's mean debiased click rate and conversions per click, and how many views
    (clicks, for conversions) a rate of its own must have to weigh as much as the mean."""

    ctr: float
    conversion: float
    strength: float = 50.0


def examination(impressions: Sequence[float], clicks: Sequence[float]) -> np.ndarray:
    """How often each position is looked at, relative to the first (index 0 = position 1):
    each position's click rate over the first's, shrunk towards the overall rate where data
    are thin, made non-increasing and kept above `MIN_EXAMINATION`.

    Items lower in a ranked list are also less relevant, so this overstates the fall-off a
    little; the exploration slots, which move items between positions, are what lets a later
    estimate separate the two.
    """
    shown = np.asarray(impressions, dtype=np.float64)
    clicked = np.asarray(clicks, dtype=np.float64)
    if shown.size == 0 or shown.sum() == 0:
        return np.ones(shown.size)
    overall = (clicked.sum() + 1.0) / (shown.sum() + 2.0)
    rates = (clicked + overall * 20.0) / (shown + 20.0)
    relative = np.clip(rates / rates[0], MIN_EXAMINATION, 1.0)
    return np.minimum.accumulate(relative)


def debiased_views(impressions_by_position: dict[int, float], propensity: np.ndarray) -> float:
    """Impressions at each (1-based) position weighted by how often that position is looked
    at: clicks over this is the click rate an item would have at the first position."""
    last = len(propensity)
    return float(sum(count * propensity[min(position, last) - 1]
                     for position, count in impressions_by_position.items() if position >= 1))


def smoothed(successes: float, trials: float, mean: float, strength: float) -> float:
    """The Beta-posterior mean of a rate: ``successes`` in ``trials`` with ``strength``
    pseudo-trials at ``mean``."""
    return (successes + mean * strength) / (trials + strength)


def feedback_terms(evidence: Sequence[Evidence], prior: Prior, *,
                   ctr_weight: float = CTR_WEIGHT,
                   conversion_weight: float = CONVERSION_WEIGHT) -> np.ndarray:
    """What feedback adds to each candidate's visual score (0 for one nobody has seen)."""
    terms = np.zeros(len(evidence))
    for index, seen in enumerate(evidence):
        if seen.empty:
            continue
        target = smoothed(seen.target_clicks, seen.target_views, prior.ctr, prior.strength)
        pair = smoothed(seen.pair_clicks, seen.pair_views, target, prior.strength)
        conversion = smoothed(seen.target_conversions, seen.target_clicks, prior.conversion,
                              prior.strength)
        terms[index] = (ctr_weight * np.log(pair / prior.ctr)
                        + conversion_weight * np.log(conversion / prior.conversion))
    return terms


def rerank(visual: Sequence[float], evidence: Sequence[Evidence], prior: Prior, limit: int,
           *, explore_share: float = 0.0, rng: np.random.Generator | None = None,
           ctr_weight: float = CTR_WEIGHT, conversion_weight: float = CONVERSION_WEIGHT,
           terms: np.ndarray | None = None, diversity: float | None = None,
           similarity: np.ndarray | None = None) -> list[int]:
    """The candidates to show, best first, as indices into ``visual``/``evidence``.

    Without any feedback the visual order, exactly (ties keep the candidates' order). With
    ``explore_share``, at most ``floor(share * limit)`` of the last slots go to the
    candidates below the cut whose sampled click rate scores best (Thompson sampling).
    ``terms`` are the `feedback_terms`, when the caller has them already.

    With ``diversity`` (MMR's lambda) and the candidates' ``similarity`` matrix, the slots
    not explored are filled by maximal marginal relevance over the scores with feedback
    (`visual_reco.diversity`): feedback decides relevance, MMR the variety; the explored
    slots are drawn from the rest as without it.
    """
    visual = np.asarray(visual, dtype=np.float64)
    if all(seen.empty for seen in evidence):
        return top(visual, limit, diversity, similarity)
    if terms is None:
        terms = feedback_terms(evidence, prior, ctr_weight=ctr_weight,
                               conversion_weight=conversion_weight)
    scores = visual + terms
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    slots = int(np.floor(explore_share * limit))
    if slots <= 0 or len(order) <= limit:
        return top(scores, limit, diversity, similarity)
    kept = top(scores, limit - slots, diversity, similarity)
    picked = set(kept)
    rest = [index for index in order if index not in picked]
    rng = rng or np.random.default_rng()
    sampled = []
    for index in rest:
        seen = evidence[index]
        # Clicks per examined view can pass 1 (clicks at rarely examined positions): a
        # Beta needs a rate below 1.
        target = min(smoothed(seen.target_clicks, seen.target_views, prior.ctr,
                              prior.strength), MAX_RATE)
        alpha = max(seen.pair_clicks, 0.0) + target * prior.strength
        beta = max(seen.pair_views - seen.pair_clicks, 0.0) + (1 - target) * prior.strength
        draw = max(rng.beta(alpha, beta), MIN_SAMPLED_RATE)
        sampled.append(visual[index] + ctr_weight * np.log(draw / prior.ctr))
    chosen = [rest[i] for i in np.argsort(-np.asarray(sampled), kind="stable")[:slots]]
    return kept + chosen
