"""Pad the shop's catalog with synthetic products for benchmarks at a given catalog size.

The padding products are ordinary `Product` rows (SKU prefix ``bench-``) with a ready,
synthetic CNN-like embedding (`SyntheticVectors`) and a colour vector jittered from a real
product's (`jittered_colours`), bulk-loaded with a binary ``COPY`` into staging tables and
inserted with one ``INSERT ... SELECT``; the HNSW indexes (embedding and colour) are rebuilt
after the load rather than updated row by row. `remove_padding` deletes them again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from demo_shop.bench.vectors_lib import (
    COPY_COLUMNS,
    STREAM_CATALOG,
    Storage,
    SyntheticVectors,
    colour_payload,
    copy_payload,
    index_build_settings,
    jittered_colours,
    maintenance_work_mem,
)
from demo_shop.shop.models import Product
from visual_reco.conf import reco_settings
from visual_reco.embedding import embed_objects
from visual_reco.models import EmbeddingStatus
from visual_reco.query import to_array
from visual_reco.registry import get_embedding_field
from visual_reco.result_cache import invalidate

SKU_PREFIX = "bench-"
STAGING = "bench_catalog_staging"
COLOUR_STAGING = "bench_catalog_colour_staging"
HALFVEC = Storage("halfvec", 2048)
# Random streams of the colour padding (past `vectors_lib`'s, so none is shared).
STREAM_COLOUR = STREAM_CATALOG + 100


def padding_count() -> int:
    """How many synthetic products the catalog holds."""
    return Product.objects.filter(sku__startswith=SKU_PREFIX).count()


def hnsw_indexes() -> dict[str, Any]:
    """The HNSW indexes of the embedding and its aspects, by the column's field name."""
    field = get_embedding_field(Product)
    names = [field.name, *(field.aspect_name(a) for a in field.aspects)]
    return {index.fields[0]: index for index in Product._meta.indexes
            if list(index.fields)[:1] in ([n] for n in names)}


def _without_index(change: Callable[[], None], rows: int) -> dict[str, float]:
    """Run ``change`` without the HNSW indexes, then build them (one build beats 100k
    inserts); return each build's seconds by field name."""
    indexes = hnsw_indexes()
    with connection.cursor() as cursor:
        for index in indexes.values():
            cursor.execute(f"DROP INDEX IF EXISTS {connection.ops.quote_name(index.name)}")
    seconds = {}
    try:
        change()
    finally:
        mwm = maintenance_work_mem(rows, HALFVEC)
        with connection.cursor() as cursor, index_build_settings(cursor, mwm):
            with connection.schema_editor(atomic=False) as editor:
                for name, index in indexes.items():
                    started = time.perf_counter()
                    editor.add_index(Product, index)
                    seconds[name] = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {Product._meta.db_table}")
    invalidate(Product)  # the rows changed without signals
    return seconds


def real_colours() -> np.ndarray:
    """The colour vectors of the real (not padded) products, float32 (n, 112)."""
    column = get_embedding_field(Product).colour_name
    values = (Product.objects.exclude(sku__startswith=SKU_PREFIX)
              .filter(**{f"{column}__isnull": False}).order_by("pk")
              .values_list(column, flat=True))
    vectors = [to_array(v) for v in values]
    return np.array(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)


def pad_catalog(size: int, *, seed: int = 0, chunk_size: int = 5_000,
                say: Callable[[str], None] = print,
                builds: dict[str, float] | None = None) -> int:
    """Add synthetic products until the catalog has ``size`` products; return how many.

    New rows copy image path and embedder fingerprint from a real ready product (so image
    URLs resolve and sweeps do not take them for stale); 90% are in stock. Their colour
    vectors are `jittered_colours` of the real products' (none when no real product has
    one). ``builds`` receives each HNSW index build's seconds by field name.
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
    colours = real_colours()
    say(f"Padding the catalog with {missing:,} synthetic products"
        + (f", colours jittered from {len(colours):,} real ones" if len(colours) else
           ", without colour vectors (no real product has one)"))
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {STAGING}, {COLOUR_STAGING}")
        cursor.execute(f"CREATE UNLOGGED TABLE {STAGING} (id bigint, category integer, "
                       "bucket integer, image varchar(100), embedding halfvec(2048))")
        cursor.execute(f"CREATE UNLOGGED TABLE {COLOUR_STAGING} (id bigint PRIMARY KEY, "
                       f"colour halfvec({colours.shape[1] if len(colours) else 1}))")
        for index, rows in enumerate(data.chunks(first_id + missing, chunk_size)):
            keep = rows.ids > first_id
            if not keep.any():
                continue
            rows.ids, rows.category = rows.ids[keep], rows.category[keep]
            rows.bucket, rows.vectors = rows.bucket[keep], rows.vectors[keep]
            with cursor.copy(f"COPY {STAGING} ({COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)"
                             ) as copy:
                copy.write(copy_payload(rows, HALFVEC, rows.vectors))
            if len(colours):
                rng = np.random.default_rng([seed, STREAM_COLOUR, index])
                with cursor.copy(f"COPY {COLOUR_STAGING} (id, colour) FROM STDIN "
                                 "(FORMAT BINARY)") as copy:
                    copy.write(colour_payload(
                        rows.ids, jittered_colours(colours, len(rows.ids), rng)))
    table = Product._meta.db_table
    # The status columns as the field writes them; the vector comes from the staging table.
    state = field.state(EmbeddingStatus.READY, fingerprint=fingerprint, at=timezone.now())
    del state[field.attname]
    if len(colours):
        del state[field.colour_name]
    # A synthetic style has three colour variants, as Luma's styles have a few.
    columns = {
        "sku": f"'{SKU_PREFIX}' || id", "name": "'Synthetic product ' || id",
        "category": "'Synthetic ' || category", "style": f"'{SKU_PREFIX}style-' || (id / 3)",
        "price": "10 + bucket", "in_stock": "bucket >= 10", "image": "%s",
        field.attname: "embedding", **dict.fromkeys(state, "%s"),
        **({field.colour_name: "colour"} if len(colours) else {}),
    }
    seconds = _without_index(lambda: _insert(table, columns, [image, *state.values()]), size)
    say("Built the HNSW indexes: " + ", ".join(f"{name} {s:.1f} s"
                                               for name, s in seconds.items()))
    if builds is not None:
        builds.update(seconds)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {STAGING}, {COLOUR_STAGING}")
    return missing


def _insert(table: str, columns: dict[str, str], params: list[Any]) -> None:
    names = ", ".join(connection.ops.quote_name(name) for name in columns)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} ({names}) SELECT {', '.join(columns.values())} "
                       f"FROM {STAGING} LEFT JOIN {COLOUR_STAGING} USING (id)", params)


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
