"""Picked for you: products for one visitor, from its recent events (anonymous: its
visitor keys; logged in, with ``FEEDBACK["STORE_USER_ID"]``: also its user id), by the
``PICKS`` options of its A/B variant (a variant's ``RANKING`` ``{"PICKS": "best_sellers"}``).

``taste``: the visitor's latest ``MAX_EVENTS`` events within ``WINDOW_DAYS`` (two index
scans), the vectors of its ``MAX_PRODUCTS`` weightiest products (by primary key), their
weighted mean (`visual_reco.feedback.taste`; with ``COLOUR_WEIGHT``, their colour vectors' too,
read in the same query), one HNSW query for the ``POOL`` x ``limit`` nearest products,
re-scored by the visitor's category affinities, its colour and every shopper's rates (as the
re-ranking scores them). On a product page the page's product (``product``) is
blended into the taste by ``CONTEXT_WEIGHT``, is not shown, and gives the category when
none is passed; what the page's other lists showed before (`note_shown`) is not shown
again. A visitor without a liked
product, and the ``best_sellers`` strategy, get the best-converting products of the current
category instead. Either way what the visitor bought, dismissed, opened or put in the cart
is left out, and a short list is filled with best sellers.

Each row carries ``visual_score`` (cosine similarity to the taste; None for a best seller),
``feedback_score`` (the category and colour terms plus the rates' term, or the smoothed
conversion rate) and ``reco_score``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured, ValidationError
from django.db import connections, models
from django.http import HttpRequest
from django.utils import timezone

from visual_reco.choices import EventType
from visual_reco.conf import DEFAULTS, reco_settings
from visual_reco.databases import read_database, reading
from visual_reco.feedback.events import stored_user_id
from visual_reco.feedback.evidence import evidence_for, prior_for
from visual_reco.feedback.experiments import Variant
from visual_reco.feedback.ranking import feedback_terms
from visual_reco.feedback.taste import (
    Taste,
    colour_affinities,
    in_context,
    product_weights,
    strongest,
    taste_of,
)
from visual_reco.feedback.visitors import keys_within, tracking_allowed, visitor_id
from visual_reco.models import FeedbackEvent, FeedbackProductStats, quoted_table
from visual_reco.pk_rows import converted, rows_by_pk
from visual_reco.query import (
    DISTANCE,
    binary_vector,
    deferrable,
    from_binary,
    gallery_vectors,
    row_colour_attname,
    to_array,
    visual,
)
from visual_reco.registry import get_embedding_field, is_gallery, product_model

TASTE = "taste"
BEST_SELLERS = "best_sellers"
STRATEGIES = (TASTE, BEST_SELLERS)
# Products the visitor is not shown again: bought, dismissed, or already opened or in the
# cart (picks are for finding something new; the product page and the cart show those).
HIDING_EVENTS = frozenset({EventType.PURCHASE, EventType.DISMISS, EventType.CLICK,
                           EventType.ADD_TO_CART})
# Ranked best sellers kept per category: enough for MAX_LIMIT after leaving out what a
# visitor bought and what the candidates' filters drop.
BEST_SELLERS_DEPTH = 300
MAX_CACHED_RANKINGS = 512
HISTORY = "_visual_reco_history"
SHOWN = "_visual_reco_shown"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_best_sellers: dict[tuple[str, str | None, float], tuple[float, list[tuple[str, float]]]] = {}


@dataclass(frozen=True)
class PickOptions:
    """The ``PICKS`` settings one list is picked with."""

    strategy: str
    event_weights: dict[str, float]
    half_life_days: float
    window_days: float
    max_events: int
    max_products: int
    context_weight: float
    category_weight: float
    colour_weight: float
    ctr_weight: float
    conversion_weight: float
    feedback_surfaces: tuple[str, ...]
    pool: int
    prior_strength: float
    best_sellers_ttl: float

    @classmethod
    def of(cls, variant: Variant | None = None) -> PickOptions:
        """The options of ``variant``: ``PICKS``, overridden by the variant's ``RANKING``
        ``"PICKS"`` (a strategy's name, or a dict of ``PICKS`` keys)."""
        merged = dict(reco_settings.PICKS)
        override = variant.ranking.get("PICKS") if variant else None
        if isinstance(override, str):
            merged["STRATEGY"] = override
        elif isinstance(override, dict):
            merged.update(override)
        if merged["STRATEGY"] not in STRATEGIES:
            raise ImproperlyConfigured(f"VISUAL_RECO['PICKS']['STRATEGY'] must be one of "
                                       f"{STRATEGIES}, not {merged['STRATEGY']!r}")
        weights = {**DEFAULTS["PICKS"]["EVENT_WEIGHTS"], **merged["EVENT_WEIGHTS"]}
        return cls(strategy=merged["STRATEGY"],
                   event_weights={kind: float(weight) for kind, weight in weights.items()},
                   half_life_days=float(merged["HALF_LIFE_DAYS"]),
                   window_days=float(merged["WINDOW_DAYS"]),
                   max_events=max(0, int(merged["MAX_EVENTS"])),
                   max_products=max(1, int(merged["MAX_PRODUCTS"])),
                   context_weight=float(merged["CONTEXT_WEIGHT"]),
                   category_weight=float(merged["CATEGORY_WEIGHT"]),
                   colour_weight=float(merged["COLOUR_WEIGHT"]),
                   ctr_weight=float(merged["CTR_WEIGHT"]),
                   conversion_weight=float(merged["CONVERSION_WEIGHT"]),
                   feedback_surfaces=tuple(merged["FEEDBACK_SURFACES"]),
                   pool=max(1, int(merged["POOL"])),
                   prior_strength=float(merged["PRIOR_STRENGTH"]),
                   best_sellers_ttl=float(merged["BEST_SELLERS_TTL"]))


@dataclass(frozen=True)
class Picks:
    """A list picked for a visitor, and how: ``source`` is ``"taste"`` or
    ``"best_sellers"`` (what the token records as the list's source)."""

    products: list[models.Model]
    source: str


def recent_events_query(raw_id: str | None, user_id: str, now: datetime,
                        options: PickOptions) -> tuple[str, list[Any]] | None:
    """The SQL and parameters of `recent_events` (None when there is no one to read)."""
    since = now - timedelta(days=options.window_days)
    parts, params = [], []
    events = quoted_table(FeedbackEvent)
    if raw_id and options.max_events:
        keys = keys_within(raw_id, now, timedelta(days=options.window_days))
        parts.append(f"""
            SELECT e.id, e.type, e.product, e.occurred_at
            FROM unnest(%s::varchar[]) AS k(visitor) CROSS JOIN LATERAL (
                SELECT id, type, product, occurred_at FROM {events}
                WHERE visitor = k.visitor AND occurred_at >= %s
                ORDER BY occurred_at DESC LIMIT %s) AS e""")
        params += [keys, since, options.max_events]
    if user_id and options.max_events:
        # user_id <> '' spelled out: the partial index on user_id requires it.
        parts.append(f"""
            (SELECT id, type, product, occurred_at FROM {events}
             WHERE user_id = %s AND user_id <> '' AND occurred_at >= %s
             ORDER BY occurred_at DESC LIMIT %s)""")
        params += [user_id, since, options.max_events]
    if not parts:
        return None
    # UNION, not UNION ALL: an event stored with both the key and the user id counts once.
    # The time as whole microseconds since the epoch (exact): parsing 1,000 timestamps cost
    # more than the query.
    return (f"""SELECT type, product,
                       (extract(epoch FROM occurred_at) * 1000000)::bigint AS occurred_us
                FROM ({" UNION ".join(parts)}) AS recent
                ORDER BY occurred_at DESC LIMIT %s""", [*params, options.max_events])


def recent_events(raw_id: str | None, user_id: str, now: datetime,
                  options: PickOptions) -> list[tuple[str, str, float]]:
    """``(type, product, age in days)`` of the latest ``MAX_EVENTS`` events of visitor
    ``raw_id`` (under each of its keys within ``WINDOW_DAYS``) and of ``user_id``, newest
    first. Each key and the user id is one index scan that stops after ``MAX_EVENTS`` rows."""
    query = recent_events_query(raw_id, user_id, now, options)
    if query is None:
        return []
    # The same float as (now - occurred_at).total_seconds(): microseconds / 10**6, rounded once.
    aware = timezone.make_aware(now) if timezone.is_naive(now) else now
    now_us = (aware - EPOCH) // timedelta(microseconds=1)
    with connections[read_database(FeedbackEvent)].cursor() as cursor:
        cursor.execute(*query)
        return [(kind, product, (now_us - when_us) / 1_000_000 / 86400.0)
                for kind, product, when_us in cursor.fetchall()]


def history(request: HttpRequest | None, options: PickOptions | None = None,
            now: datetime | None = None) -> list[tuple[str, str, float]]:
    """`recent_events` of this request's visitor (none when it may not be tracked), read
    once per request: the lists of one page share them."""
    options = options or PickOptions.of()
    now = now or timezone.now()
    key = (options.window_days, options.max_events)
    cached = getattr(request, HISTORY, None)
    if cached is not None and cached[0] == key:
        return cached[1]
    raw_id, user_id = (visitor_id(request), stored_user_id(request)) if tracking_allowed(
        request) else (None, "")
    events = recent_events(raw_id, user_id, now, options)
    if request is not None:
        setattr(request, HISTORY, (key, events))
    return events


def note_shown(request: HttpRequest | None, products: Iterable[Any]) -> None:
    """Remember that this request's page shows ``products`` (or primary keys): picks
    rendered later on the same page leave them out."""
    if request is not None:
        shown = getattr(request, SHOWN, None)
        if shown is None:
            shown = set()
            setattr(request, SHOWN, shown)
        shown.update(str(getattr(product, "pk", product)) for product in products)


def _category_field(model: type[models.Model]) -> models.Field | None:
    """The model's ``CATEGORY_FIELD``, if it has one."""
    try:
        return model._meta.get_field(reco_settings.CATEGORY_FIELD)
    except FieldDoesNotExist:
        return None


def _pks(model: type[models.Model], ids: list[str]) -> list[Any]:
    """``ids`` (primary keys as events store them, text) that are valid for ``model``."""
    found = []
    for value in ids:
        try:
            # clean, not to_python: it checks the range too (a 20-digit id is no integer key).
            found.append(model._meta.pk.clean(value, None))
        except ValidationError:
            continue
    return found


def row_colours(rows: Iterable[models.Model], column: str | None) -> list[np.ndarray | None]:
    """The colour vector of each row as loaded (None without one, or without ``column``)."""
    return [to_array(getattr(row, column, None)) if column else None for row in rows]


def visitor_taste(model: type[models.Model], weights: dict[str, float], options: PickOptions,
                  field: str | None = None, page: str | None = None, *, shape: bool = True,
                  colour: bool = False) -> Taste:
    """The taste of a visitor whose products weigh ``weights``: the categories, vectors
    (with ``shape``) and colour vectors (with ``colour``, when the field has them) of the
    ``MAX_PRODUCTS`` weightiest, read by primary key in one query (with the page's
    product's, blended in by ``CONTEXT_WEIGHT``)."""
    embedding = get_embedding_field(model, field)
    category = _category_field(model)
    gallery = is_gallery(embedding, model)
    colours_at = row_colour_attname(embedding, model) if colour else None
    wanted = {"shape": embedding.attname} if shape and not gallery else {}
    if colours_at:
        wanted["colour"] = colours_at
    found: dict[str, dict[str, np.ndarray]] = {name: {} for name in wanted}
    categories = {}
    chosen = strongest(weights, options.max_products)
    read = chosen + ([page] if page is not None and shape and options.context_weight > 0
                     else [])
    using = read_database(model)
    rows = _taste_rows(model, using, _pks(model, read), list(wanted.values()), category)
    for row in rows:
        product = str(row[0])
        for position, name in enumerate(wanted, start=1):
            if row[position] is not None:
                found[name][product] = from_binary(row[position])
        if category is not None and row[-1] is not None:
            categories[product] = str(row[-1])
    vectors, colours = found.get("shape", {}), found.get("colour")
    if shape and gallery:  # a product of several photos: their mean direction
        vectors = gallery_vectors(embedding, _pks(model, read), using)
    taste = taste_of({product: weights[product] for product in chosen}, vectors, categories,
                     colours)
    if page is None:
        return taste
    return in_context(taste, vectors.get(page), options.context_weight,
                      (colours or {}).get(page))


def _taste_rows(model: type[models.Model], using: str, pks: list[Any], vectors: list[str],
                category: models.Field | None) -> list[tuple[Any, ...]]:
    """``(pk, *vectors, category)`` of the rows with primary keys ``pks``, each vector
    (``halfvec`` attnames) in pgvector's binary form (`visual_reco.query.from_binary`) and
    None without one: a statement written here rather than built by the ORM per call (the
    queryset and its compilation cost more than the query), and unordered (the model's
    ``Meta.ordering`` would sort the rows, vectors and all)."""
    if not pks:
        return []
    connection = connections[using]
    quote = connection.ops.quote_name
    pk = model._meta.pk
    columns = ([quote(pk.column)]
               + [f"halfvec_send({quote(model._meta.get_field(name).column)})"
                  for name in vectors]
               + ([quote(category.column)] if category is not None else []))
    table = model._meta.db_table
    read = {0: pk.get_col(table),
            **({len(columns) - 1: category.get_col(table)} if category is not None else {})}
    values = [pk.get_db_prep_value(value, connection, prepared=False) for value in pks]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(columns)} FROM {quote(table)} "
                       f"WHERE {quote(pk.column)} = ANY(%s)", [values])
        return converted(cursor.fetchall(), read, connection)


def history_taste(request: HttpRequest | None, model: type[models.Model],
                  field: str | None = None, *, colour: bool = False,
                  options: PickOptions | None = None) -> Taste:
    """This request's visitor's category affinities (-1 to 1) and, with ``colour``, its
    colour, from its recent events: the categories (and colour vectors) of its weightiest
    products, read by primary key in one query (no CNN vectors)."""
    events = history(request, options)
    if not events or (_category_field(model) is None and not colour):
        return Taste(None)
    options = options or PickOptions.of()
    weights = product_weights(events, options.event_weights, options.half_life_days)
    return visitor_taste(model, weights, options, field, shape=False, colour=colour)


def best_converting(model: type[models.Model], category: Any,
                    options: PickOptions) -> list[tuple[str, float]]:
    """``(product, smoothed conversion rate)`` of the products of ``category`` (None: all)
    that converted, best first, at most ``BEST_SELLERS_DEPTH``: carts and purchases on every
    surface (organic ones included) per examined impression (at least one per conversion),
    smoothed towards the mean of those products by ``PRIOR_STRENGTH`` pseudo-views. Kept
    ``BEST_SELLERS_TTL`` seconds per process: it is the same for every visitor, and a sum
    over the products' totals."""
    value = None if category is None else str(getattr(category, "pk", category))
    key = (model._meta.label, value, options.prior_strength)
    now = time.monotonic()
    cached = _best_sellers.get(key)
    if cached is not None and cached[0] >= now:
        return cached[1]
    ids = None
    if category is not None:
        ids = [str(pk) for pk in reading(model._default_manager.filter(
            **{reco_settings.CATEGORY_FIELD: category})).values_list("pk", flat=True)]
    ranking: list[tuple[str, float]] = []
    if ids is None or ids:
        with connections[read_database(FeedbackProductStats)].cursor() as cursor:
            cursor.execute(f"""
                WITH totals AS (
                    SELECT product, sum(examined) AS examined,
                           sum(add_to_carts + purchases) AS conversions
                    FROM {quoted_table(FeedbackProductStats)}
                    WHERE %s::varchar[] IS NULL OR product = ANY(%s::varchar[])
                    GROUP BY product),
                per_product AS (
                    -- A sale of a product no list showed (organic) was seen at least once.
                    SELECT product, greatest(examined, conversions) AS views, conversions
                    FROM totals),
                mean AS (
                    SELECT (sum(conversions) + 0.5) / (sum(views) + 1.0) AS rate
                    FROM per_product)
                SELECT product, (conversions + rate * %s) / (views + %s) AS score
                FROM per_product, mean WHERE conversions > 0
                ORDER BY score DESC, product LIMIT %s""",
                           [ids, ids, options.prior_strength, options.prior_strength,
                            BEST_SELLERS_DEPTH])
            ranking = [(product, float(score)) for product, score in cursor.fetchall()]
    if len(_best_sellers) >= MAX_CACHED_RANKINGS:
        _best_sellers.clear()
    _best_sellers[key] = (now + options.best_sellers_ttl, ranking)
    return ranking


def forget_best_sellers() -> None:
    """Rank best sellers again on next use (after a roll-up in the same process, in tests)."""
    _best_sellers.clear()


def _nearest(candidates: models.QuerySet, taste: Taste, limit: int, hidden: set[str],
             options: PickOptions, field: str | None) -> list[models.Model]:
    """The candidates nearest to the taste, re-scored by category affinity, colour and by
    what every shopper did with them, best first.

    The ``POOL`` x ``limit`` nearest are read as primary key, distance and category (and
    colour, with ``COLOUR_WEIGHT``) only, and the ``limit`` best as rows in one more query:
    making model instances of the whole pool cost more than that query."""
    size = limit * options.pool + len(hidden)
    model = candidates.model
    embedding = get_embedding_field(model, field)
    category = _category_field(model)
    colour_column = row_colour_attname(embedding, model) if options.colour_weight else None
    columns = ["pk", DISTANCE] + ([category.attname] if category else [])
    searched = visual(candidates)
    if colour_column:
        searched = searched.annotate(pick_colour=binary_vector(colour_column))
        columns.append("pick_colour")
    nearest = searched.similar_to_vector(taste.vector, size, field=field).values_list(*columns)
    pool = [row for row in nearest if str(row[0]) not in hidden]
    colours = np.zeros(len(pool))
    if colour_column:
        colours = colour_affinities(taste, [None if row[-1] is None else from_binary(row[-1])
                                            for row in pool])
    terms = np.zeros(len(pool))
    prior = (prior_for(options.feedback_surfaces, options.prior_strength)
             if pool and (options.ctr_weight or options.conversion_weight) else None)
    if prior is not None:
        # Product-level evidence only: a pick has no source product.
        evidence = evidence_for(options.feedback_surfaces, None, [row[0] for row in pool])
        terms = feedback_terms(evidence, prior, ctr_weight=options.ctr_weight,
                               conversion_weight=options.conversion_weight)
    scored = []
    for row, term, colour in zip(pool, terms, colours, strict=True):
        value = row[2] if category else None
        affinity = taste.affinities.get(str(value), 0.0) if value is not None else 0.0
        feedback = (options.category_weight * affinity + options.colour_weight * float(colour)
                    + float(term))
        # As the query's visual_score annotation computes it (1.0 - distance, in float8).
        visual_score = 1.0 - row[1]
        scored.append((visual_score + feedback, row[0], row[1], visual_score, feedback))
    scored.sort(key=lambda pick: -pick[0])
    best = scored[:limit]
    own_colour = row_colour_attname(embedding, model)
    deferred = deferrable(embedding, model) + ([own_colour]
                                               if own_colour and not colour_column else [])
    found = {row.pk: row for row in rows_by_pk(candidates, [pick[1] for pick in best],
                                               deferred)}
    rows = []
    for reco_score, pk, distance, visual_score, feedback in best:
        row = found.get(pk)
        if row is not None:  # deleted since the search
            setattr(row, DISTANCE, distance)
            row.visual_score, row.feedback_score, row.reco_score = (visual_score, feedback,
                                                                    reco_score)
            rows.append(row)
    return rows


def _best_sellers_rows(candidates: models.QuerySet, category: Any, limit: int,
                       left_out: set[str], options: PickOptions,
                       field: str | None) -> list[models.Model]:
    """The ``limit`` best-converting candidates of ``category`` not in ``left_out``; the
    rest of the category, newest first, when too few converted; those of every category
    when the category has too few."""
    if limit <= 0:
        return []
    rows = _category_best_sellers(candidates, category, limit, left_out, options, field)
    if len(rows) < limit and category is not None:
        rows += _category_best_sellers(candidates, None, limit - len(rows),
                                       left_out | {str(row.pk) for row in rows}, options, field)
    return rows


def _category_best_sellers(candidates: models.QuerySet, category: Any, limit: int,
                           left_out: set[str], options: PickOptions,
                           field: str | None) -> list[models.Model]:
    """`_best_sellers_rows` within ``category`` (None: every category)."""
    model = candidates.model
    deferred = deferrable(get_embedding_field(model, field), model)
    wanted = [(product, rate) for product, rate in best_converting(model, category, options)
              if product not in left_out][:limit * 3]
    found = {str(row.pk): row for row in
             rows_by_pk(candidates, _pks(model, [product for product, _ in wanted]), deferred)}
    rows = []
    for product, rate in wanted:
        row = found.get(product)
        if row is not None and len(rows) < limit:
            row.visual_score, row.feedback_score, row.reco_score = None, rate, rate
            rows.append(row)
    if len(rows) < limit:
        scope = candidates
        if category is not None:
            scope = scope.filter(**{reco_settings.CATEGORY_FIELD: category})
        skipped = _pks(model, sorted(left_out | {str(row.pk) for row in rows}))
        for row in (scope.exclude(pk__in=skipped).defer(*deferred)
                    .order_by("-pk")[:limit - len(rows)]):
            row.visual_score, row.feedback_score, row.reco_score = None, 0.0, None
            rows.append(row)
    return rows


def _category_of(model: type[models.Model], product: Any) -> Any:
    """``product``'s category (read by primary key when it is one), None without one."""
    category = _category_field(model)
    if category is None:
        return None
    if isinstance(product, models.Model):
        return getattr(product, category.attname)
    return (reading(model._base_manager.filter(pk__in=_pks(model, [str(product)])))
            .values_list(category.attname, flat=True).first())


def picks_for(request: HttpRequest | None, candidates: models.QuerySet | None = None,
              limit: int | None = None, *, category: Any = None, field: str | None = None,
              variant: Variant | None = None, exclude: Iterable[Any] = (),
              product: Any = None, now: datetime | None = None) -> Picks:
    """The products picked for this request's visitor among ``candidates`` (default: the
    product model's), best first (see the module docstring). ``product`` is the page's
    product (or its primary key), if the page has one; ``category`` is the page's category,
    for a visitor without history (default: ``product``'s); ``exclude`` are products (or
    primary keys) not to show. A request that may not be tracked (Do Not Track, Global
    Privacy Control, no consent) has no history read: it gets best sellers."""
    options = PickOptions.of(variant)
    limit = reco_settings.DEFAULT_LIMIT if limit is None else int(limit)
    if candidates is None:
        candidates = product_model()._default_manager.all()
    candidates = reading(candidates)
    model = candidates.model
    field = get_embedding_field(model, field).name
    now = now or timezone.now()
    events = history(request, options, now)
    hidden = {product for kind, product, _ in events if kind in HIDING_EVENTS}
    hidden |= {str(getattr(item, "pk", item)) for item in exclude}
    hidden |= getattr(request, SHOWN, set())
    page = None
    if product is not None:
        page = str(getattr(product, "pk", product))
        hidden.add(page)
        if category is None:
            category = _category_of(model, product)
    rows: list[models.Model] = []
    source = BEST_SELLERS
    if options.strategy == TASTE and events:
        weights = product_weights(events, options.event_weights, options.half_life_days)
        if any(weight > 0 for weight in weights.values()):
            taste = visitor_taste(model, weights, options, field, page,
                                  colour=bool(options.colour_weight))
            if not taste.empty:
                rows = _nearest(candidates, taste, limit, hidden, options, field)
                source = TASTE
    shown = hidden | {str(row.pk) for row in rows}
    rows += _best_sellers_rows(candidates, category, limit - len(rows), shown, options, field)
    return Picks(rows, source)

