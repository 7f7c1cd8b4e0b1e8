"""Keep embedding columns in the table's own pages (``STORAGE PLAIN``), not in TOAST.

A 2,048-d ``halfvec`` is 4 kB, over Postgres' 2 kB TOAST threshold, so by default every
vector lives out of line. The planner does not count TOAST reads, so on a table whose other
columns are narrow it prices an exact scan far too low and prefers it to the HNSW index (at
100k products: a 300 ms scan instead of a 4 ms index search); and each row an index scan
returns needs extra TOAST lookups. pgvector's documentation recommends ``SET STORAGE PLAIN``
for this. It applies to rows written from then on: ``visual_reco_reindex --all`` rewrites
older ones.

The small aspect vectors (`visual_reco.aspects`, a few hundred bytes) are kept inline too:
next to a ``PLAIN`` 4 kB vector a row is always over the threshold, so Postgres would move
them to TOAST, one extra lookup per row read.
"""

from __future__ import annotations

from typing import Any

from django.db import connections

from visual_reco.registry import embedded_models, embedding_fields

# Inline only while the vectors leave room in an 8 kB page for the rest of the row: on a table
# with several embedding fields the first ones declared (the default first), each followed by
# its aspects, are inlined and the others stay in TOAST, or the row would not fit in a page.
MAX_INLINE_BYTES = 6000


def vector_bytes(field: Any) -> int:
    """Bytes of one stored vector: 2 per dimension for ``halfvec``, 4 for ``vector``."""
    per_dimension = 2 if "halfvec" in field.db_type(None) else 4
    return 8 + per_dimension * field.dimensions


def inline_columns() -> dict[str, list[str]]:
    """The embedding columns to store inline, by table (within `MAX_INLINE_BYTES` a row)."""
    chosen: dict[str, list[str]] = {}
    budget: dict[str, int] = {}
    for model in embedded_models():
        for field in embedding_fields(model):
            table = field.model._meta.db_table  # a multi-table parent's field is in its table
            aspects = [field.model._meta.get_field(field.aspect_name(a)) for a in field.aspects]
            for column in [field, *aspects]:
                if column.column in chosen.get(table, []):
                    continue
                left = budget.setdefault(table, MAX_INLINE_BYTES)
                if vector_bytes(column) <= left:
                    budget[table] = left - vector_bytes(column)
                    chosen.setdefault(table, []).append(column.column)
    return chosen


def store_vectors_inline(using: str = "default", **kwargs: Any) -> list[str]:
    """``post_migrate``: set ``STORAGE PLAIN`` on the `inline_columns`; return those changed."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return []
    changed = []
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        existing = set(connection.introspection.table_names(cursor))
        for table, columns in inline_columns().items():
            if table not in existing:
                continue
            for column in columns:
                cursor.execute("SELECT attstorage FROM pg_attribute WHERE attrelid = %s::regclass"
                               " AND attname = %s", [quote(table), column])
                row = cursor.fetchone()
                if row and row[0] != "p":
                    cursor.execute(f"ALTER TABLE {quote(table)} ALTER COLUMN {quote(column)} "
                                   "SET STORAGE PLAIN")
                    changed.append(f"{table}.{column}")
    return changed
