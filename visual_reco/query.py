"""Nearest-neighbour queries on `ImageEmbeddingField` columns.

``Product.objects.filter(in_stock=True).visually_similar(product, limit=8)`` orders by cosine
distance through the HNSW index. pgvector 0.8's iterative index scan keeps scanning until
``limit`` rows pass the filters, so a selective filter does not silently return fewer.

With ``mode=`` or ``aspects=`` (`visual_reco.modes`) the rows are ranked by a blend of the
embedding ("shape") and its aspects ("colour"), in one query: the ``ASPECT_CANDIDATES``
nearest rows by the index of each aspect with a positive weight (an inner subquery, their
union, each exact or HNSW as above), re-scored exactly on every aspect and ordered by the
blend outside it.

With ``diversity=`` (`visual_reco.diversity`) the ``DIVERSITY_POOL`` x ``limit`` best rows
(after ``collapse_variants``) are re-ordered by maximal marginal relevance, their vectors
read in one more query, and the first ``limit`` kept.

A gallery field (``product=``, `visual_reco.gallery`) searched from the product model ranks
its image rows by all of the above and returns products, each once, by its best image,
which each row carries as ``visual_image``: the image search of every photo of a product
(or of the query vectors) in one statement, grouped by product in SQL. That search runs
when the method is called; the queryset it returns reads the products it found (in their
order, with their scores).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import IO, Any, Self

import numpy as np
from django.core.exceptions import FieldDoesNotExist
from django.db import DatabaseError, connections, models, transaction
from django.db.models import Case, Exists, F, Func, Subquery, Value, When
from django.db.models.expressions import RawSQL
from django.db.models.functions import Greatest
from pgvector import HalfVector
from pgvector.django import CosineDistance

from visual_reco.aspects import get_aspect
from visual_reco.conf import reco_settings
from visual_reco.databases import reading
from visual_reco.diversity import PLAIN, blend_similarity, diversity_for, diversity_lambda, mmr
from visual_reco.gallery import (
    COLOUR_ATTRIBUTE,
    GROWTH,
    HIT_FILE,
    HIT_PK,
    HIT_PRODUCT,
    SOURCE,
    Match,
    best_of,
    first_pool,
    pairwise_max,
    statement,
)
from visual_reco.modes import SHAPE, Blend, Term, blend_for
from visual_reco.query_photos import embed_query
from visual_reco.registry import embedding_fields, get_embedding_field, is_gallery
from visual_reco.rollout import live_embedder

DISTANCE = "visual_distance"
# The annotation with a gallery search's hit's colour vector, binary (`from_binary`).
MATCH_COLOUR = "visual_match_colour"
# Rows of hnsw.ef_search beyond a blend's ASPECT_CANDIDATES (`candidate_ef_search`): the
# source and rows that filters drop. Chosen in demo_shop/bench (bench_blend, docs/BENCHMARKS.md).
CANDIDATE_EF_MARGIN = 20
# HNSW_EF_SEARCH "auto": (tables under this many rows, ef_search); None: any size. Measured
# on 2,048-d vectors (docs/BENCHMARKS.md "Nearest-neighbour queries at scale"): ef_search 100
# keeps recall@10 at 0.998 at 100k rows but gives 0.922 at 1M, where 200 gives 0.952 (p99
# 13.1 ms). 400 beyond 2M is an extrapolation, not a measurement.
AUTO_EF_SEARCH: tuple[tuple[int | None, int], ...] = ((200_000, 100), (2_000_000, 200),
                                                      (None, 400))
# EXACT_SEARCH_MAX_ROWS "auto": a filtered search takes the path of lower estimated cost
# (`exact_is_cheaper`). Milliseconds per filtered row ranked exactly (bitmap heap scan of a
# row per page + a 2,048-d distance), and per tuple HNSW's iterative scan visits by table
# size (tables under this many rows, ms; None: any size), calibrated by
# `manage.py bench_vector_filters` (docs/BENCHMARKS.md "Filtered queries at the defaults").
EXACT_MS_PER_ROW = 0.0029
HNSW_MS_PER_TUPLE: tuple[tuple[int | None, float], ...] = ((200_000, 0.014), (None, 0.079))
# Seconds a process keeps a table's estimated size (`table_rows`).
TABLE_ROWS_TTL = 600.0
_table_rows: dict[tuple[str, str], tuple[float, Any]] = {}
_partial_indexes: dict[tuple[str, str], tuple[float, Any]] = {}
# ef_search, at least, of a filtered search that walks a partial HNSW index (one whose
# condition its filter implies): measured at 100k rows on the 10% of `category < 100` (whole
# clusters, docs/BENCHMARKS.md "Filtered queries at the defaults"), 100 gave recall@10 0.93,
# 200 0.974, 400 0.995 at a third more time.
PARTIAL_INDEX_EF_SEARCH = 200
# While set, a blend's candidate subquery ranks its rows exactly (`CandidateDistance`).
_EXACT_CANDIDATES: ContextVar[bool] = ContextVar("visual_reco_exact_candidates", default=False)


def vector_of(obj: models.Model, field: str | None = None) -> np.ndarray | None:
    """The stored embedding of ``obj`` as float32 (read from the database if deferred)."""
    embedding = get_embedding_field(type(obj), field)
    if embedding.attname in obj.__dict__:
        value = obj.__dict__[embedding.attname]
    else:
        value = reading(type(obj)._base_manager.filter(pk=obj.pk)).values_list(
            embedding.attname, flat=True).first()
    return to_array(value)


def to_array(value: Any) -> np.ndarray | None:
    """A stored vector (HalfVector, list or array) as float32, or None."""
    if value is None:
        return None
    if isinstance(value, HalfVector):
        return value.to_numpy().astype(np.float32)
    return np.asarray(value, dtype=np.float32)


def binary_vector(attname: str) -> Func:
    """The ``halfvec`` column ``attname`` in pgvector's binary form, for `from_binary`:
    parsing the text of 2,048 numbers costs about 0.6 ms a row, this almost nothing."""
    return Func(F(attname), function="halfvec_send", output_field=models.BinaryField())


def from_binary(raw: bytes | memoryview) -> np.ndarray:
    """A ``halfvec`` in pgvector's binary form (dimensions, unused, big-endian float16s)
    as float32."""
    raw = bytes(raw)
    dimensions = int.from_bytes(raw[:2], "big")
    return np.frombuffer(raw, dtype=">f2", count=dimensions, offset=4).astype(np.float32)


class CandidateDistance(Func):
    """A blend's candidate order (a distance): as it is, so HNSW can serve it, or plus 0.0
    while `exact_candidates` is active, so the candidates are ranked exactly."""

    template = "%(expressions)s"
    output_field = models.FloatField()

    def as_sql(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        if _EXACT_CANDIDATES.get():
            extra_context["template"] = "(%(expressions)s) + 0.0"
        return super().as_sql(compiler, connection, **extra_context)


@contextmanager
def exact_candidates() -> Iterator[None]:
    """Compile blended searches with exactly ranked candidates (no index) in this block."""
    token = _EXACT_CANDIDATES.set(True)
    try:
        yield
    finally:
        _EXACT_CANDIDATES.reset(token)


class _Known(Func):
    # pgvector answers NaN for a zero vector; a missing or zero aspect counts 0, as absent.
    template = "COALESCE(NULLIF(%(expressions)s, 'NaN'::float8), 0.0)"
    output_field = models.FloatField()


def _similarity(column: str, query: Any) -> Any:
    """The cosine similarity of ``column`` to ``query`` (NULL for a row without a vector)."""
    return models.ExpressionWrapper(Value(1.0) - CosineDistance(column, query),
                                    output_field=models.FloatField())


def _term(term: Term, column: str, query: Any) -> Any:
    """``weight * max(cos, 0) ** sharpness`` (the bare cosine for sharpness 1), 0 when the
    row has no vector."""
    cosine = _similarity(column, query)
    if term.sharpness != 1.0:
        cosine = Func(Greatest(cosine, Value(0.0)), Value(term.sharpness), function="POWER",
                      output_field=models.FloatField())
    return models.ExpressionWrapper(Value(term.weight) * _Known(cosine),
                                    output_field=models.FloatField())


def score_name(aspect: str) -> str:
    """The annotation with one aspect's cosine similarity in a blended search."""
    return f"{aspect}_score"


class VisualQuerySet(models.QuerySet):
    """A QuerySet with ``visually_similar``, ``similar_to_vector`` and ``similar_to_image``."""

    _visual_search = False
    # The rows a filtered search chooses from (None: no caller filters), for `_exact`.
    _visual_candidates: models.QuerySet | None = None
    # A blended search: its blend, the rows asked for, the rows its query fetches (more
    # than asked for with diversity), the variant attribute to keep one row per value of
    # (collapse_variants) and MMR's lambda (diversity).
    _visual_blend: Blend | None = None
    _visual_limit = 0
    _visual_pool = 0
    _visual_collapse: str | None = None
    _visual_diversity: float | None = None
    _visual_embedding: str | None = None
    # A gallery search's matches by product primary key (`visual_reco.gallery.Match`).
    _visual_gallery: dict[Any, Match] | None = None
    # Whether this filtered search walks a partial HNSW index (None: not looked at yet).
    _visual_partial: bool | None = None

    def _clone(self) -> Self:
        clone = super()._clone()
        clone._visual_search = self._visual_search
        clone._visual_candidates = self._visual_candidates
        clone._visual_blend = self._visual_blend
        clone._visual_limit = self._visual_limit
        clone._visual_pool = self._visual_pool
        clone._visual_collapse = self._visual_collapse
        clone._visual_diversity = self._visual_diversity
        clone._visual_embedding = self._visual_embedding
        clone._visual_gallery = self._visual_gallery
        return clone

    def similar_to_vector(self, vector: Any, limit: int | None = None, *,
                          field: str | None = None, colour: Any = None,
                          aspects: Mapping[str, Any] | Blend | None = None,
                          mode: str | None = None, collapse_variants: bool = False,
                          diversity: float | None = None,
                          _filtered: bool | None = None) -> Self:
        """The ``limit`` rows nearest to ``vector``, annotated with ``visual_distance``
        (cosine distance, 0 = same direction) and ``visual_score`` (1 - distance).

        When the queryset is filtered, the rows that pass are ranked exactly instead of
        walking the HNSW graph when that is expected to cost less (``EXACT_SEARCH_MAX_ROWS``
        "auto": by the planner's estimate of the passing rows, `exact_is_cheaper`; a
        number: when at most that many pass): a selective filter would make the walk skip
        almost everything it visits.

        With ``mode`` (a name in ``ASPECT_MODES``) or ``aspects`` (a blend spec,
        `visual_reco.modes`), rows are ranked by the blend of ``vector`` ("shape") and
        ``colour`` (the query's colour vector; without it colour counts for nothing):
        ``visual_score`` is the blend, ``visual_distance`` 1 - it, ``<aspect>_score`` each
        aspect's cosine (None for a row without that vector), and rows also carry an
        ``aspect_scores`` dict. ``collapse_variants`` keeps the best row of each
        ``VARIANT_FIELD`` value.

        ``diversity`` (MMR's lambda in (0, 1], `visual_reco.diversity`; None: off) picks the
        ``limit`` rows among the ``DIVERSITY_POOL`` x ``limit`` best by maximal marginal
        relevance, near-duplicates judged by the same blend (the plain cosine without
        one); the rows keep their ``visual_score``, in the order picked. A mode with
        ``variants_first`` is not diversified: its variants are alike by design.

        The search reads ``READ_DATABASE`` unless this queryset was given a database with
        ``using()`` (`visual_reco.databases.reading`).
        """
        routed = reading(self)
        if routed is not self:
            return routed.similar_to_vector(
                vector, limit, field=field, colour=colour, aspects=aspects, mode=mode,
                collapse_variants=collapse_variants, diversity=diversity, _filtered=_filtered)
        blend = blend_for(mode, aspects)
        diversity = diversity_lambda(diversity, "diversity")
        embedding = get_embedding_field(self.model, field)
        filtered = bool(self.query.where) if _filtered is None else _filtered
        limit = reco_settings.DEFAULT_LIMIT if limit is None else int(limit)
        if is_gallery(embedding, self.model):
            vectors = {SHAPE: vector, **({"colour": colour} if colour is not None else {})}
            return self._gallery(embedding, limit, blend, collapse=collapse_variants,
                                 diversity=diversity, vectors=vectors)
        query = _query_vector(vector)
        if blend is not None:
            queries = {SHAPE: query}
            if colour is not None:
                queries["colour"] = _query_vector(colour)
            blend = _usable(blend, embedding, queries)
            if not blend.plain or collapse_variants or diversity is not None:
                return self._blended(blend, queries, limit, embedding, filtered,
                                     collapse=collapse_variants, diversity=diversity)
        elif diversity is not None:
            return self._blended(PLAIN, {SHAPE: query}, limit, embedding, filtered,
                                 diversity=diversity)
        qs = self
        if self._fields is None:  # not after .values()
            # Neighbours' vectors are 2,048 numbers each that callers rarely need.
            qs = qs.defer(embedding.attname)
        qs = qs.filter(**{f"{embedding.attname}__isnull": False})
        candidates = qs.order_by().values("pk") if filtered else None
        qs = (qs.annotate(**{DISTANCE: CosineDistance(embedding.attname, query)})
              .annotate(visual_score=1.0 - models.F(DISTANCE))
              .order_by(DISTANCE)[:limit])
        qs._visual_search = True
        qs._visual_candidates = candidates
        return qs

    def _blended(self, blend: Blend, queries: dict[str, Any], limit: int,
                 embedding: Any, filtered: bool, *, collapse: bool = False,
                 variant: tuple[str, Any] | None = None,
                 diversity: float | None = None) -> Self:
        """The search ranked by ``blend`` of the ``queries`` vectors (by aspect), see
        `similar_to_vector`; ``variant`` (field, value) rows come first with
        ``variants_first``."""
        diversity = diversity_for(blend, diversity)
        pool = limit if diversity is None else limit * reco_settings.DIVERSITY_POOL
        columns = {SHAPE: embedding.attname,
                   **{a: embedding.aspect_name(a) for a in blend.aspects if a != SHAPE}}
        qs = self
        if self._fields is None:
            qs = qs.defer(embedding.attname)
        qs = qs.filter(**{f"{embedding.attname}__isnull": False})
        # Each positive aspect's nearest rows: the blend's best row is often near the query
        # in both aspects without being among the nearest by the heavier one alone (recall@10
        # at 100k products, docs/BENCHMARKS.md). UNION ALL: ``pk IN`` drops the repeats.
        sources = [(qs.filter(**{f"{columns[aspect]}__isnull": False})
                    .order_by(CandidateDistance(CosineDistance(columns[aspect],
                                                               queries[aspect])))
                    .values("pk")[:reco_settings.ASPECT_CANDIDATES])
                   for aspect in blend.candidate_aspects]
        first = None
        if variant is not None and blend.variants_first and is_variant_value(variant[1]):
            first = models.Q(**{variant[0]: variant[1]})
            sources.append(qs.filter(first).order_by().values("pk"))
        candidates = sources[0].union(*sources[1:], all=True) if len(sources) > 1 else sources[0]
        scores = {score_name(t.aspect): _similarity(columns[t.aspect], queries[t.aspect])
                  for t in blend.terms}
        total = sum((_term(t, columns[t.aspect], queries[t.aspect]) for t in blend.terms),
                    Value(0.0))
        ordered = (qs.filter(pk__in=candidates).annotate(**scores)
                   .annotate(visual_score=models.ExpressionWrapper(
                       total, output_field=models.FloatField()))
                   .annotate(**{DISTANCE: 1.0 - F("visual_score")}))
        order = [F("visual_score").desc(), F("pk").asc()]
        if first is not None:
            order.insert(0, Case(When(first, then=Value(0)), default=Value(1)).asc())
        ordered = ordered.order_by(*order)
        collapse_attname = variant_attname(self.model) if collapse else None
        if collapse_attname is None:
            ordered = ordered[:pool]
        ordered._visual_search = True
        ordered._visual_candidates = qs.order_by().values("pk") if filtered else None
        ordered._visual_blend = blend
        ordered._visual_limit = limit
        ordered._visual_pool = pool
        ordered._visual_collapse = collapse_attname
        ordered._visual_diversity = diversity
        ordered._visual_embedding = embedding.name
        return ordered

    def visually_similar(self, obj: models.Model, limit: int | None = None, *,
                         field: str | None = None,
                         aspects: Mapping[str, Any] | Blend | None = None,
                         mode: str | None = None, collapse_variants: bool = False,
                         diversity: float | None = None,
                         _variant: tuple[str, Any] | None = None) -> Self:
        """Rows that look like ``obj`` (itself excluded), nearest first.

        Empty when ``obj`` has no embedding yet. When ``obj`` was loaded without its vector
        (``defer``), the database reads it in the same query instead of sending it back
        and forth. ``mode``, ``aspects`` and ``collapse_variants`` blend aspects as in
        `similar_to_vector`, with ``obj``'s own aspect vectors; a mode with
        ``variants_first`` puts the other rows of ``obj``'s ``VARIANT_FIELD`` value first.
        ``diversity`` re-orders them by maximal marginal relevance as there.

        For a gallery field, ``obj`` is a product: every image of it is compared with every
        image of the others, each product ranked by its best pair (`visual_reco.gallery`);
        empty when none of its images has a vector yet.

        The search reads ``READ_DATABASE`` unless this queryset was given a database with
        ``using()`` (`visual_reco.databases.reading`).
        """
        routed = reading(self)
        if routed is not self:
            return routed.visually_similar(
                obj, limit, field=field, aspects=aspects, mode=mode,
                collapse_variants=collapse_variants, diversity=diversity, _variant=_variant)
        blend = blend_for(mode, aspects)
        diversity = diversity_lambda(diversity, "diversity")
        embedding = get_embedding_field(type(obj), field)
        if is_gallery(embedding, type(obj)):
            return self._gallery_similar(obj, embedding, limit, blend,
                                         collapse=collapse_variants, diversity=diversity)
        filtered = bool(self.query.where)
        others = self.exclude(pk=obj.pk)
        # No ordering: a Meta.ordering across a relation would join for one row by key.
        source = type(obj)._base_manager.using(self.db).filter(
            pk=obj.pk, **{f"{embedding.attname}__isnull": False}).order_by()
        if embedding.attname in obj.__dict__:
            vector = to_array(obj.__dict__[embedding.attname])
            if vector is None:
                return self.none()
            query = vector
        else:
            query = Subquery(source.values(embedding.attname)[:1], output_field=embedding)
            others = others.filter(Exists(source))
        if blend is not None:
            queries = {SHAPE: _query_vector(query),
                       **_aspect_queries(obj, embedding, blend, source)}
            blend = _usable(blend, embedding, queries)
            attname = variant_attname(type(obj))
            if not blend.plain or collapse_variants or diversity is not None:
                variant = _variant or ((reco_settings.VARIANT_FIELD, getattr(obj, attname))
                                       if attname else None)
                limit = reco_settings.DEFAULT_LIMIT if limit is None else int(limit)
                return others._blended(blend, queries, limit, embedding, filtered,
                                       collapse=collapse_variants, variant=variant,
                                       diversity=diversity)
        return others.similar_to_vector(query, limit, field=field, diversity=diversity,
                                        _filtered=filtered)

    def _gallery_similar(self, obj: models.Model, embedding: Any, limit: int | None,
                         blend: Blend | None, *, collapse: bool,
                         diversity: float | None) -> Self:
        """`visually_similar` of a product through its gallery field ``embedding``: the image
        search of each image of ``obj`` that has a vector, all in one statement, the
        product's own images left out."""
        key = embedding.product_key()
        limit = reco_settings.DEFAULT_LIMIT if limit is None else int(limit)
        attname = variant_attname(type(obj))
        value = getattr(obj, attname) if attname else None
        variant = ((f"{key.name}__{reco_settings.VARIANT_FIELD}", value)
                   if attname and blend is not None and blend.variants_first else None)
        first = value if variant is not None and is_variant_value(value) else None
        return self.exclude(pk=obj.pk)._gallery(
            embedding, limit, blend, collapse=collapse, diversity=diversity, product=obj.pk,
            variant=variant, variant_value=first, scope=self)

    def _gallery(self, embedding: Any, limit: int, blend: Blend | None, *, collapse: bool,
                 diversity: float | None, vectors: dict[str, Any] | None = None,
                 product: Any = None, variant: tuple[str, Any] | None = None,
                 variant_value: Any = None, scope: models.QuerySet | None = None) -> Self:
        """The products of this queryset whose images the search by ``vectors`` (by
        aspect) finds, each once by its best image, the first ``limit`` (after
        ``collapse_variants`` and ``diversity``), as a queryset of the products in that
        order. ``product``: search with each image of this product (instead of
        ``vectors``) and leave it out; ``variant``: the image search's rows to put first in a
        blend with ``variants_first``; ``variant_value``: the ``VARIANT_FIELD`` value whose
        products come first; ``scope``: the queryset whose filters restrict the images
        (default: this one)."""
        scope = self if scope is None else scope
        key = embedding.product_key()
        images = visual(embedding.model._base_manager.using(self.db).all())
        if embedding.colour_attname:
            # Binary: parsing the text of every hit's colour cost more than the search.
            images = images.annotate(**{MATCH_COLOUR: binary_vector(embedding.colour_attname)})
        if scope.query.where:
            images = images.filter(**{f"{key.name}__in": scope.order_by().values("pk")})
        if blend is not None:
            diversity = diversity_for(blend, diversity)
        wanted = limit if diversity is None else limit * reco_settings.DIVERSITY_POOL
        attname = variant_attname(self.model) if collapse or variant_value is not None else None
        search = _GallerySearch(images, embedding, blend, product=product, vectors=vectors,
                                variant=variant, variants=attname is not None)
        pool = first_pool(wanted)
        while True:
            # Variants reorder and drop products: those need every product found.
            matches, exhausted = search.run(pool, None if attname is not None else wanted)
            if attname is not None:
                matches = _variants_ordered(matches, collapse, variant_value)
            if len(matches) >= wanted or exhausted:
                break
            pool *= GROWTH
        matches = matches[:wanted]
        if diversity is not None and matches:
            similarity = candidate_similarity(self.model, [m.product for m in matches],
                                              blend or PLAIN, embedding.name, using=self.db)
            order = mmr(np.array([m.score for m in matches]), similarity, limit, diversity)
            matches = [matches[index] for index in order]
        matches = matches[:limit]
        if not matches:
            return self.none()
        keys = [m.product for m in matches]
        found = self.filter(pk__in=keys)
        if self._fields is None:  # the product's own vectors: parsing them costs, unused here
            found = found.defer(*deferred_vectors(self.model))
        # Arrays by position, not a CASE per product: compiling those cost 4.5 ms a list.
        db_type = self.model._meta.pk.rel_db_type(connections[self.db])
        position = Func(Func(Value(keys), template=f"%(expressions)s::{db_type}[]"), F("pk"),
                        function="array_position", output_field=models.IntegerField())
        distance = _Element(Value([float(getattr(m.image, DISTANCE)) for m in matches]),
                            position)
        found = (found.annotate(**{DISTANCE: distance})
                 .annotate(visual_score=_Element(Value([m.score for m in matches]), position))
                 .order_by(position))
        found._visual_gallery = {m.product: m for m in matches}
        return found

    def similar_to_image(self, file: IO[bytes], limit: int | None = None, *,
                         field: str | None = None, mode: str | None = None,
                         aspects: Mapping[str, Any] | Blend | None = None) -> Self:
        """Rows that look like the photo in ``file``, embedded as every photo search is
        (`visual_reco.query_photos.embed_query`: size limit, multi-crop, process or worker),
        ranked by ``mode`` or ``aspects`` as in `similar_to_vector` with the photo's own
        aspect vectors (plain cosine without either).

        Raises `visual_reco.images.ImageError` for a file that is not a usable image and
        `visual_reco.query_photos.SearchUnavailable` when no worker answers in time.
        """
        embedding = get_embedding_field(self.model, field)
        blend = blend_for(mode, aspects)
        query = embed_query(file, embedder=live_embedder(embedding, self.db),
                            aspects=photo_aspects(blend, embedding))
        return self.similar_to_vector(query.vector, limit, field=embedding.name, aspects=blend,
                                      colour=query.aspects.get("colour"))

    def _fetch_all(self) -> None:
        if self._visual_gallery is not None and self._result_cache is None:
            super()._fetch_all()
            attach_matches(self._result_cache, self._visual_gallery)
            return None
        if not self._visual_search or self._result_cache is not None:
            return super()._fetch_all()
        if self._visual_blend is not None:
            return self._fetch_blended()
        exact = self._exact()
        if exact is not None:
            self._result_cache = list(exact._iterable_class(exact))
            if self._prefetch_related_lookups and not self._prefetch_done:
                self._prefetch_related_objects()
        else:
            with hnsw_settings_applied(
                    self.db, self._ef_search(ef_search_for(self.model, self.db))), \
                    index_walk(self.db, self._visual_candidates is not None):
                super()._fetch_all()
            wanted = (self.query.high_mark or 0) - self.query.low_mark
            if len(self._result_cache) < wanted:
                # The graph walk came back short: its nearest entries were dead tuples (rows
                # deleted or updated and not vacuumed yet: 2 of 5 found among 216 dead and
                # 18 live rows, iterative scan or not). Rank exactly instead; it returns
                # every row there is, and a short answer is rare.
                exact = self._exact_ranking()
                self._result_cache = list(exact._iterable_class(exact))
                if self._prefetch_related_lookups:
                    self._prefetch_done = False
                    self._prefetch_related_objects()
        # relaxed_order may return neighbours slightly out of order; the page is small.
        if self._result_cache and isinstance(self._result_cache[0], models.Model):
            self._result_cache.sort(key=lambda row: getattr(row, DISTANCE))
        elif self._result_cache and isinstance(self._result_cache[0], dict):
            self._result_cache.sort(key=lambda row: row.get(DISTANCE, 0.0))
        elif (self._result_cache and isinstance(self._result_cache[0], tuple)
              and DISTANCE in (self._fields or ())):
            at = self._fields.index(DISTANCE)
            self._result_cache.sort(key=lambda row: row[at])

    def _fetch_blended(self) -> None:
        """Run a blended search: its candidates exact or by HNSW as for a plain one (exact
        again when the graph walk comes back short), then per-aspect scores and variants."""
        if self._exact_candidates_wanted():
            with exact_candidates():
                super()._fetch_all()
        else:
            with hnsw_settings_applied(self.db, self._ef_search(
                    candidate_ef_search(ef_search_for(self.model, self.db)))), \
                    index_walk(self.db, self._visual_candidates is not None):
                super()._fetch_all()
            if len(self._result_cache) < self._visual_pool:
                # A short walk (dead tuples, see `_fetch_all`): rank the candidates exactly.
                self._result_cache, self._prefetch_done = None, False
                with exact_candidates():
                    super()._fetch_all()
        rows = self._result_cache
        if rows and isinstance(rows[0], models.Model):
            for row in rows:
                row.aspect_scores = {aspect: getattr(row, score_name(aspect))
                                     for aspect in self._visual_blend.aspects}
        if self._visual_collapse is not None:
            rows = _collapsed(rows, self._visual_collapse)[:self._visual_pool]
        if self._visual_diversity is not None and rows:
            rows = self._diversified(rows)
        if self._visual_collapse is not None or self._visual_diversity is not None:
            self._result_cache = rows[:self._visual_limit]

    def _diversified(self, rows: list[Any]) -> list[Any]:
        """``rows`` (best first) in maximal marginal relevance order, ``_visual_limit`` of
        them, judged by this search's blend."""
        relevance, pks = [], []
        pk_name = self.model._meta.pk.attname
        for row in rows:
            if isinstance(row, models.Model):
                relevance.append(row.visual_score)
                pks.append(row.pk)
            elif isinstance(row, dict) and "visual_score" in row and (
                    "pk" in row or pk_name in row):
                relevance.append(row["visual_score"])
                pks.append(row.get("pk", row.get(pk_name)))
            else:
                raise TypeError("diversity= needs model rows, or values() with the primary "
                                "key and visual_score")
        similarity = candidate_similarity(self.model, pks, self._visual_blend,
                                          self._visual_embedding, using=self.db)
        order = mmr(np.array(relevance), similarity, self._visual_limit, self._visual_diversity)
        return [rows[index] for index in order]

    def _exact_candidates_wanted(self) -> bool:
        """Whether a filtered blended search should rank its candidate rows exactly: each
        aspect's index walk looks for ``ASPECT_CANDIDATES`` rows (`exact_is_cheaper`)."""
        return self._exact_wanted(int(reco_settings.ASPECT_CANDIDATES), candidate_ef_search(
            ef_search_for(self.model, self.db)))

    def _exact_wanted(self, wanted: int, ef_search: int) -> bool:
        """Whether this filtered search's rows cost less ranked exactly than found by HNSW
        (``EXACT_SEARCH_MAX_ROWS``: "auto" by `exact_is_cheaper`, a number of rows, or None
        for never); one ``EXPLAIN`` of the filtered rows."""
        threshold = reco_settings.EXACT_SEARCH_MAX_ROWS
        if self._visual_candidates is None or not threshold:
            return False
        passing = estimated_rows(self._visual_candidates)
        if threshold != "auto":
            return passing <= int(threshold)
        if exact_is_cheaper(passing, table_rows(self.model, self.db), wanted, ef_search):
            # Even where a partial index would serve: exact is exact, and at 1M rows a
            # partial graph of 1% in whole clusters gave recall@10 0.76 (docs/BENCHMARKS.md).
            return True
        self._walks_partial_index(ef_search)  # the walk then runs at `_ef_search`
        return False

    def _walks_partial_index(self, ef_search: int) -> bool:
        """Whether this filtered search, sent to HNSW, would walk a partial HNSW index (the
        planner proves its condition from the filter): all its rows pass, so the walk costs
        what an unfiltered one does, and recall stays up where a filter that removes whole
        clusters leaves the full graph's walk far from the rows that pass. One more
        ``EXPLAIN``, only for tables that have such an index; kept for `_ef_search`."""
        if self._visual_partial is None:
            self._visual_partial = False
            if partial_hnsw_indexes(self.model, self.db):
                with hnsw_settings_applied(self.db, ef_search), index_walk(self.db):
                    plan = json.loads(models.QuerySet.explain(self, format="json"))
                self._visual_partial = bool(
                    index_names(plan) & partial_hnsw_indexes(self.model, self.db))
        return self._visual_partial

    def _ef_search(self, ef_search: int) -> int:
        """``ef_search`` for this search's walk: at least `PARTIAL_INDEX_EF_SEARCH` when it
        walks a partial index (`_walks_partial_index`, decided on the way to the walk)."""
        if self._visual_partial:
            return max(ef_search, PARTIAL_INDEX_EF_SEARCH)
        return ef_search

    def explain(self, *, format: str | None = None, **options: Any) -> str:
        """``EXPLAIN`` under the HNSW settings the query runs with (they change the plan)."""
        if not self._visual_search:
            return super().explain(format=format, **options)
        if self._visual_blend is not None:
            if self._exact_candidates_wanted():
                with exact_candidates():
                    return super().explain(format=format, **options)
            with hnsw_settings_applied(self.db, self._ef_search(
                    candidate_ef_search(ef_search_for(self.model, self.db)))), \
                    index_walk(self.db, self._visual_candidates is not None):
                return super().explain(format=format, **options)
        exact = self._exact()
        if exact is not None:
            return exact.explain(format=format, **options)
        with hnsw_settings_applied(
                self.db, self._ef_search(ef_search_for(self.model, self.db))), \
                index_walk(self.db, self._visual_candidates is not None):
            return super().explain(format=format, **options)

    def _exact(self) -> Self | None:
        """This search as an exact ranking of the filtered rows, when that is the cheaper
        path (`_exact_wanted`)."""
        wanted = max((self.query.high_mark or 0) - self.query.low_mark, 1)
        if not self._exact_wanted(wanted, ef_search_for(self.model, self.db)):
            return None
        return self._exact_ranking()

    def _exact_ranking(self) -> Self:
        """This search ranking every candidate row by its exact distance (no index)."""
        exact = self._chain()
        exact._visual_search = False
        # An expression, not the bare distance, so the HNSW index cannot serve the order.
        exact.query.order_by = ((models.F(DISTANCE) + 0.0).asc(),)
        return exact


class _Element(Func):
    """``array[position]``: the element at a position (from 1) of a ``float8`` array."""

    template = "(%(expressions)s]"
    arg_joiner = "::float8[])["
    output_field = models.FloatField()


def _variants_ordered(matches: list[Match], collapse: bool, first: Any) -> list[Match]:
    """``matches`` (each with its product's ``VARIANT_FIELD`` value) with the products of the
    value ``first`` (None: none) ahead, and only the best of each value with ``collapse``."""
    if first is not None:
        matches = sorted(matches, key=lambda m: m.variant != first)
    if not collapse:
        return matches
    seen: set[Any] = set()
    kept = []
    for match in matches:
        if is_variant_value(match.variant):
            if match.variant in seen:
                continue
            seen.add(match.variant)
        kept.append(match)
    return kept


def _source_column(model: type[models.Model], attname: str, quote: Any) -> RawSQL:
    """The column ``attname`` of a gallery statement's source photo (`gallery.SOURCE`), as a
    query vector of the image search inside it, quoted by ``quote`` (its connection's)."""
    field = model._meta.get_field(attname)
    column = quote(field.column)
    return RawSQL(f"{SOURCE}.{column}", (), output_field=field)


# Compiled image searches of gallery statements (`_GallerySearch._sql`) by all they depend
# on: building and compiling a blended search costs about 10 ms of Python, and its SQL names
# the source row's columns, not a vector, so it is the same for every query.
_COMPILED: dict[tuple[Any, ...], tuple[str, tuple[Any, ...]]] = {}
_COMPILED_MAX = 256


class _GallerySearch:
    """The tries of one gallery search (`VisualQuerySet._gallery`): an image search per
    query, the photos of ``product`` or the ``vectors`` (by aspect), all in one statement
    (`visual_reco.gallery.statement`), answering each product once by its best image."""

    def __init__(self, images: VisualQuerySet, embedding: Any, blend: Blend | None, *,
                 product: Any = None, vectors: dict[str, Any] | None = None,
                 variant: tuple[str, Any] | None = None, variants: bool = False) -> None:
        self.images, self.embedding = images, embedding
        self.product, self.variant, self.variants = product, variant, variants
        self.key = embedding.product_key()
        self.filtered = bool(images.query.where)
        self.connection = connections[images.db]
        quote = self.connection.ops.quote_name
        model = embedding.model
        self.pk = quote(model._meta.pk.column)
        columns = {SHAPE: embedding.attname,
                   **{aspect: embedding.aspect_name(aspect) for aspect in embedding.aspects}}
        # The parameters of the source rows' FROM item and of their condition.
        self.source_params: list[Any] = []
        self.where, self.params = "", []
        sourced = True  # the search names the source row's columns (its SQL can be kept)
        if product is not None:
            # Each photo's own vectors: the search names the source row's columns.
            self.sources = f"{quote(model._meta.db_table)} AS {SOURCE}"
            self.where = (f"{SOURCE}.{quote(self.key.column)} = %s AND "
                          f"{SOURCE}.{quote(embedding.column)} IS NOT NULL")
            self.params = [product]
            wanted = blend.aspects if blend is not None else (SHAPE,)
            queries = {aspect: _source_column(model, columns[aspect], quote)
                       for aspect in (SHAPE, *wanted) if aspect in columns}
        elif any(hasattr(vector, "resolve_expression") for vector in vectors.values()):
            self.sources = f"(VALUES (0)) AS {SOURCE} ({self.pk})"
            queries = {aspect: _query_vector(vector) for aspect, vector in vectors.items()}
            sourced = False
        else:
            # The vectors as the one source row, so the search's SQL is that of a product's.
            aspects = [aspect for aspect in vectors if aspect in columns]
            names = ", ".join(quote(model._meta.get_field(columns[a]).column) for a in aspects)
            casts = ", ".join(["%s::halfvec"] * len(aspects))
            self.sources = f"(VALUES (0, {casts})) AS {SOURCE} ({self.pk}, {names})"
            self.source_params = [_vector_text(vectors[aspect]) for aspect in aspects]
            queries = {aspect: _source_column(model, columns[aspect], quote)
                       for aspect in aspects}
        self.cacheable = sourced and not self.filtered and variant is None
        self.queries = queries
        self.blend = None
        if blend is not None:
            usable = _usable(blend, embedding, queries)
            if not usable.plain:
                self.blend = usable
        # Whether the rows are ranked exactly (a selective filter): decided once, by an
        # EXPLAIN of the filtered rows.
        self.exact = self.filtered and self._exact(self._hits(first_pool(1), alone=True))

    def _hits(self, pool: int, *, alone: bool = False) -> VisualQuerySet:
        """The image search of one query for ``pool`` rows, as a queryset (``alone``: as SQL
        of its own, without the reference to the source photo)."""
        images = self.images
        if self.product is not None and not alone:
            # Not the source photo itself (its other photos are left out with the product).
            images = images.exclude(pk=_source_column(
                images.model, images.model._meta.pk.attname, self.connection.ops.quote_name))
        if self.blend is None:
            return images.similar_to_vector(self.queries[SHAPE], pool,
                                            field=self.embedding.name, _filtered=self.filtered)
        return images._blended(self.blend, self.queries, pool, self.embedding, self.filtered,
                               variant=self.variant)

    def _exact(self, hits: VisualQuerySet) -> bool:
        if self.blend is None:
            return hits._exact() is not None
        return hits._exact_candidates_wanted()

    def _sql(self, pool: int, exact: bool) -> tuple[str, tuple[Any, ...]]:
        """The image search's SQL for ``pool`` rows (exact or by HNSW) and its parameters."""
        key = None
        if self.cacheable:
            key = (self.images.db, self.embedding.model._meta.label, self.embedding.name,
                   None if self.blend is None else self.blend.key(), pool, exact,
                   self.product is not None, int(reco_settings.ASPECT_CANDIDATES))
            compiled = _COMPILED.get(key)
            if compiled is not None:
                return compiled
        hits = self._hits(pool)
        if exact and self.blend is None:
            hits = hits._exact_ranking()
        names = [DISTANCE, "visual_score"]
        if self.embedding.colour_attname:
            names.append(MATCH_COLOUR)
        if self.blend is not None:
            names += [score_name(aspect) for aspect in self.blend.aspects]
        hits = hits.values(*names, **{HIT_PK: F("pk"), HIT_PRODUCT: F(self.key.attname),
                                      HIT_FILE: F(self.embedding.source)})
        compiler = hits.query.get_compiler(using=hits.db)
        if exact and self.blend is not None:
            with exact_candidates():
                compiled = compiler.as_sql()
        else:
            compiled = compiler.as_sql()
        if key is not None:
            if len(_COMPILED) >= _COMPILED_MAX:
                _COMPILED.clear()
            _COMPILED[key] = compiled
        return compiled

    def run(self, pool: int, limit: int | None) -> tuple[list[Match], bool]:
        """One try asking each query for ``pool`` image rows: the ``limit`` best products
        (None: all found), and whether the searches found every row there is (no try with a
        larger pool would find more)."""
        fullest, short, matches = self._run(pool, limit, self.where, self.params, self.exact)
        if short and not self.exact:
            # A walk came back short: dead tuples (rows deleted or updated, not vacuumed
            # yet), or fewer rows than the pool. Rank those sources' rows exactly, as a
            # single search does (`VisualQuerySet._fetch_all`); the best of both tries keeps
            # each product's best image, and the first ``limit`` of both lists hold the
            # first ``limit`` of the union.
            where, params = self.where, self.params
            if self.product is not None:
                where, params = f"{where} AND {SOURCE}.{self.pk} = ANY(%s)", [*params, short]
            again, _, more = self._run(pool, limit, where, params, True)
            # Sources that were not short found the pool: then so does the maximum.
            fullest = max(fullest or 0, again or 0)
            matches = best_of(matches, more)[:limit]
        return matches, fullest is None or fullest < pool

    def _run(self, pool: int, limit: int | None, where: str, params: list[Any],
             exact: bool) -> tuple[int | None, list[Any], list[Match]]:
        """One statement: the most rows a source's search found, the sources that found
        fewer than ``pool`` and the best products."""
        quote = self.connection.ops.quote_name
        hits, hit_params = self._sql(pool, exact)
        variant = None
        if self.variants:
            field = self.embedding.product_model()._meta.get_field(
                reco_settings.VARIANT_FIELD)
            variant = (quote(field.model._meta.db_table),
                       quote(field.model._meta.pk.column), quote(field.column))
        sql = statement(hits, self.sources, where, pk=self.pk, variant=variant)
        params = [*self.source_params, *hit_params, *params, pool, self.product, limit]
        if exact:
            rows, names = self._execute(sql, params)
        else:
            ef_search = ef_search_for(self.images.model, self.images.db)
            if self.blend is not None:
                ef_search = candidate_ef_search(ef_search)
            with hnsw_settings_applied(self.images.db, ef_search):
                rows, names = self._execute(sql, params)
        return (rows[0][names["visual_fullest"]] if rows else None,
                (rows[0][names["visual_short"]] or []) if rows else [],
                [self._match(row, names) for row in rows if row[names["visual_score"]] is not None])

    def _execute(self, sql: str, params: list[Any]) -> tuple[list[tuple], dict[str, int]]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            names = {column.name: index for index, column in enumerate(cursor.description)}
            return cursor.fetchall(), names

    def _match(self, row: tuple, names: dict[str, int]) -> Match:
        """A product's best hit from a row of the statement: the image row as a model
        instance (its primary key, product and source file; the rest deferred) with its
        scores, its colour vector and the product's variant value."""
        model = self.embedding.model
        fields = [model._meta.pk, self.key, model._meta.get_field(self.embedding.source)]
        values = []
        for field, name in zip(fields, (HIT_PK, HIT_PRODUCT, HIT_FILE), strict=True):
            value = row[names[name]]
            for converter in field.get_db_converters(self.connection):
                value = converter(value, None, self.connection)
            values.append(value)
        image = model.from_db(self.images.db, [field.attname for field in fields], values)
        score = float(row[names["visual_score"]])
        image.visual_score = score
        setattr(image, DISTANCE, float(row[names[DISTANCE]]))
        if self.blend is not None:
            image.aspect_scores = {aspect: row[names[score_name(aspect)]]
                                   for aspect in self.blend.aspects}
            for aspect, value in image.aspect_scores.items():
                setattr(image, score_name(aspect), value)
        raw = row[names[MATCH_COLOUR]] if MATCH_COLOUR in names else None
        return Match(values[1], score, image, from_binary(raw) if raw is not None else None,
                     row[names["visual_variant"]])


def attach_matches(rows: list[Any], matches: dict[Any, Match]) -> None:
    """Give each product row of a gallery search its matching image (``visual_image``,
    ``visual_image_id``), that image's aspect scores and its colour vector
    (`visual_reco.gallery.COLOUR_ATTRIBUTE`)."""
    for row in rows:
        if not isinstance(row, models.Model):
            return
        match = matches.get(row.pk)
        if match is None:
            continue
        image = match.image
        row.visual_image, row.visual_image_id = image, image.pk
        scores = getattr(image, "aspect_scores", None)
        if scores is not None:
            row.aspect_scores = scores
            for aspect, value in scores.items():
                setattr(row, score_name(aspect), value)
        row.__dict__[COLOUR_ATTRIBUTE] = match.colour


def colour_attribute(embedding: Any, model: type[models.Model]) -> str | None:
    """Where a result row of ``model`` compared on ``embedding`` keeps the colour vector
    that names its colours: the field's colour column, or for a gallery field
    `visual_reco.gallery.COLOUR_ATTRIBUTE` (its matching image's); None without colour."""
    if embedding.colour_attname is None:
        return None
    return COLOUR_ATTRIBUTE if is_gallery(embedding, model) else embedding.colour_attname


def row_colour_attname(embedding: Any, model: type[models.Model]) -> str | None:
    """The colour column of ``embedding`` on ``model``'s own rows, for reading it in SQL
    (None without colour, and for a gallery field, whose colours are on its image rows)."""
    return None if is_gallery(embedding, model) else embedding.colour_attname


def deferred_vectors(model: type[models.Model]) -> list[str]:
    """Every vector column of ``model``'s own embedding fields and their aspects, to
    ``defer`` them where rows are read for display (parsing them costs, unused there)."""
    return [name for field in embedding_fields(model)
            for name in (field.attname, *map(field.aspect_name, field.aspects))]


def deferrable(embedding: Any, model: type[models.Model]) -> list[str]:
    """The vector column of ``embedding`` on ``model``'s rows, to ``defer`` it (none for a
    gallery field)."""
    return [] if is_gallery(embedding, model) else [embedding.attname]


def gallery_vectors(embedding: Any, pks: list[Any],
                    using: str | None = None) -> dict[str, np.ndarray]:
    """One vector per product of ``pks`` with an embedded image in the gallery field
    ``embedding``, by primary key as text: the mean direction of its images' vectors (what
    a product's taste or learned ranking reads where a product has one vector)."""
    key = embedding.product_key().attname
    rows = (embedding.model._base_manager.using(using)
            .filter(**{f"{key}__in": pks, f"{embedding.attname}__isnull": False})
            .values_list(key, binary_vector(embedding.attname)))
    sums: dict[str, np.ndarray] = {}
    for product, raw in rows:
        vector = from_binary(raw)
        norm = float(np.linalg.norm(vector))
        if norm > 0:
            sums[str(product)] = sums.get(str(product), 0) + vector / norm
    return {product: total / max(float(np.linalg.norm(total)), 1e-12)
            for product, total in sums.items()}


def _query_vector(vector: Any) -> Any:
    """A query vector as SQL: an expression as it is, anything else as a ``halfvec`` literal.

    The literal's text is made once here: a blend names the query vector three times
    (candidates, score, blend), and pgvector's `CosineDistance` formats a `HalfVector` anew
    for each, 2,048 numbers at about 1 ms a time (`halfvec_text`: half that).
    """
    if hasattr(vector, "resolve_expression"):
        return vector
    return Value(_vector_text(vector))


def _vector_text(vector: Any) -> str:
    """A vector (HalfVector, list or array) as ``halfvec`` text (`halfvec_text`)."""
    if not isinstance(vector, HalfVector):
        vector = HalfVector(np.asarray(vector, dtype=np.float32))
    return halfvec_text(vector)


def halfvec_text(vector: HalfVector) -> str:
    """``vector`` as ``halfvec`` text, each number to 9 significant digits: they name a
    float32 exactly, so pgvector parses back the same float16s as from `HalfVector.to_text`
    (shortest float64 digits), from text a third shorter. Each number's text is looked up
    by its 16 bits (`_half_texts`), not formatted: 2,048 formats were 0.6 ms a vector."""
    bits = vector.to_numpy().view(np.uint16)
    return "[" + b",".join(_half_texts()[bits].tolist()).decode("ascii") + "]"


@functools.cache
def _half_texts() -> np.ndarray:
    """The text of every float16 (by its bits) to 9 significant digits, as ASCII bytes:
    65,536 of at most 15 characters (1 MB), made once per process."""
    values = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
    return np.array([f"{value:.9g}".encode("ascii") for value in values.tolist()], dtype="S15")


def candidate_similarity(model: type[models.Model], pks: list[Any], blend: Blend,
                         field: str | None = None, *, using: str | None = None) -> np.ndarray:
    """The ``(n, n)`` similarity under ``blend`` of the rows ``pks`` to each other
    (`visual_reco.diversity.blend_similarity`), their vectors read in one query; an aspect
    the field lacks, and a row without a vector, count 0."""
    embedding = get_embedding_field(model, field)
    blend = _usable(blend, embedding, dict.fromkeys(blend.aspects))
    columns = {SHAPE: (embedding.attname, embedding.dimensions),
               **{a: (embedding.aspect_name(a), get_aspect(a).dimensions)
                  for a in blend.aspects if a != SHAPE}}
    if is_gallery(embedding, model):
        # Each image of each product; the products are compared by their best pair.
        key = embedding.product_key().attname
        images = list(embedding.model._base_manager.using(using)
                      .filter(**{f"{key}__in": pks, f"{embedding.attname}__isnull": False})
                      .values_list(key, *(binary_vector(c) for c, _ in columns.values())))
        similarity = blend_similarity(blend, _stacked(
            {index: row[1:] for index, row in enumerate(images)}, range(len(images)), columns))
        return pairwise_max([row[0] for row in images], pks, similarity)
    found = {row[0]: row[1:] for row in model._base_manager.using(using).filter(pk__in=pks)
             .values_list("pk", *(binary_vector(column) for column, _ in columns.values()))}
    return blend_similarity(blend, _stacked(found, pks, columns))


def _stacked(found: dict[Any, tuple[Any, ...]], keys: Any,
             columns: dict[str, tuple[str, int]]) -> dict[str, np.ndarray]:
    """The binary vectors ``found`` by key (one per column, None: missing) as an array per
    aspect, rows in the order of ``keys`` (NaN rows where missing)."""
    keys = list(keys)
    vectors = {}
    for position, (aspect, (_, dimensions)) in enumerate(columns.items()):
        rows = np.full((len(keys), dimensions), np.nan, dtype=np.float32)
        for index, key in enumerate(keys):
            raw = found.get(key, (None,) * len(columns))[position]
            if raw is not None:
                rows[index] = from_binary(raw)
        vectors[aspect] = rows
    return vectors


def _usable(blend: Blend, embedding: Any, queries: dict[str, Any]) -> Blend:
    """``blend`` without the aspects the field or the query lacks: those count 0 for every
    row, and could not find candidates."""
    missing = {a for a in blend.aspects
               if a not in queries or (a != SHAPE and a not in embedding.aspects)}
    usable = blend.without(missing)
    if not any(term.weight > 0 for term in usable.terms):
        return Blend((Term(SHAPE, 1.0),), blend.variants_first)
    return usable


def _aspect_queries(obj: models.Model, embedding: Any, blend: Blend,
                    source: models.QuerySet) -> dict[str, Any]:
    """``obj``'s vectors of the blend's aspects as query values: the loaded ones (leaving
    out those it lacks), the others read by the search itself, except the lead
    aspect's, which is read now so that a missing one is known before the search (without
    it, the other candidate aspects find no rows or arbitrary ones; those count 0 for every
    row, so the lead's own candidates hold the top rows all the same)."""
    queries: dict[str, Any] = {}
    for aspect in blend.aspects:
        if aspect == SHAPE or aspect not in embedding.aspects:
            continue
        column = embedding.aspect_name(aspect)
        if column not in obj.__dict__ and aspect == blend.lead_aspect:
            obj.__dict__[column] = (type(obj)._base_manager.using(source.db).filter(pk=obj.pk)
                                    .values_list(column, flat=True).first())
        if column in obj.__dict__:
            value = to_array(obj.__dict__[column])
            if value is not None:
                queries[aspect] = _query_vector(value)
        else:
            queries[aspect] = Subquery(source.values(column)[:1],
                                       output_field=type(obj)._meta.get_field(column))
    return queries


def photo_aspects(blend: Blend | None, embedding: Any) -> tuple[str, ...]:
    """The aspects a search photo needs for ``blend``: those it weighs that ``embedding``
    stores (the others count for nothing)."""
    if blend is None:
        return ()
    return tuple(a for a in blend.aspects if a != SHAPE and a in embedding.aspects)


def variant_attname(model: type[models.Model]) -> str | None:
    """The attribute of ``VARIANT_FIELD`` on ``model`` (None when unset or absent)."""
    name = reco_settings.VARIANT_FIELD
    if not name:
        return None
    try:
        return model._meta.get_field(name).attname
    except FieldDoesNotExist:
        return None


def _collapsed(rows: list[Any], attname: str) -> list[Any]:
    """``rows`` keeping the first of each ``attname`` value (rows without one all kept)."""
    seen: set[Any] = set()
    kept = []
    for row in rows:
        value = row.get(attname) if isinstance(row, dict) else getattr(row, attname, None)
        if is_variant_value(value) and value in seen:
            continue
        if is_variant_value(value):
            seen.add(value)
        kept.append(row)
    return kept


def is_variant_value(value: Any) -> bool:
    """Whether a ``VARIANT_FIELD`` value groups variants: a blank one (a product without a
    style code) does not, or every such product would be the others' variant."""
    return value is not None and value != ""


def estimated_rows(queryset: models.QuerySet) -> float:
    """How many rows the planner expects ``queryset`` to return (``EXPLAIN``, not run)."""
    plan = json.loads(queryset.explain(format="json"))
    return float(plan[0]["Plan"]["Plan Rows"])


def exact_cost_ms(passing: float) -> float:
    """Milliseconds an exact ranking of ``passing`` filtered rows is expected to take."""
    return EXACT_MS_PER_ROW * passing


def hnsw_cost_ms(passing: float, table: float, wanted: int, ef_search: int) -> float:
    """Milliseconds a filtered HNSW search for ``wanted`` rows is expected to take, when
    ``passing`` of the table's ``table`` rows pass its filter independently of the image.

    The iterative scan visits about ``wanted / selectivity`` tuples (at least
    ``ef_search``) until enough pass; at ``HNSW_MAX_SCAN_TUPLES`` it stops short and the
    search ranks the filtered rows exactly after all (`VisualQuerySet._fetch_all`).
    """
    if passing <= 0:
        return 0.0
    visited = max(float(ef_search), wanted * max(table, passing) / passing)
    limit = float(reco_settings.HNSW_MAX_SCAN_TUPLES)
    per_tuple = next(ms for below, ms in HNSW_MS_PER_TUPLE if below is None or table < below)
    if visited > limit:
        return per_tuple * limit + exact_cost_ms(passing)
    return per_tuple * visited


def exact_is_cheaper(passing: float, table: float, wanted: int, ef_search: int) -> bool:
    """Whether ranking the ``passing`` filtered rows exactly is expected to cost less than
    HNSW's iterative scan for ``wanted`` of them in a table of ``table`` rows
    (`exact_cost_ms`, `hnsw_cost_ms`)."""
    return exact_cost_ms(passing) <= hnsw_cost_ms(passing, table, wanted, ef_search)


def _kept(store: dict[tuple[str, str], tuple[float, Any]], model: type[models.Model],
          using: str, sql: str) -> Any:
    """The rows ``sql`` (with the quoted table name as its parameter) returns for
    ``model``'s table, read once per `TABLE_ROWS_TTL` seconds per process into ``store``."""
    key = (using, model._meta.db_table)
    now = time.monotonic()
    cached = store.get(key)
    if cached is None or cached[0] < now:
        connection = connections[using]
        with connection.cursor() as cursor:
            cursor.execute(sql, [connection.ops.quote_name(model._meta.db_table)])
            cached = store[key] = (now + TABLE_ROWS_TTL, cursor.fetchall())
    return cached[1]


def table_rows(model: type[models.Model], using: str) -> float:
    """The planner's estimate of ``model``'s rows (``pg_class.reltuples``, kept up to date
    by autovacuum's ANALYZE; 0 for a table never analysed), read once per `TABLE_ROWS_TTL`
    seconds per process."""
    found = _kept(_table_rows, model, using,
                  "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)")
    return max(float(found[0][0]), 0.0) if found else 0.0


def partial_hnsw_indexes(model: type[models.Model], using: str) -> frozenset[str]:
    """The names of the partial HNSW indexes on ``model``'s table (a ``WHERE`` condition, as
    a shop declares for a filter it uses often), read once per `TABLE_ROWS_TTL` seconds."""
    found = _kept(_partial_indexes, model, using,
                  "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                  "JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = to_regclass(%s) "
                  "AND i.indpred IS NOT NULL AND a.amname = 'hnsw'")
    return frozenset(name for (name,) in found)


def index_names(plan: Any) -> set[str]:
    """Every ``Index Name`` in an ``EXPLAIN (FORMAT JSON)`` plan (parsed)."""
    if isinstance(plan, list):
        return set().union(*(index_names(item) for item in plan))
    if not isinstance(plan, dict):
        return set()
    names = {plan["Index Name"]} if "Index Name" in plan else set()
    return names.union(*(index_names(value) for value in plan.values()
                         if isinstance(value, (list, dict))))


def ef_search_for(model: type[models.Model], using: str) -> int:
    """``hnsw.ef_search`` for searches of ``model``'s table: ``HNSW_EF_SEARCH``, or with
    "auto" the first of `AUTO_EF_SEARCH` whose size bound the table's estimated rows are
    under."""
    configured = reco_settings.HNSW_EF_SEARCH
    if configured != "auto":
        return int(configured)
    rows = table_rows(model, using)
    return next(ef for below, ef in AUTO_EF_SEARCH if below is None or rows < below)


def hnsw_settings(ef_search: int | None = None) -> tuple[str, str, str]:
    """``hnsw.ef_search`` (``HNSW_EF_SEARCH`` unless given; "auto" without a table is its
    smallest table's value), ``hnsw.iterative_scan`` and ``hnsw.max_scan_tuples`` as set."""
    if ef_search is None:
        configured = reco_settings.HNSW_EF_SEARCH
        ef_search = AUTO_EF_SEARCH[0][1] if configured == "auto" else configured
    return (str(ef_search), reco_settings.HNSW_ITERATIVE_SCAN,
            str(reco_settings.HNSW_MAX_SCAN_TUPLES))


def candidate_ef_search(ef_search: int) -> int:
    """``hnsw.ef_search`` for a blend's candidate searches (each aspect's index walk):
    the table's ``ef_search`` (`ef_search_for`), raised to ``ASPECT_CANDIDATES`` plus
    `CANDIDATE_EF_MARGIN` when that is more.

    The graph walk's first pass yields ``ef_search`` rows; needing even one more (the source
    itself is among its own nearest and is filtered out) sends pgvector's iterative scan on
    a second pass that cost more than the first (EXPLAIN ANALYZE at 10k rows: first row
    after 2.7 ms, the 101st after 10.9 ms).
    """
    return max(int(ef_search), int(reco_settings.ASPECT_CANDIDATES) + CANDIDATE_EF_MARGIN)


@contextmanager
def hnsw_settings_applied(using: str, ef_search: int | None = None) -> Iterator[None]:
    """Run the block's queries with the configured HNSW settings (``ef_search`` instead of
    ``HNSW_EF_SEARCH`` when given).

    In autocommit mode with ``HNSW_SETTINGS_SCOPE="session"`` (the default) they are set
    once per database connection, so a query costs no extra round trips. Inside a
    transaction they are set for it only (a rolled-back session ``SET`` would revert behind
    our back); with ``"transaction"`` scope (PgBouncer in transaction pooling, where the
    server session is not ours) every query gets a transaction of its own to set them in.
    """
    connection = connections[using]
    values = hnsw_settings(ef_search)
    if connection.in_atomic_block:
        _set_hnsw(connection, values, local=True)
        yield
    elif reco_settings.HNSW_SETTINGS_SCOPE == "session":
        connection.ensure_connection()
        applied = getattr(connection, "_visual_reco_hnsw", None)
        if not (applied and applied[0] is connection.connection and applied[1] == values):
            _set_hnsw(connection, values, local=False)
            connection._visual_reco_hnsw = (connection.connection, values)
        yield
    else:
        with transaction.atomic(using=using, savepoint=False):
            _set_hnsw(connection, values, local=True)
            yield


@contextmanager
def index_walk(using: str, filtered: bool = True) -> Iterator[None]:
    """Run the block's queries with ``enable_sort`` off when ``filtered``: a filtered search
    sent to HNSW (`VisualQuerySet._exact_wanted` found it cheaper) then walks the index
    instead of the planner's own choice, which for a filter on an indexed column is to read
    every passing row through its B-tree and sort them (at 100k rows, ``bucket < 10``:
    p50 92 ms that way, 11 ms by the index). Every plan but the index walk sorts, so no
    other plan is left; the setting is put back after the block, in one more round trip
    each way."""
    if not filtered:
        yield
        return
    connection = connections[using]
    local = connection.in_atomic_block
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('enable_sort'), "
                       "set_config('enable_sort', 'off', %s)", [local])
        previous = cursor.fetchone()[0]

    def restore() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('enable_sort', %s, %s)", [previous, local])

    try:
        yield
    except Exception:
        # In a transaction its end (the rollback an error leads to) restores a local
        # setting; outside one the session keeps it, unless the connection is gone too.
        if not local:
            with suppress(DatabaseError):
                restore()
        raise
    restore()


def _set_hnsw(connection: Any, values: tuple[str, str, str], *, local: bool) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('hnsw.ef_search', %s, %s),"
                       " set_config('hnsw.iterative_scan', %s, %s),"
                       " set_config('hnsw.max_scan_tuples', %s, %s)",
                       [values[0], local, values[1], local, values[2], local])


def visual(queryset: models.QuerySet) -> VisualQuerySet:
    """``queryset`` as a `VisualQuerySet` (same filters), for models with a plain manager."""
    if isinstance(queryset, VisualQuerySet):
        return queryset
    return VisualQuerySet(model=queryset.model, query=queryset.query.chain(),
                          using=queryset._db, hints=queryset._hints)
