"""Pad the shop's catalog with synthetic products for benchmarks at a given catalog size.

The padding products are ordinary `Product` rows (SKU prefix ``bench-``) with a ready,
synthetic CNN-like embedding (`SyntheticVectors`), bulk-loaded with a binary ``COPY`` into a
staging table and inserted with one ``INSERT ... SELECT``; the HNSW index is rebuilt after
the load rather than updated row by row. `remove_padding` deletes them again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from demo_shop.bench.vectors_lib import (
    COPY_COLUMNS,
    Storage,
    SyntheticVectors,
    copy_payload,
    index_build_settings,
    maintenance_work_mem,
)
from demo_shop.shop.models import Product
from visual_reco.conf import reco_settings
from visual_reco.embedding import embed_objects
from visual_reco.models import EmbeddingStatus
from visual_reco.registry import get_embedding_field
from visual_reco.result_cache import invalidate

SKU_PREFIX = "bench-"
STAGING = "bench_catalog_staging"
HALFVEC = Storage("halfvec", 2048)


def padding_count() -> int:
    """How many synthetic products the catalog holds."""
    return Product.objects.filter(sku__startswith=SKU_PREFIX).count()


def _hnsw_index():
    field = get_embedding_field(Product)
    return next(index for index in Product._meta.indexes
                if list(index.fields) == [field.name])


def _without_index(change: Callable[[], None], rows: int) -> None:
    """Run ``change`` without the HNSW index, then build it: one build beats 100k inserts."""
    index = _hnsw_index()
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {connection.ops.quote_name(index.name)}")
    try:
        change()
    finally:
        mwm = maintenance_work_mem(rows, HALFVEC)
        with connection.cursor() as cursor, index_build_settings(cursor, mwm):
            with connection.schema_editor(atomic=False) as editor:
                editor.add_index(Product, index)
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {Product._meta.db_table}")
    invalidate(Product)  # the rows changed without signals


def pad_catalog(size: int, *, seed: int = 0, chunk_size: int = 5_000,
                say: Callable[[str], None] = print) -> int:
    """Add synthetic products until the catalog has ``size`` products; return how many.

    New rows copy image path and embedder fingerprint from a real ready product (so image
    URLs resolve and sweeps do not take them for stale); 90% are in stock.
    """
    missing = size - Product.objects.count()
    if missing <= 0:
        return 0
    field = get_embedding_field(Product)
    template = (Product.objects.filter(**{field.status_name: EmbeddingStatus.READY})
                .exclude(sku__startswith=SKU_PREFIX).order_by("pk").first())
    image = template.image.name if template else ""
    fingerprint = getattr(template, field.fingerprint_name) if template else ""
    first_id = padding_count()
    data = SyntheticVectors(seed=seed)
    say(f"Padding the catalog with {missing:,} synthetic products")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {STAGING}")
        cursor.execute(f"CREATE UNLOGGED TABLE {STAGING} (id bigint, category integer, "
                       "bucket integer, image varchar(100), embedding halfvec(2048))")
        for rows in data.chunks(first_id + missing, chunk_size):
            keep = rows.ids > first_id
            if not keep.any():
                continue
            rows.ids, rows.category = rows.ids[keep], rows.category[keep]
            rows.bucket, rows.vectors = rows.bucket[keep], rows.vectors[keep]
            with cursor.copy(f"COPY {STAGING} ({COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)"
                             ) as copy:
                copy.write(copy_payload(rows, HALFVEC, rows.vectors))
    table = Product._meta.db_table
    # The status columns as the field writes them; the vector comes from the staging table.
    state = field.state(EmbeddingStatus.READY, fingerprint=fingerprint, at=timezone.now())
    del state[field.attname]
    columns = {
        "sku": f"'{SKU_PREFIX}' || id", "name": "'Synthetic product ' || id",
        "category": "'Synthetic ' || category", "price": "10 + bucket", "in_stock": "bucket >= 10",
        "image": "%s", field.attname: "embedding", **dict.fromkeys(state, "%s"),
    }
    _without_index(lambda: _insert(table, columns, [image, *state.values()]), size)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {STAGING}")
    return missing


def _insert(table: str, columns: dict[str, str], params: list[Any]) -> None:
    names = ", ".join(connection.ops.quote_name(name) for name in columns)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} ({names}) SELECT {', '.join(columns.values())} "
                       f"FROM {STAGING}", params)


def ensure_demo_catalog(say: Callable[[str], None] = print) -> int:
    """Import the demo catalog if needed and embed what is not ready, in this process.

    Benchmarks need real embedded products; this makes them work on a fresh machine
    without a worker. Returns how many products were embedded.
    """
    call_command("import_catalog")
    field = get_embedding_field(Product)
    waiting = list(Product.objects.exclude(sku__startswith=SKU_PREFIX).exclude(
        **{field.status_name: EmbeddingStatus.READY}).exclude(**{field.source: ""})
        .values_list("pk", flat=True))
    if waiting:
        say(f"Embedding {len(waiting)} products in this process")
    size = int(reco_settings.BATCH_SIZE)
    for start in range(0, len(waiting), size):
        embed_objects(Product, waiting[start:start + size])
    return len(waiting)


def remove_padding(say: Callable[[str], None] = print) -> int:
    """Delete the synthetic products and rebuild the index for the rest; return how many."""
    count = padding_count()
    if not count:
        return 0
    say(f"Removing {count:,} synthetic products")
    _without_index(lambda: Product.objects.filter(sku__startswith=SKU_PREFIX)._raw_delete(
        connection.alias), Product.objects.count() - count)
    return count
