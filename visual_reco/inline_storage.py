"""Keep embedding columns in the table's own pages (``STORAGE PLAIN``), not in TOAST.

A 2,048-d ``halfvec`` is 4 kB, over Postgres' 2 kB TOAST threshold, so by default every
vector lives out of line. The planner does not count TOAST reads, so on a table whose other
columns are narrow it prices an exact scan far too low and prefers it to the HNSW index (at
100k products: a 300 ms scan instead of a 4 ms index search); and each row an index scan
returns needs extra TOAST lookups. pgvector's documentation recommends ``SET STORAGE PLAIN``
for this. It applies to rows written from then on: ``visual_reco_reindex --all`` rewrites
older ones.
"""

from __future__ import annotations

from typing import Any

from django.db import connections

from visual_reco.fields import embedded_models, embedding_fields

# Inline only when the vector leaves room in an 8 kB page for the rest of the row.
MAX_INLINE_BYTES = 6000


def vector_bytes(field: Any) -> int:
    """Bytes of one stored vector: 2 per dimension for ``halfvec``, 4 for ``vector``."""
    per_dimension = 2 if "halfvec" in field.db_type(None) else 4
    return 8 + per_dimension * field.dimensions


def store_vectors_inline(using: str = "default", **kwargs: Any) -> list[str]:
    """``post_migrate``: set ``STORAGE PLAIN`` on embedding columns that fit; return them."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return []
    changed = []
    with connection.cursor() as cursor:
        existing = set(connection.introspection.table_names(cursor))
        for model in embedded_models():
            table = model._meta.db_table
            if table not in existing:
                continue
            for field in embedding_fields(model):
                if vector_bytes(field) > MAX_INLINE_BYTES:
                    continue
                cursor.execute("SELECT attstorage FROM pg_attribute WHERE attrelid = %s::regclass"
                               " AND attname = %s", [connection.ops.quote_name(table),
                                                     field.column])
                row = cursor.fetchone()
                if row and row[0] != "p":
                    cursor.execute(f"ALTER TABLE {connection.ops.quote_name(table)} ALTER COLUMN "
                                   f"{connection.ops.quote_name(field.column)} SET STORAGE PLAIN")
                    changed.append(f"{table}.{field.column}")
    return changed
