"""Nearest-neighbour queries on `ImageEmbeddingField` columns.

``Product.objects.filter(in_stock=True).visually_similar(product, limit=8)`` orders by cosine
distance through the HNSW index. pgvector 0.8's iterative index scan keeps scanning until
``limit`` rows pass the filters, so a selective filter does not silently return fewer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, Self

import numpy as np
from django.db import connections, models, transaction
from django.db.models import Exists, F, Func, Subquery
from pgvector import HalfVector
from pgvector.django import CosineDistance

from visual_reco.conf import reco_settings
from visual_reco.query_photos import embed_query
from visual_reco.registry import get_embedding_field

DISTANCE = "visual_distance"


def vector_of(obj: models.Model, field: str | None = None) -> np.ndarray | None:
    """The stored embedding of ``obj`` as float32 (read from the database if deferred)."""
    embedding = get_embedding_field(type(obj), field)
    if embedding.attname in obj.__dict__:
        value = obj.__dict__[embedding.attname]
    else:
        value = type(obj)._base_manager.filter(pk=obj.pk).values_list(
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


class VisualQuerySet(models.QuerySet):
    """A QuerySet with ``visually_similar``, ``similar_to_vector`` and ``similar_to_image``."""

    _visual_search = False
    # The rows a filtered search chooses from (None: no caller filters), for `_exact`.
    _visual_candidates: models.QuerySet | None = None

    def _clone(self) -> Self:
        clone = super()._clone()
        clone._visual_search = self._visual_search
        clone._visual_candidates = self._visual_candidates
        return clone

    def similar_to_vector(self, vector: Any, limit: int | None = None, *,
                          field: str | None = None, _filtered: bool | None = None) -> Self:
        """The ``limit`` rows nearest to ``vector``, annotated with ``visual_distance``
        (cosine distance, 0 = same direction) and ``visual_score`` (1 - distance).

        When the queryset is filtered and the planner expects at most
        ``EXACT_SEARCH_MAX_ROWS`` rows to pass, those rows are ranked exactly instead of
        walking the HNSW graph, which would have to skip almost everything it visits.
        """
        embedding = get_embedding_field(self.model, field)
        filtered = bool(self.query.where) if _filtered is None else _filtered
        limit = reco_settings.DEFAULT_LIMIT if limit is None else int(limit)
        query = (vector if hasattr(vector, "resolve_expression")
                 else HalfVector(np.asarray(vector, dtype=np.float32)))
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

    def visually_similar(self, obj: models.Model, limit: int | None = None, *,
                         field: str | None = None) -> Self:
        """Rows that look like ``obj`` (itself excluded), nearest first.

        Empty when ``obj`` has no embedding yet. When ``obj`` was loaded without its vector
        (``defer``), the database reads it in the same query instead of sending it back
        and forth.
        """
        embedding = get_embedding_field(type(obj), field)
        filtered = bool(self.query.where)
        others = self.exclude(pk=obj.pk)
        if embedding.attname in obj.__dict__:
            vector = to_array(obj.__dict__[embedding.attname])
            if vector is None:
                return self.none()
            return others.similar_to_vector(vector, limit, field=field, _filtered=filtered)
        source = type(obj)._base_manager.using(self.db).filter(
            pk=obj.pk, **{f"{embedding.attname}__isnull": False})
        query = Subquery(source.values(embedding.attname)[:1], output_field=embedding)
        return others.filter(Exists(source)).similar_to_vector(query, limit, field=field,
                                                               _filtered=filtered)

    def similar_to_image(self, file: IO[bytes], limit: int | None = None, *,
                         field: str | None = None) -> Self:
        """Rows that look like the photo in ``file``, embedded as every photo search is
        (`visual_reco.query_photos.embed_query`: size limit, multi-crop, process or worker).

        Raises `visual_reco.images.ImageError` for a file that is not a usable image and
        `visual_reco.query_photos.SearchUnavailable` when no worker answers in time.
        """
        embedding = get_embedding_field(self.model, field)
        vector = embed_query(file, embedder=embedding.embedder)
        return self.similar_to_vector(vector, limit, field=embedding.name)

    def _fetch_all(self) -> None:
        if not self._visual_search or self._result_cache is not None:
            return super()._fetch_all()
        exact = self._exact()
        if exact is not None:
            self._result_cache = list(exact._iterable_class(exact))
            if self._prefetch_related_lookups and not self._prefetch_done:
                self._prefetch_related_objects()
        else:
            with hnsw_settings_applied(self.db):
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

    def explain(self, *, format: str | None = None, **options: Any) -> str:
        """``EXPLAIN`` under the HNSW settings the query runs with (they change the plan)."""
        if not self._visual_search:
            return super().explain(format=format, **options)
        exact = self._exact()
        if exact is not None:
            return exact.explain(format=format, **options)
        with hnsw_settings_applied(self.db):
            return super().explain(format=format, **options)

    def _exact(self) -> Self | None:
        """This search as an exact ranking of the filtered rows, when few enough pass."""
        threshold = reco_settings.EXACT_SEARCH_MAX_ROWS
        if self._visual_candidates is None or not threshold:
            return None
        if estimated_rows(self._visual_candidates) > threshold:
            return None
        return self._exact_ranking()

    def _exact_ranking(self) -> Self:
        """This search ranking every candidate row by its exact distance (no index)."""
        exact = self._chain()
        exact._visual_search = False
        # An expression, not the bare distance, so the HNSW index cannot serve the order.
        exact.query.order_by = ((models.F(DISTANCE) + 0.0).asc(),)
        return exact


def estimated_rows(queryset: models.QuerySet) -> float:
    """How many rows the planner expects ``queryset`` to return (``EXPLAIN``, not run)."""
    plan = json.loads(queryset.explain(format="json"))
    return float(plan[0]["Plan"]["Plan Rows"])


def hnsw_settings() -> tuple[str, str, str]:
    """``hnsw.ef_search``, ``hnsw.iterative_scan`` and ``hnsw.max_scan_tuples`` as set."""
    return (str(reco_settings.HNSW_EF_SEARCH), reco_settings.HNSW_ITERATIVE_SCAN,
            str(reco_settings.HNSW_MAX_SCAN_TUPLES))


@contextmanager
def hnsw_settings_applied(using: str) -> Iterator[None]:
    """Run the block's queries with the configured HNSW settings.

    In autocommit mode with ``HNSW_SETTINGS_SCOPE="session"`` (the default) they are set
    once per database connection, so a query costs no extra round trips. Inside a
    transaction they are set for it only (a rolled-back session ``SET`` would revert behind
    our back); with ``"transaction"`` scope (PgBouncer in transaction pooling, where the
    server session is not ours) every query gets a transaction of its own to set them in.
    """
    connection = connections[using]
    values = hnsw_settings()
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
