"""Search by words: the text index of the products and its ranking (Postgres full-text search).

The words of each product (``TEXT_SEARCH["FIELDS"]``) are kept as a weighted ``tsvector`` in
visual_reco's own table, `visual_reco.models.TextDocument` (GIN index), one row per object by
model label and primary key as text; `index` and `unindex` are its one writer, called by the
receivers of `visual_reco.signals` in the saving transaction and by `rebuild`. The shop's
table is not migrated, the fields may follow relations, and any primary key type works.

A query is the shopper's words as ``websearch_to_tsquery`` reads them (quotes, ``or`` and
``-`` mean what a search box means; any other character is a separator, so no input is a
syntax error), ranked by ``ts_rank_cd``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from django.apps import apps
from django.contrib.postgres.search import SearchQuery, SearchRank
from django.core import checks
from django.db import DatabaseError, connections, models, router
from django.db.models import F
from django.db.models.functions import Cast, Length

from visual_reco.conf import reco_settings
from visual_reco.registry import product_models

# The annotation with a product's text rank (`ranked`).
TEXT_RANK = "text_rank"
WEIGHTS = ("A", "B", "C", "D")
# Rows written per INSERT by `index` (a rebuild's batch).
BATCH = 500


def documents_model() -> type[models.Model]:
    """`visual_reco.models.TextDocument`, looked up in the app registry: this module is
    imported (by `visual_reco.signals`) while the app loads, before models may be."""
    return apps.get_model("visual_reco", "TextDocument")


class TextQueryError(ValueError):
    """Words that cannot be searched for (too long, NUL characters); the message says why."""


def text_fields() -> list[tuple[str, str]]:
    """``TEXT_SEARCH["FIELDS"]`` as ``(path, weight)`` pairs: a dict as given, a list
    weighed A, B, C, D in order (D for the rest)."""
    configured = reco_settings.TEXT_SEARCH["FIELDS"] or {}
    if isinstance(configured, dict):
        return [(str(path), str(weight).upper()) for path, weight in configured.items()]
    return [(str(path), WEIGHTS[min(index, len(WEIGHTS) - 1)])
            for index, path in enumerate(configured)]


def fields_of(model: type[models.Model]) -> list[tuple[str, str]]:
    """The ``text_fields`` that ``model`` has (the first part of each path is a field)."""
    names = {field.name for field in model._meta.get_fields()}
    return [(path, weight) for path, weight in text_fields() if path.split("__")[0] in names]


def indexed_models() -> list[type[models.Model]]:
    """The models whose words are indexed: the product models with one of the fields."""
    return [model for model in product_models() if fields_of(model)]


def label_of(model: type[models.Model]) -> str:
    """The ``TextDocument.model`` of ``model``'s rows (a proxy's are its concrete model's)."""
    return model._meta.concrete_model._meta.label_lower


def fingerprint() -> str:
    """A hash of what a document is built from (fields, weights, configuration): rows built
    with other settings are stale (check ``visual_reco.W004``)."""
    spec = json.dumps([text_fields(), reco_settings.TEXT_SEARCH["CONFIG"]])
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _value(obj: Any, path: str) -> str:
    """The text at ``path`` of ``obj`` (``a__b`` follows a relation; a callable is called;
    None and missing are empty)."""
    value = obj
    for part in path.split("__"):
        value = getattr(value, part, None)
        if callable(value):
            value = value()
        if value is None:
            return ""
    return str(value).replace("\x00", " ")


def document_parts(obj: models.Model) -> list[tuple[str, str]]:
    """``(weight, text)`` of each indexed field of ``obj`` that has text."""
    parts = [(weight, _value(obj, path)) for path, weight in fields_of(type(obj))]
    return [(weight, text) for weight, text in parts if text.strip()]


def index(objects: Iterable[models.Model], using: str | None = None) -> int:
    """Write the documents of ``objects`` (one model), replacing those stored; an object
    without text loses its document. Returns how many were written."""
    objects = list(objects)
    if not objects:
        return 0
    model = type(objects[0])
    using = using or router.db_for_write(model)
    label, stamp = label_of(model), fingerprint()
    config = reco_settings.TEXT_SEARCH["CONFIG"]
    empty = [str(obj.pk) for obj in objects if not document_parts(obj)]
    if empty:
        unindex(model, empty, using)
    written = [obj for obj in objects if str(obj.pk) not in set(empty)]
    table = connections[using].ops.quote_name(documents_model()._meta.db_table)
    for start in range(0, len(written), BATCH):
        rows, params = [], []
        for obj in written[start:start + BATCH]:
            parts = document_parts(obj)
            vector = " || ".join(["setweight(to_tsvector(%s::regconfig, %s), %s)"] * len(parts))
            rows.append(f"(%s, %s, {vector}, %s, now())")
            params += [label, str(obj.pk)]
            for weight, text in parts:
                params += [config, text, weight]
            params.append(stamp)
        with connections[using].cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (model, object_id, document, fingerprint, updated_at) "
                f"VALUES {', '.join(rows)} ON CONFLICT (model, object_id) DO UPDATE SET "
                "document = EXCLUDED.document, fingerprint = EXCLUDED.fingerprint, "
                "updated_at = EXCLUDED.updated_at", params)
    return len(written)


def unindex(model: type[models.Model], pks: Iterable[Any], using: str | None = None) -> None:
    """Delete the documents of the objects ``pks`` of ``model``."""
    keys = [str(pk) for pk in pks]
    if keys:
        documents_model().objects.using(using or router.db_for_write(model)).filter(
            model=label_of(model), object_id__in=keys).delete()


def rebuild(model: type[models.Model], using: str | None = None, *,
            batch: int = BATCH) -> int:
    """Index every object of ``model`` again and drop the documents of objects that are gone
    (or that no longer have text). Returns how many documents it wrote."""
    using = using or router.db_for_write(model)
    label = label_of(model)
    stale = documents_model().objects.using(using).filter(model=label).exclude(
        object_id__in=model._base_manager.using(using).annotate(
            key=Cast("pk", models.CharField())).values("key"))
    stale.delete()
    paths = [path for path, _ in fields_of(model)]
    related = sorted({path.rsplit("__", 1)[0] for path in paths if "__" in path})
    rows = model._base_manager.using(using).order_by("pk")
    if related:
        rows = rows.select_related(*(name for name in related if _is_relation(model, name)))
    written, chunk = 0, []
    for obj in rows.iterator(chunk_size=batch):
        chunk.append(obj)
        if len(chunk) >= batch:
            written += index(chunk, using)
            chunk = []
    return written + index(chunk, using)


def _is_relation(model: type[models.Model], path: str) -> bool:
    """Whether ``path`` is a chain of forward relations ``select_related`` can follow."""
    for part in path.split("__"):
        field = next((f for f in model._meta.get_fields() if f.name == part), None)
        if field is None or not (field.many_to_one or field.one_to_one) or field.auto_created:
            return False
        model = field.related_model
    return True


def clean_text(raw: Any) -> str:
    """The shopper's words, stripped ("" for none), or `TextQueryError` when they are longer
    than ``TEXT_SEARCH["MAX_LENGTH"]`` or hold NUL characters (Postgres refuses those)."""
    text = "" if raw is None else str(raw).strip()
    if "\x00" in text:
        raise TextQueryError("Null characters are not allowed.")
    limit = int(reco_settings.TEXT_SEARCH["MAX_LENGTH"])
    if len(text) > limit:
        raise TextQueryError(f"Ensure this value has at most {limit} characters.")
    return text


def search_query(text: str) -> SearchQuery:
    """``text`` as a ``websearch_to_tsquery`` in the configured language."""
    return SearchQuery(text, search_type="websearch", config=reco_settings.TEXT_SEARCH["CONFIG"])


def ranked(queryset: models.QuerySet, text: str, limit: int) -> list[tuple[Any, float]]:
    """The ``limit`` products of ``queryset`` (its filters apply) whose words match ``text``,
    best first by ``ts_rank_cd`` (ties: the smaller primary key), as ``(pk, rank)``."""
    query = search_query(text)
    documents = documents_model().objects.using(queryset.db).filter(
        model=label_of(queryset.model), document=query)
    if queryset.query.where or queryset.query.is_sliced:
        documents = documents.filter(object_id__in=queryset.order_by().annotate(
            key=Cast("pk", models.CharField())).values("key"))
    # Ranked in the documents table alone: a rank per product row through a subquery cost
    # 590 ms for a word all 100k products have, against 84 ms here. Shorter keys first
    # orders integer keys as numbers.
    rows = (documents.annotate(**{TEXT_RANK: SearchRank(F("document"), query,
                                                        cover_density=True)})
            .order_by(F(TEXT_RANK).desc(), Length("object_id"), "object_id")
            .values_list("object_id", TEXT_RANK)[:limit])
    to_python = queryset.model._meta.pk.to_python
    return [(to_python(key), float(value)) for key, value in rows]


@checks.register(checks.Tags.database)
def check_text_index(databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """W004: documents were built with other ``TEXT_SEARCH`` fields or configuration (for
    the databases a command names; ``migrate`` names its own)."""
    warnings = []
    labels = [label_of(model) for model in indexed_models()]
    for alias in databases or []:
        if not labels or connections[alias].vendor != "postgresql":
            continue
        try:
            stale = (documents_model().objects.using(alias).filter(model__in=labels)
                     .exclude(fingerprint=fingerprint()).exists())
        except DatabaseError:
            continue  # no table yet: migrate creates it
        if stale:
            warnings.append(checks.Warning(
                f"The text index of DATABASES[{alias!r}] was built with other "
                "VISUAL_RECO['TEXT_SEARCH'] fields or configuration.",
                hint="Run manage.py visual_reco_text_index to rebuild it.",
                id="visual_reco.W004"))
    return warnings

