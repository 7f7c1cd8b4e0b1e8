"""``manage.py bench_gallery``: product-level queries through the demo's gallery
(``ProductImage.embedding``, issue 13 point 1) against the product's own photo
(``Product.image_embedding``), interleaved in one process.

Needs the demo's catalog with its gallery embedded (``import_catalog FOLDER`` then
``visual_reco_reindex --pending --sync``). For each of ``--queries`` source products drawn at
random (among those with an embedded gallery photo), in turn:

- similar products, ``visually_similar(product, 8)``, plain cosine and ``mode="similar"``,
  gallery field then own field;
- the ranking of a photo search, ``similar_to_vector(vector, 5, mode="similar")`` with a
  stored gallery photo's vectors as the query (no CNN time: the model's time is the same for
  both), gallery then own field;

the wall time of each (ORM included, warm Postgres cache), its SQL statements, and whether
the gallery answers held as many distinct products as asked for. ``--pad-images N`` first adds
synthetic products with 4 photos each until the gallery holds N photos (each photo the
padded product's synthetic vector plus noise, `demo_shop.bench.catalog_padding`), and
``--keep`` keeps them for the next run (else they are removed at the end).

``--answers FILE`` writes each query's products (primary keys, in order) as JSON, and
``--compare FILE`` reports the recall of this run's gallery answers against such a file's
(the products of its list found in this run's, as a share of its list): a run of other code
(an earlier commit) on the same catalog and seed writes the file, this one compares.
``--hnsw-ef-search N`` and ``--aspect-candidates N`` run every query with those settings
instead of the shop's (``HNSW_EF_SEARCH``, ``ASPECT_CANDIDATES``): with ``--compare``, what
a smaller index walk costs in recall.

    manage.py bench_gallery --queries 100
    manage.py bench_gallery --queries 100 --pad-images 100000 --keep
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from demo_shop.bench.catalog_padding import HALFVEC, SKU_PREFIX, pad_catalog, remove_padding
from demo_shop.bench.helpers import machine_line
from demo_shop.bench.vectors_lib import (
    STREAM_CATALOG,
    index_build_settings,
    maintenance_work_mem,
)
from demo_shop.shop.models import Product, ProductImage
from visual_reco.choices import EmbeddingStatus
from visual_reco.query import to_array

GALLERY = "embedding"
PHOTOS_PER_PRODUCT = 4
# How far a synthetic product's photos are from its vector (cosine to it about 0.9).
PHOTO_NOISE = 0.5
STREAM_PHOTOS = STREAM_CATALOG + 200


def percentile(values: list[float], q: float) -> float:
    """The ``q`` percentile of ``values`` (milliseconds)."""
    return float(np.percentile(values, q)) if values else float("nan")


class Command(BaseCommand):
    """Time gallery against own-field product queries, interleaved."""

    help = "Time product-level queries through the gallery against the product's own photo."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queries", type=int, default=50)
        parser.add_argument("--pad-images", type=int, default=0)
        parser.add_argument("--keep", action="store_true")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--answers", help="write each query's products here (JSON)")
        parser.add_argument("--compare", help="recall against the answers in this file")
        parser.add_argument("--hnsw-ef-search", type=int)
        parser.add_argument("--aspect-candidates", type=int)

    def handle(self, *args: Any, queries: int, pad_images: int, keep: bool, seed: int,
               answers: str | None, compare: str | None, hnsw_ef_search: int | None,
               aspect_candidates: int | None, **options: Any) -> None:
        ready = ProductImage.objects.filter(embedding_status=EmbeddingStatus.READY)
        if not ready.exists():
            raise SystemExit("No embedded gallery photo: run import_catalog FOLDER and "
                             "visual_reco_reindex --pending --sync first.")
        if pad_images:
            self._pad(pad_images, seed)
        overrides = {name: value for name, value in (("HNSW_EF_SEARCH", hnsw_ef_search),
                                                     ("ASPECT_CANDIDATES", aspect_candidates))
                     if value is not None}
        try:
            with override_settings(VISUAL_RECO={**settings.VISUAL_RECO, **overrides}):
                if overrides:
                    self.stdout.write(f"Settings: {overrides}")
                self._measure(queries, seed, answers, compare)
        finally:
            if pad_images and not keep:
                with connection.cursor() as cursor:
                    cursor.execute(f"DELETE FROM {ProductImage._meta.db_table} WHERE product_id "
                                   f"IN (SELECT id FROM {Product._meta.db_table} WHERE sku "
                                   "LIKE %s)", [SKU_PREFIX + "%"])
                remove_padding(self.stdout.write)

    def _measure(self, queries: int, seed: int, answers: str | None,
                 compare: str | None) -> None:
        rng = random.Random(seed)
        photos = list(ProductImage.objects.filter(embedding_status=EmbeddingStatus.READY)
                      .order_by().values_list("product_id", flat=True).distinct())
        images = ProductImage.objects.count()
        products = Product.objects.count()
        sources = list(Product.objects.filter(pk__in=rng.sample(photos, min(queries,
                                                                            len(photos))))
                       .exclude(image_embedding=None).defer("image_embedding"))
        rng.shuffle(sources)
        probes = {s.pk: ProductImage.objects.filter(product=s).exclude(embedding=None)
                  .values_list("embedding", "embedding_colour").first() for s in sources}
        cases: dict[str, Callable[[Product], list[Any]]] = {
            "similar, cosine, gallery": lambda p: list(
                Product.objects.visually_similar(p, 8, field=GALLERY)),
            "similar, cosine, own photo": lambda p: list(
                Product.objects.visually_similar(p, 8)),
            "similar, mode similar, gallery": lambda p: list(
                Product.objects.visually_similar(p, 8, field=GALLERY, mode="similar")),
            "similar, mode similar, own photo": lambda p: list(
                Product.objects.visually_similar(p, 8, mode="similar")),
            "photo ranking, gallery": lambda p: list(Product.objects.similar_to_vector(
                to_array(probes[p.pk][0]), 5, field=GALLERY, mode="similar",
                colour=to_array(probes[p.pk][1]))),
            "photo ranking, own photo": lambda p: list(Product.objects.similar_to_vector(
                to_array(probes[p.pk][0]), 5, mode="similar",
                colour=to_array(probes[p.pk][1]))),
        }
        for source in sources[:3]:  # warm the cache, unmeasured
            for case in cases.values():
                case(source)
        times: dict[str, list[float]] = {name: [] for name in cases}
        statements: dict[str, list[int]] = {name: [] for name in cases}
        short = dict.fromkeys(cases, 0)
        found: dict[str, dict[str, list[Any]]] = {name: {} for name in cases}
        for source in sources:
            for name, case in cases.items():
                with CaptureQueriesContext(connection) as captured:
                    started = time.perf_counter()
                    rows = case(source)
                    times[name].append((time.perf_counter() - started) * 1000)
                statements[name].append(len(captured.captured_queries))
                wanted = 5 if name.startswith("photo") else 8
                found[name][str(source.pk)] = [row.pk for row in rows]
                if len({row.pk for row in rows}) < min(wanted, products - 1):
                    short[name] += 1
        self.stdout.write(f"\n{machine_line()}; {products:,} products, {images:,} gallery "
                          f"photos, {len(sources)} source products\n")
        self.stdout.write("| query | p50 ms | p95 ms | SQL statements (median) | "
                          "answers short of distinct products |")
        self.stdout.write("| --- | --- | --- | --- | --- |")
        for name in cases:
            self.stdout.write(
                f"| {name} | {percentile(times[name], 50):.1f} | "
                f"{percentile(times[name], 95):.1f} | {int(np.median(statements[name]))} | "
                f"{short[name]} of {len(sources)} |")
        if answers:
            with open(answers, "w") as out:
                json.dump(found, out)
        if compare:
            self._compare(found, compare)

    def _compare(self, found: dict[str, dict[str, list[Any]]], path: str) -> None:
        """Recall of ``found``'s gallery answers against those in the file ``path``."""
        with open(path) as handle:
            reference = json.load(handle)
        self.stdout.write(f"\nRecall against {path} (mean share of its list found in this "
                          "run's; identical lists):")
        for name, lists in found.items():
            if "gallery" not in name or name not in reference:
                continue
            pairs = [(reference[name][pk], mine) for pk, mine in lists.items()
                     if pk in reference[name]]
            recall = [len(set(theirs) & set(mine)) / len(theirs) for theirs, mine in pairs
                      if theirs]
            same = sum(theirs == mine for theirs, mine in pairs)
            self.stdout.write(f"- {name}: recall {np.mean(recall):.4f} (min "
                              f"{min(recall, default=float('nan')):.3f}), identical "
                              f"{same} of {len(pairs)}")

    def _pad(self, total: int, seed: int) -> None:
        """Synthetic products with `PHOTOS_PER_PRODUCT` photos each until the gallery holds
        ``total`` photos (their own photo is the synthetic product vector)."""
        missing = total - ProductImage.objects.count()
        if missing <= 0:
            return
        count = -(-missing // PHOTOS_PER_PRODUCT)
        pad_catalog(Product.objects.count() + count, seed=seed, say=self.stdout.write)
        template = ProductImage.objects.filter(embedding_status=EmbeddingStatus.READY).first()
        padded = list(Product.objects.filter(sku__startswith=SKU_PREFIX)
                      .exclude(images__isnull=False).order_by("pk")
                      .values_list("pk", flat=True))
        rng = np.random.default_rng([seed, STREAM_PHOTOS])
        self.stdout.write(f"Adding {len(padded) * PHOTOS_PER_PRODUCT:,} synthetic photos")
        started = time.perf_counter()
        field = ProductImage._meta.get_field(GALLERY)
        index = field.hnsw_index(ProductImage, GALLERY)
        with connection.cursor() as cursor:
            cursor.execute(f"DROP INDEX IF EXISTS {connection.ops.quote_name(index.name)}")
        for start in range(0, len(padded), 2000):
            chunk = padded[start:start + 2000]
            vectors = np.array([
                to_array(v) for v in Product.objects.filter(pk__in=chunk).order_by("pk")
                .values_list("image_embedding", flat=True)], dtype=np.float32)
            rows = []
            for position in range(PHOTOS_PER_PRODUCT):
                noisy = vectors + PHOTO_NOISE * rng.standard_normal(
                    vectors.shape).astype(np.float32) * vectors.std(axis=1, keepdims=True)
                noisy = np.maximum(noisy, 0)
                noisy /= np.maximum(np.linalg.norm(noisy, axis=1, keepdims=True), 1e-12)
                rows += [ProductImage(
                    product_id=pk, view=f"synthetic {position}", position=position,
                    image=template.image.name, embedding=vector,
                    embedding_status=EmbeddingStatus.READY,
                    embedding_fingerprint=template.embedding_fingerprint,
                    embedding_colour=template.embedding_colour,
                    embedding_updated_at=timezone.now())
                    for pk, vector in zip(chunk, noisy, strict=True)]
            with transaction.atomic():
                ProductImage.objects.bulk_create(rows, batch_size=500)
        self.stdout.write(f"  inserted in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        mwm = maintenance_work_mem(ProductImage.objects.count(), HALFVEC)
        with connection.cursor() as cursor, index_build_settings(cursor, mwm):
            with connection.schema_editor(atomic=False) as editor:
                editor.add_index(ProductImage, index)
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {ProductImage._meta.db_table}")
        self.stdout.write(f"  HNSW index built in {time.perf_counter() - started:.0f} s")
