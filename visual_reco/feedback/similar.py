"""The similar-products list a visitor is shown: a visual candidate pool re-ranked with
shopper feedback and the shop's business rules, by the ranking options of the visitor's A/B
variant (``VISUAL_RECO["RANKING"]`` overridden by the variant's ``RANKING``).

In order: the ``POOL`` x ``limit`` visual neighbours (cached like any similar list, with
their similarities to each other for MMR: `visual_reco.result_cache.similar_pool`) without
the ``EXCLUDE`` ids and what the visitor bought or dismissed (``HIDE``); their cosine
similarity (with ``LEARNED``, the score of the version serving for the field,
`visual_reco.feedback.learned`) plus ``BOOST``, ``PERSONAL_WEIGHT`` x the visitor's
affinity for the row's category and ``PERSONAL_COLOUR_WEIGHT`` x the colour similarity of the
row to the visitor's colour (both from its recent events, `visual_reco.feedback.taste`); the
``SCORER``; plus feedback (`visual_reco.feedback.ranking`); with ``DIVERSITY``, maximal
marginal relevance over that score (`visual_reco.diversity`: re-ranking decides relevance,
MMR runs last, near-duplicates judged by the mode's blend); exploration of the last slots;
``PIN`` ids first, then, in a mode with ``variants_first``, the product's other variants
(``VARIANT_FIELD``).
Each row carries ``visual_score`` (None for a pinned row from outside the pool),
``feedback_score`` and ``reco_score`` (the relevance it was ranked by). Unless a rule needs
the rows' fields (``LEARNED``, ``BOOST``, the personal weights, ``SCORER``, variants first),
the pool is ranked on its cache entry and only the rows shown are read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import models
from django.http import HttpRequest
from django.utils.module_loading import import_string

from visual_reco.conf import reco_settings
from visual_reco.databases import reading
from visual_reco.diversity import PLAIN, diversity_for, diversity_lambda, top
from visual_reco.feedback.evidence import evidence_for, prior_for
from visual_reco.feedback.experiments import Variant
from visual_reco.feedback.learned import learned_scores, serving_model
from visual_reco.feedback.picks import history, history_taste, row_colours
from visual_reco.feedback.ranking import feedback_terms, rerank
from visual_reco.feedback.taste import Taste, colour_affinities
from visual_reco.modes import blend_for
from visual_reco.query import colour_attribute, is_variant_value, variant_attname
from visual_reco.registry import get_embedding_field
from visual_reco.result_cache import SimilarPool, similar_pool, similar_products

Scorer = Callable[[Any, list[models.Model], np.ndarray], Sequence[float]]


@dataclass(frozen=True)
class RankingOptions:
    """The ``RANKING`` settings one list is ranked with."""

    rerank: bool
    pool: int
    explore: float
    ctr_weight: float
    conversion_weight: float
    prior_strength: float
    feedback_surfaces: tuple[str, ...]
    boost: tuple[tuple[str, float], ...]
    pin: Any
    exclude: Any
    scorer: str | None
    learned: bool = False
    hide: frozenset[str] = frozenset()
    personal_weight: float = 0.0
    personal_colour_weight: float = 0.0

    @classmethod
    def of(cls, variant: Variant | None = None) -> RankingOptions:
        """The options of ``variant``: the ``RANKING`` setting with its overrides."""
        merged = {**reco_settings.RANKING, **(variant.ranking if variant else {})}
        return cls(rerank=bool(merged["RERANK"]), pool=max(1, int(merged["POOL"])),
                   explore=float(merged["EXPLORE"]), ctr_weight=float(merged["CTR_WEIGHT"]),
                   conversion_weight=float(merged["CONVERSION_WEIGHT"]),
                   prior_strength=float(merged["PRIOR_STRENGTH"]),
                   feedback_surfaces=tuple(merged["FEEDBACK_SURFACES"]),
                   boost=tuple((str(name), float(weight))
                               for name, weight in dict(merged["BOOST"]).items()),
                   pin=merged["PIN"], exclude=merged["EXCLUDE"], scorer=merged["SCORER"],
                   learned=bool(merged["LEARNED"]), hide=frozenset(merged["HIDE"]),
                   personal_weight=float(merged["PERSONAL_WEIGHT"]),
                   personal_colour_weight=float(merged["PERSONAL_COLOUR_WEIGHT"]))


def _ids(rule: Any, source: models.Model) -> list[str]:
    """The primary keys a PIN or EXCLUDE rule names for ``source``, as text."""
    if not rule:
        return []
    if isinstance(rule, str):
        rule = import_string(rule)(source)
    return [str(pk) for pk in rule or ()]


def ranked_similar(obj: models.Model, candidates: models.QuerySet | None = None,
                   limit: int | None = None, *, field: str | None = None,
                   variant: Variant | None = None, request: HttpRequest | None = None,
                   rng: np.random.Generator | None = None, mode: str | None = None,
                   collapse_variants: bool = False) -> list[models.Model]:
    """The similar products of ``obj`` among ``candidates`` as ``variant`` ranks them,
    best first (see the module docstring), without what this ``request``'s visitor did one
    of the ``HIDE`` events to (bought or dismissed, by default). The pool is ranked by
    ``mode`` (default ``DEFAULT_MODE``, `visual_reco.modes`): ``visual_score`` is its
    blend."""
    options = RankingOptions.of(variant)
    limit = reco_settings.DEFAULT_LIMIT if limit is None else int(limit)
    if candidates is None:
        candidates = type(obj)._default_manager.all()
    candidates = reading(candidates)
    learned = serving_model(type(obj), field) if options.learned else None
    hidden = ({product for kind, product, _ in history(request) if kind in options.hide}
              if options.hide and request is not None else set())
    colour = bool(options.personal_colour_weight)
    taste = (history_taste(request, type(obj), field, colour=colour)
             if (options.personal_weight or colour) and request is not None else Taste(None))
    affinities = taste.affinities if options.personal_weight else {}
    plain = (not options.rerank and not options.boost and not options.scorer
             and not options.pin and not options.exclude and learned is None and not hidden
             and not affinities and taste.colour is None)
    if plain:
        rows = similar_products(obj, candidates, limit, field=field, mode=mode,
                                collapse_variants=collapse_variants)
        for row in rows:
            row.feedback_score, row.reco_score = 0.0, row.visual_score
        return rows
    excluded = set(_ids(options.exclude, obj)) | hidden
    pinned = [pk for pk in _ids(options.pin, obj) if pk not in excluded and pk != str(obj.pk)]
    blend = blend_for(mode, default=True) or PLAIN
    diversity = diversity_for(blend, diversity_lambda(reco_settings.DIVERSITY))
    # Without these the pool is ranked on what its cache entry holds, and only the rows
    # shown are read.
    by_row = bool(learned is not None or options.boost or affinities
                  or taste.colour is not None or options.scorer or blend.variants_first)

    def ranked(pool: SimilarPool) -> list[models.Model] | None:
        """The pool's rows to show, ranked; None when one has left the candidates."""
        pks = pool.pks
        kept = [index for index, pk in enumerate(pks)
                if str(pk) not in excluded and str(pk) not in pinned]
        rows = pool.rows(kept) if by_row else None
        if by_row and rows is None:
            return None
        variants = _variants(obj, rows, mode) if rows is not None else []
        if variants:
            kept = [index for index, row in zip(kept, rows, strict=True)
                    if row not in variants]
            rows = [row for row in rows if row not in variants]
            for row in variants:
                row.feedback_score, row.reco_score = 0.0, row.visual_score
        scores = pool.visual_scores[kept]
        if learned is not None and rows:
            scores = learned_scores(learned, obj, rows, field, scores)
        for name, weight in options.boost:
            scores += weight * np.array([bool(getattr(row, name, False)) for row in rows])
        if affinities:
            field_name = reco_settings.CATEGORY_FIELD
            scores += options.personal_weight * np.array(
                [affinities.get(str(getattr(row, field_name, None)), 0.0) for row in rows])
        if taste.colour is not None:
            scores += options.personal_colour_weight * colour_affinities(
                taste, row_colours(rows, colour_attribute(get_embedding_field(type(obj), field),
                                                          type(obj))))
        if options.scorer and rows:
            scorer: Scorer = import_string(options.scorer)
            scores = np.asarray(scorer(obj, rows, scores.copy()), dtype=np.float64)
        similarity = (pool.similarity[np.ix_(kept, kept)]
                      if diversity is not None and pool.similarity is not None else None)
        terms = np.zeros(len(kept))
        count = max(limit - len(pinned) - len(variants), 0)
        prior = (prior_for(options.feedback_surfaces, options.prior_strength)
                 if options.rerank and kept else None)
        if prior is not None:
            evidence = evidence_for(options.feedback_surfaces, obj.pk,
                                    [pks[index] for index in kept])
            terms = feedback_terms(evidence, prior, ctr_weight=options.ctr_weight,
                                   conversion_weight=options.conversion_weight)
            order = rerank(scores, evidence, prior, count, explore_share=options.explore,
                           rng=rng, ctr_weight=options.ctr_weight,
                           conversion_weight=options.conversion_weight, terms=terms,
                           diversity=diversity, similarity=similarity)
        else:
            order = top(scores, count, diversity, similarity)
        shown = ([rows[index] for index in order] if rows is not None
                 else pool.rows([kept[index] for index in order]))
        if shown is None:
            return None
        for index, row in zip(order, shown, strict=True):
            row.feedback_score = float(terms[index])
            row.reco_score = float(scores[index] + terms[index])
        return variants + shown

    arguments = {"field": field, "mode": mode, "collapse_variants": collapse_variants,
                 "diverse": False, "pairwise": diversity is not None}
    pool_size = limit * options.pool + len(excluded)
    found = ranked(similar_pool(obj, candidates, pool_size, **arguments))
    if found is None:  # a cached row left the candidates without a signal (update(), SQL)
        found = ranked(similar_pool(obj, candidates, pool_size, refresh=True, **arguments))
    return (_pinned_rows(obj, candidates, pinned, field, mode) + found)[:limit]


def _variants(obj: models.Model, pool: list[models.Model], mode: str | None) -> list[Any]:
    """The rows of ``pool`` sharing ``obj``'s ``VARIANT_FIELD`` value when ``mode`` puts
    them first (``variants_first``), in the pool's order: kept ahead of the re-ranked rest,
    which would otherwise sort them among it by score."""
    blend = blend_for(mode, default=True)
    attname = variant_attname(type(obj)) if blend is not None and blend.variants_first else None
    value = getattr(obj, attname) if attname else None
    if not is_variant_value(value):
        return []
    return [row for row in pool if getattr(row, attname, None) == value]


def _pinned_rows(obj: models.Model, candidates: models.QuerySet, pinned: list[str],
                 field: str | None, mode: str | None) -> list[models.Model]:
    """The pinned rows that are among ``candidates``, in the pin order."""
    if not pinned:
        return []
    from_pool = {str(row.pk): row for row in
                 similar_products(obj, candidates.filter(pk__in=pinned), len(pinned),
                                  field=field, mode=mode, diverse=False)}
    rows = []
    for pk in pinned:
        row = from_pool.get(pk)
        if row is not None:
            row.feedback_score, row.reco_score = 0.0, None
            rows.append(row)
    return rows
