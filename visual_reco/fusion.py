"""Fusing two rankings of products, by looks and by words, into one (pure Python).

``rrf``: reciprocal rank fusion, each list adding ``1 / (k + rank)`` (rank 1 the best) for
the products it holds. ``blend``: each list's scores min-max normalised to [0, 1] over the
products it holds (0 for a product it lacks), ``(1 - w) * looks + w * words``. Both were
compared on the tune halves of demo_shop/bench/text_fusion.py (docs/QUALITY.md).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

RRF = "rrf"
BLEND = "blend"
METHODS = (RRF, BLEND)


@dataclass(frozen=True)
class Fusion:
    """How two rankings are fused: ``method`` (`RRF` or `BLEND`) and its parameter, ``k``
    for RRF, the words' ``text_weight`` for a blend."""

    method: str = RRF
    k: float = 60.0
    text_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Unknown fusion {self.method!r}; use one of {', '.join(METHODS)}.")
        if self.method == RRF and self.k < 0:
            raise ValueError("RRF_K must be at least 0.")
        if self.method == BLEND and not 0.0 <= self.text_weight <= 1.0:
            raise ValueError("TEXT_WEIGHT must be between 0 and 1.")


Ranking = Sequence[tuple[Hashable, float]]


def _normalised(ranking: Ranking) -> dict[Hashable, float]:
    """``ranking``'s scores scaled to [0, 1] (all 1 when they are equal)."""
    if not ranking:
        return {}
    scores = [score for _, score in ranking]
    low, high = min(scores), max(scores)
    span = high - low
    return {key: (score - low) / span if span > 0 else 1.0 for key, score in ranking}


def fused_scores(visual: Ranking, text: Ranking, fusion: Fusion) -> dict[Hashable, float]:
    """The fused score of every product in either ranking (each ``(key, score)``, best
    first)."""
    if fusion.method == RRF:
        scores: dict[Hashable, float] = {}
        for ranking in (visual, text):
            for rank, (key, _) in enumerate(ranking, start=1):
                scores[key] = scores.get(key, 0.0) + 1.0 / (fusion.k + rank)
        return scores
    looks, words = _normalised(visual), _normalised(text)
    weight = fusion.text_weight
    return {key: (1.0 - weight) * looks.get(key, 0.0) + weight * words.get(key, 0.0)
            for key in {**looks, **words}}


def fuse(visual: Ranking, text: Ranking, fusion: Fusion) -> list[tuple[Hashable, float]]:
    """Both rankings as one, best first, with the fused scores; ties keep the visual order,
    then the text order."""
    scores = fused_scores(visual, text, fusion)
    first: dict[Hashable, int] = {}
    for position, (key, _) in enumerate([*visual, *text]):
        first.setdefault(key, position)
    return sorted(scores.items(), key=lambda item: (-item[1], first[item[0]]))
