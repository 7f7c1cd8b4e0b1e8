"""Similar in what way: blends of an embedding's aspects, and the named modes that hold them.

A blend scores a row ``sum(weight * term)`` over its aspects, ``"shape"`` being the
embedding itself (the CNN vector) and the others the field's aspects (``"colour"``). A term
is the cosine similarity to the query's vector of that aspect, with a sharpness other than
1 clipped at 0 and raised to it (`visual_reco.colour.colour_similarity`), and 0 for a row
without that vector. A bare number in a spec is a weight with the aspect's own sharpness
(shape 1, colour `visual_reco.colour.SHARPNESS`); ``{"weight": w, "sharpness": s}`` sets
both. Modes (``VISUAL_RECO["ASPECT_MODES"]``) are named specs, with ``"variants_first"``
to put the rows of the query's variant (``VARIANT_FIELD``) first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from visual_reco.aspects import get_aspect
from visual_reco.conf import reco_settings

SHAPE = "shape"
# Keys of a mode that are not aspects.
VARIANTS_FIRST = "variants_first"

__all__ = ["SHAPE", "Blend", "Term", "UnknownMode", "blend_for", "mode_blend", "parse_blend"]


class UnknownMode(ValueError):
    """A mode that ``ASPECT_MODES`` does not define."""


@dataclass(frozen=True)
class Term:
    """One aspect of a blend: its ``weight`` and the ``sharpness`` its cosine is raised to."""

    aspect: str
    weight: float
    sharpness: float = 1.0


@dataclass(frozen=True)
class Blend:
    """How rows are scored: the ``terms`` (shape first), and whether the rows sharing the
    query's ``VARIANT_FIELD`` value come first."""

    terms: tuple[Term, ...]
    variants_first: bool = False

    @property
    def aspects(self) -> tuple[str, ...]:
        """The aspects scored, in order."""
        return tuple(term.aspect for term in self.terms)

    @property
    def plain(self) -> bool:
        """Whether this is the plain cosine of the embedding (today's query, no blend)."""
        return (not self.variants_first and len(self.terms) == 1
                and self.terms[0] == Term(SHAPE, self.terms[0].weight, 1.0)
                and self.terms[0].weight > 0)

    @property
    def lead_aspect(self) -> str:
        """The aspect that weighs most: the heaviest (positive) weight, the first listed on
        a tie."""
        return max(self.terms, key=lambda term: term.weight).aspect

    @property
    def candidate_aspects(self) -> tuple[str, ...]:
        """The aspects whose indexes find the candidates: every one with a positive weight
        (a row least like the query in a negative one is no reason to consider it)."""
        return tuple(term.aspect for term in self.terms if term.weight > 0)

    def without(self, missing: set[str]) -> Blend:
        """This blend without the aspects in ``missing`` (a field that lacks them)."""
        return Blend(tuple(t for t in self.terms if t.aspect not in missing),
                     self.variants_first)

    def key(self) -> str:
        """A stable text of the blend, for cache keys."""
        terms = ",".join(f"{t.aspect}:{t.weight!r}^{t.sharpness!r}" for t in self.terms)
        return f"{terms}{'|variants' if self.variants_first else ''}"

    def combine(self, cosines: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """``sum(weight * term)`` over the terms whose aspect has a matrix in ``cosines``
        (term: the cosine, or ``max(cos, 0) ** sharpness``), as the query scores a row: the
        one numpy form of a blend, for `scores` and for the similarity between candidates
        (`visual_reco.diversity`). None when no term has one."""
        total: np.ndarray | None = None
        for term in self.terms:
            if term.aspect not in cosines:
                continue
            cosine = cosines[term.aspect]
            if term.sharpness != 1.0:
                cosine = np.maximum(cosine, 0.0) ** term.sharpness
            part = term.weight * cosine
            total = part if total is None else total + part
        return total

    def scores(self, queries: Mapping[str, np.ndarray], gallery: Mapping[str, np.ndarray], *,
               candidates: int | None = None, exclude: np.ndarray | None = None,
               same_variant: np.ndarray | None = None) -> np.ndarray:
        """The (queries x gallery) scores of this blend, in numpy, ranking as the SQL of
        `visual_reco.query` does: ``queries`` and ``gallery`` map each aspect to a matrix
        of vectors, one row per image (a zero or NaN row: no vector, its terms count 0).

        With ``candidates``, only the rows among each query's that many nearest gallery rows
        by any of the `candidate_aspects` (the ``ASPECT_CANDIDATES`` per aspect the query
        re-scores) keep a score, the others get -inf; ``exclude`` (boolean, like the
        result) rows are never candidates (-inf). With `variants_first`, the
        ``same_variant`` (boolean) rows are candidates too and rank above all others.
        """
        cosines = {aspect: unit_rows(queries[aspect]) @ unit_rows(gallery[aspect]).T
                   for aspect in self.aspects}
        total = self.combine(cosines)
        barred = np.zeros(total.shape, dtype=bool) if exclude is None else np.asarray(exclude)
        first = (np.zeros(total.shape, dtype=bool)
                 if same_variant is None or not self.variants_first
                 else np.asarray(same_variant) & ~barred)
        if candidates is not None and candidates < total.shape[1]:
            kept = np.zeros(total.shape, dtype=bool)
            for aspect in self.candidate_aspects:
                # As in SQL, a row without this aspect's vector is no candidate by it.
                absent = ~_present(gallery[aspect])[None, :]
                cosine = np.where(barred | absent, -np.inf, cosines[aspect])
                # Ties at the cut go to the earlier gallery row, as a stable sort would.
                nearest = np.argsort(-cosine, axis=1, kind="stable")[:, :candidates]
                found = np.zeros(total.shape, dtype=bool)
                np.put_along_axis(found, nearest, True, axis=1)
                kept |= found & ~absent
            barred = barred | ~(kept | first)
        # Above any blend's range: the sum of |weight| bounds a score.
        total += first * (2.0 * sum(abs(t.weight) for t in self.terms) + 1.0)
        return np.where(barred, -np.inf, total)


def unit_rows(rows: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Rows scaled to length 1, as ``dtype``; missing (NaN) and zero rows become zeros, so
    their cosines are 0, as the query's ``COALESCE(NULLIF(cos, 'NaN'), 0)`` counts them."""
    rows = np.nan_to_num(np.asarray(rows, dtype=dtype), nan=0.0)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


def _present(rows: np.ndarray) -> np.ndarray:
    """Which rows hold a vector (not all zero, no NaN)."""
    rows = np.asarray(rows, dtype=np.float64)
    return np.isfinite(rows).all(axis=1) & (np.abs(np.nan_to_num(rows)).sum(axis=1) > 0)


def default_sharpness(aspect: str) -> float:
    """The exponent of an aspect's cosine when a spec gives only its weight."""
    return 1.0 if aspect == SHAPE else float(get_aspect(aspect).sharpness)


def parse_blend(spec: Mapping[str, Any]) -> Blend:
    """A `Blend` from ``{"shape": 1.0, "colour": 0.4}`` or ``{"colour": {"weight": 3,
    "sharpness": 1}, ...}`` (`ValueError` for an unknown aspect or a blend with no positive
    weight, which has no index to find candidates in)."""
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError("A blend is a non-empty dict of aspect weights, e.g. "
                         "{'shape': 1.0, 'colour': 0.4}")
    terms = []
    for aspect, value in spec.items():
        if aspect == VARIANTS_FIRST:
            continue
        if aspect != SHAPE:
            get_aspect(aspect)
        if isinstance(value, Mapping):
            weight = float(value["weight"])
            sharpness = float(value.get("sharpness", default_sharpness(aspect)))
        else:
            weight, sharpness = float(value), default_sharpness(aspect)
        if sharpness <= 0:
            raise ValueError(f"The sharpness of {aspect!r} must be positive")
        terms.append(Term(aspect, weight, sharpness))
    if not any(term.weight > 0 for term in terms):
        raise ValueError("A blend needs an aspect with a positive weight to find candidates")
    terms.sort(key=lambda term: term.aspect != SHAPE)
    return Blend(tuple(terms), bool(spec.get(VARIANTS_FIRST, False)))


def mode_blend(name: str) -> Blend:
    """The `Blend` of the mode ``name`` in ``ASPECT_MODES`` (`UnknownMode` otherwise),
    parsed once per settings (a request asked for it about ten times)."""
    modes = reco_settings.ASPECT_MODES
    if not isinstance(name, str) or name not in modes:
        raise UnknownMode(f"Unknown mode {name!r}; use one of {', '.join(sorted(modes))}")
    spec = modes[name]
    parsed = _parsed_modes.get(name)
    # The spec itself is kept and compared: a changed mode is parsed again.
    if parsed is None or parsed[0] != spec:
        parsed = _parsed_modes[name] = (_frozen(spec), parse_blend(spec))
    return parsed[1]


def _frozen(spec: Any) -> Any:
    """A copy of a mode's spec that later changes to the setting's dicts leave alone."""
    if isinstance(spec, Mapping):
        return {key: _frozen(value) for key, value in spec.items()}
    return spec


_parsed_modes: dict[str, tuple[Any, Blend]] = {}


def blend_for(mode: str | None = None, aspects: Mapping[str, Any] | Blend | None = None, *,
              default: bool = False) -> Blend | None:
    """The blend a call asks for: ``aspects`` (a spec or a `Blend`) if given, else the
    ``mode``, else (with ``default``) ``DEFAULT_MODE``; None for the plain cosine."""
    if isinstance(aspects, Blend):
        return aspects
    if aspects is not None:
        if mode is not None:
            raise ValueError("Pass a mode or aspects, not both")
        return parse_blend(aspects)
    if mode is None and default:
        mode = reco_settings.DEFAULT_MODE
    return None if mode is None else mode_blend(mode)
