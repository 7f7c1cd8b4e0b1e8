"""Model rows by primary key through a statement compiled once per process.

Reading a few rows by primary key through the ORM builds and compiles the same ``SELECT`` on
every call: for the 8 rows of a cached similar list that was more Python than the rest of
reading them. When the queryset holds every row of its table as model instances (a default
manager's ``all()``, what the API and the tag read from unless a shop filters),
`rows_by_pk` compiles that ``SELECT ... WHERE pk = ANY(%s)`` once per model, database and
deferred columns, keeping its columns' fields, and makes the instances as the ORM does
(each field's database converters, then ``Model.from_db``) without ``raw()``'s per-call
work (mapping the cursor's column names back to fields, looking up converters); any other
queryset (filters, annotations, ``select_related``, ``values()``, prefetches) is read
through the ORM as before. The statement depends on the model and the database only, never on
``VISUAL_RECO``, so a settings change cannot make a kept one wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections, models
from django.db.models.expressions import RawSQL
from django.db.models.query import ModelIterable


@dataclass(frozen=True)
class _Statement:
    """A kept ``SELECT``: its SQL and the column expressions it reads, in order."""

    sql: str
    columns: tuple[Any, ...]
    attnames: tuple[str, ...]


_STATEMENTS: dict[tuple[Any, ...], _Statement] = {}
_STATEMENTS_MAX = 256
# Stands for the primary keys while the statement is compiled.
_KEYS = object()


def holds_every_row(queryset: models.QuerySet) -> bool:
    """Whether ``queryset`` selects every row of its table (no filter, slice, join, union,
    grouping, annotation or distinct), told without compiling it."""
    query = queryset.query
    return (not query.where and not query.annotations and not query.extra
            and not query.distinct and not query.combinator and query.group_by is None
            and not query.low_mark and query.high_mark is None
            and len(query.alias_map) <= 1)


def _statement_key(queryset: models.QuerySet, defer: Sequence[str]) -> tuple[Any, ...] | None:
    """What the kept statement of ``queryset`` depends on; None when it cannot be kept."""
    query = queryset.query
    if (not holds_every_row(queryset) or queryset._fields is not None
            or queryset._iterable_class is not ModelIterable or query.select_related
            or queryset._prefetch_related_lookups or query.select_for_update
            or queryset._known_related_objects or queryset.model._meta.parents):
        return None
    # Multi-table inheritance joins the parents' tables: left to the ORM.
    names, deferring = query.deferred_loading
    return (queryset.db, queryset.model._meta.label, tuple(sorted(names)), deferring,
            tuple(sorted(defer)))


def _compiled(queryset: models.QuerySet, defer: Sequence[str]) -> _Statement | None:
    """``queryset``'s ``SELECT`` of the rows whose primary key is in one array parameter,
    with the model's columns it reads; None when it reads anything else."""
    model = queryset.model
    quote = connections[queryset.db].ops.quote_name
    condition = RawSQL(f"{quote(model._meta.db_table)}.{quote(model._meta.pk.column)} "
                       "= ANY(%s)", (_KEYS,), output_field=models.BooleanField())
    probe = queryset.order_by().defer(*defer).filter(condition)
    compiler = probe.query.get_compiler(using=probe.db)
    sql, params = compiler.as_sql()
    if tuple(params) != (_KEYS,):  # something else took a parameter: not a plain read
        return None
    columns = tuple(column for column, _, _ in compiler.select)
    if (compiler.klass_info is None or compiler.annotation_col_map
            or list(compiler.klass_info["select_fields"])
            != list(range(len(columns)))
            or any(getattr(column, "target", None) is None for column in columns)):
        return None
    return _Statement(sql, columns, tuple(column.target.attname for column in columns))


def rows_by_pk(queryset: models.QuerySet, pks: Iterable[Any],
               defer: Sequence[str] = ()) -> list[models.Model]:
    """The rows of ``queryset`` whose primary key is in ``pks``, in no particular order, with
    the ``defer`` fields deferred: one query, compiled once when ``queryset`` holds every row
    of its table (see the module docstring), else the ORM's ``filter(pk__in=...)``."""
    pks = list(pks)
    if not pks:
        return []
    key = _statement_key(queryset, defer)
    statement = None if key is None else _STATEMENTS.get(key)
    if statement is None and key is not None:
        statement = _compiled(queryset, defer)
        if statement is not None:
            if len(_STATEMENTS) >= _STATEMENTS_MAX:
                _STATEMENTS.clear()
            _STATEMENTS[key] = statement
    if statement is None:
        found = queryset.filter(pk__in=pks).order_by()
        return list(found.defer(*defer) if defer else found)
    return _read(queryset.model, queryset.db, statement, pks)


def _read(model: type[models.Model], using: str, statement: _Statement,
          pks: list[Any]) -> list[models.Model]:
    """The instances ``statement`` reads for ``pks``, made as ``raw()`` and the ORM make
    them: each column through its field's converters (`converted`), then ``from_db``."""
    connection = connections[using]
    pk = model._meta.pk
    values = [pk.get_db_prep_value(value, connection, prepared=False) for value in pks]
    with connection.cursor() as cursor:
        cursor.execute(statement.sql, [values])
        rows = converted(cursor.fetchall(), dict(enumerate(statement.columns)), connection)
    return [model.from_db(using, statement.attnames, row) for row in rows]


def converted(rows: list[tuple[Any, ...]], columns: dict[int, Any],
              connection: Any) -> list[tuple[Any, ...]]:
    """``rows`` from a cursor as the ORM reads them: the value at each position of
    ``columns`` (position: column expression, e.g. ``field.get_col(table)``) through that
    column's database converters (the backend's, then the field's ``from_db_value``)."""
    converters = [(position, column, found) for position, column in columns.items()
                  if (found := connection.ops.get_db_converters(column)
                      + column.get_db_converters(connection))]
    if not converters:
        return rows
    result = []
    for row in rows:
        values = list(row)
        for position, column, functions in converters:
            for function in functions:
                values[position] = function(values[position], column, connection)
        result.append(tuple(values))
    return result
