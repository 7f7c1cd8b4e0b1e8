"""Diversity: keep near-duplicates from filling a similar-products list, by maximal marginal
relevance (MMR; Carbonell & Goldstein, 1998) over the blended score.

Each pick is the candidate with the best ``lam * relevance - (1 - lam) * max similarity to
the candidates already picked``. Relevance is what the list is ranked by (the blend of
`visual_reco.modes`, or that plus feedback); the similarity between two candidates is the
same blend applied between them, so "near-duplicate" means what "similar" means. ``lam``
is ``VISUAL_RECO["DIVERSITY"]`` or a call's ``diversity=``: 1 is the relevance order, lower
trades relevance for variety. Numbers only; the queries fetch the vectors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from visual_reco.modes import SHAPE, Blend, Term, unit_rows

__all__ = ["blend_similarity", "diversity_for", "diversity_lambda", "mmr", "top"]

PLAIN = Blend((Term(SHAPE, 1.0),))


def diversity_lambda(value: Any, source: str = 'VISUAL_RECO["DIVERSITY"]') -> float | None:
    """``value`` as MMR's lambda: None (off) or a number in (0, 1]; `ValueError` naming
    ``source`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"{source} must be None (off) or a number in (0, 1] (1: the "
                         f"relevance order, lower: more variety); got {value!r}")
    return float(value)


def diversity_for(blend: Blend | None, lam: float | None) -> float | None:
    """The lambda to diversify a list ranked by ``blend`` with: None for a blend with
    ``variants_first``, whose variants are alike by design and asked for as such."""
    return None if blend is not None and blend.variants_first else lam


def top(relevance: np.ndarray, k: int, lam: float | None = None,
        similarity: np.ndarray | None = None) -> list[int]:
    """The indices of the ``k`` best candidates: by relevance (stable) when ``lam`` is None,
    else by `mmr` with the ``similarity`` matrix."""
    if lam is None or similarity is None:
        return [int(i) for i in np.argsort(-np.asarray(relevance), kind="stable")[:max(k, 0)]]
    return mmr(relevance, similarity, k, lam)


def mmr(relevance: np.ndarray, similarity: np.ndarray, k: int, lam: float) -> list[int]:
    """The indices of ``k`` candidates in MMR order (at most ``len(relevance)``).

    ``similarity`` is the candidates' ``(n, n)`` pairwise similarity (its diagonal unused).
    Ties go to the lower index, so with ``lam`` 1, or with candidates alike in nothing, the
    order is the stable relevance order. O(n * k).
    """
    relevance = np.asarray(relevance, dtype=np.float64)
    similarity = np.asarray(similarity, dtype=np.float64)
    count = len(relevance)
    k = max(0, min(int(k), count))
    gain = lam * relevance
    closest = np.full(count, -np.inf)  # each candidate's highest similarity to a pick
    available = np.ones(count, dtype=bool)
    chosen: list[int] = []
    for _ in range(k):
        penalty = (1.0 - lam) * closest if chosen else 0.0
        score = np.where(available, gain - penalty, -np.inf)
        pick = int(np.argmax(score))
        chosen.append(pick)
        available[pick] = False
        closest = np.maximum(closest, similarity[pick])
    return chosen


def blend_similarity(blend: Blend, vectors: Mapping[str, np.ndarray]) -> np.ndarray:
    """The ``(n, n)`` similarity of ``n`` candidates to each other under ``blend``
    (`Blend.combine`, as the query scores a row against its query), with ``vectors`` the
    candidates' ``(n, d)`` vectors of each aspect (NaN rows: the candidate lacks it). An
    aspect missing from ``vectors`` counts 0."""
    cosines = {}
    for aspect in blend.aspects:
        if aspect in vectors:
            # float32: the stored vectors are float16, and float64 costs several times
            # more here. einsum, not `@`: OpenBLAS hands this small product to its threads,
            # and on busy cores waiting for them cost 5 ms on average (p99 117 ms) against
            # 0.5 ms (p99 12).
            unit = unit_rows(vectors[aspect], np.float32)
            cosines[aspect] = np.einsum("id,jd->ij", unit, unit)
    total = blend.combine(cosines)
    if total is None:
        count = len(next(iter(vectors.values()))) if vectors else 0
        return np.zeros((count, count), dtype=np.float32)
    return total
