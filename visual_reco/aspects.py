"""Aspects: small vectors stored beside an embedding, computed from the same prepared image.

An aspect is a function of the square uint8 array an embedder feeds its model (what
`visual_reco.embedders.base.Embedder.prepare` returns, before any model-specific scaling), so
a worker computes it from the image it has already decoded and resized. Each has a name (the
suffix of its column, ``<field>_<name>``), a size and a version that is part of the field's
fingerprint: changing an aspect's output means bumping its version, which makes the rows
computed before stale.

- ``colour``: `visual_reco.colour.colour_vector`, the foreground's colour histogram.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from visual_reco import colour

__all__ = ["ASPECTS", "Aspect", "compute_aspects", "get_aspect", "signature"]


@dataclass(frozen=True)
class Aspect:
    """One kind of aspect vector: ``compute`` maps a prepared HxWx3 uint8 image to a float32
    vector of ``dimensions`` values; ``version`` names its current output; ``sharpness`` is
    its default exponent in a blend."""

    name: str
    dimensions: int
    compute: Callable[[np.ndarray], np.ndarray]
    version: str
    # The exponent of its clipped cosine in a blend when a spec gives only a weight
    # (`visual_reco.modes`).
    sharpness: float = 1.0


ASPECTS: dict[str, Aspect] = {
    "colour": Aspect("colour", colour.DIMENSIONS, colour.colour_vector, str(colour.VERSION),
                     colour.SHARPNESS),
}


def get_aspect(name: str) -> Aspect:
    """The aspect called ``name``; `ValueError` naming the known ones otherwise."""
    try:
        return ASPECTS[name]
    except KeyError:
        raise ValueError(f"Unknown aspect {name!r}; known: {sorted(ASPECTS)}") from None


def signature(names: Iterable[str]) -> str:
    """What the aspects ``names`` add to an embedder's fingerprint, e.g. ``"+colour.1"``
    (empty for none; the same whatever their order)."""
    return "".join(f"+{name}.{get_aspect(name).version}" for name in sorted(set(names)))


def compute_aspects(prepared: Sequence[np.ndarray] | np.ndarray,
                    names: Iterable[str]) -> dict[str, np.ndarray]:
    """The aspects ``names`` of each prepared image: ``{name: (len(prepared), dimensions)}``
    float32 arrays, rows in the order of ``prepared``."""
    found = {}
    for name in names:
        aspect = get_aspect(name)
        rows = [np.asarray(aspect.compute(image), dtype=np.float32) for image in prepared]
        found[name] = (np.stack(rows) if rows
                       else np.zeros((0, aspect.dimensions), dtype=np.float32))
    return found
