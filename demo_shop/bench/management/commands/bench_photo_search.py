"""``manage.py bench_photo_search``: photo search end to end (upload -> JSON) under gunicorn
at 100k products, for each way of embedding the query photo (issue 13, point 4)."""

from __future__ import annotations

import csv
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from demo_shop.bench.catalog_padding import ensure_demo_catalog, pad_catalog, remove_padding
from demo_shop.bench.helpers import HOST, gunicorn_demo, machine_line, write_section
from demo_shop.bench.loadgen import LoadResult, multipart_posts, run_load
from demo_shop.bench.samples import kitchenware_photos
from demo_shop.shop.models import Product
from visual_reco import text_search
from visual_reco.conf import reco_settings

SIX_CROPS = "0.7"  # the default until 2026-12-01
# The words of the padding's products (`catalog_padding`): "synthetic" matches every one.
COMMON_WORD = "synthetic"
# name -> (query views, precision, words sent: none, the photo's class, or COMMON_WORD).
VARIANTS: dict[str, tuple[str, str, str]] = {
    "six crops, float32": (SIX_CROPS, "float32", ""),
    "six crops, bfloat16": (SIX_CROPS, "bfloat16", ""),
    "one pass, float32": ("0", "float32", ""),
    "one pass, bfloat16": ("0", "bfloat16", ""),
    "one pass, bfloat16, photo + class words": ("0", "bfloat16", "class"),
    "one pass, bfloat16, photo + a word every product has": ("0", "bfloat16", "common"),
}


@dataclass(frozen=True)
class Upload:
    """A search photo and the words a shopper might type with it."""

    name: str
    data: bytes
    words: str


def grocery_uploads(datasets: Path, count: int, seed: int) -> list[Upload]:
    """``count`` grocery ``val`` phone photos drawn with ``seed``, with their coarse class
    name as words ("Milk", "Apple"); none when the set is absent."""
    labels = datasets / "grocery_store" / "labels.csv"
    if not labels.exists():
        return []
    with labels.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "val"]
    rows = random.Random(seed).sample(rows, min(count, len(rows)))
    return [Upload(Path(row["path"]).name, (labels.parent / row["path"]).read_bytes(),
                   row["coarse_name"]) for row in rows]


class Command(BaseCommand):
    """Start gunicorn once per variant, search with real phone photos, write a table."""

    help = "Benchmark photo search end to end for each query-embedding variant."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--seconds", type=float, default=30.0)
        parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
        parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1) + 1,
                            help="gunicorn processes (default: 2 x cores + 1)")
        parser.add_argument("--threads", type=int, default=2, help="threads per process")
        parser.add_argument("--catalog-size", type=int, default=100_000, help=(
            "pad the catalog with synthetic products up to this size (0: as it is)"))
        parser.add_argument("--keep-padding", action="store_true",
                            help="leave the synthetic products in the catalog afterwards")
        parser.add_argument("--photos", type=int, default=60,
                            help="grocery val phone photos the searches cycle through")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--datasets", type=Path,
                            default=Path(settings.BASE_DIR).parent / "shared" / "datasets")
        parser.add_argument("--variant", dest="variants", action="append",
                            choices=list(VARIANTS), help="only these (repeatable)")
        parser.add_argument("--no-write", action="store_true",
                            help="print the results instead of writing docs/BENCHMARKS.md")

    def handle(self, *args: Any, **options: Any) -> None:
        uploads = grocery_uploads(options["datasets"], options["photos"], options["seed"])
        source = f"{len(uploads)} grocery `val` phone photos (seed {options['seed']})"
        if not uploads:
            uploads = [Upload(p.path.name, p.path.read_bytes(), p.label)
                       for p in kitchenware_photos()]
            source = f"the {len(uploads)} kitchenware photos"
        ensure_demo_catalog(say=self.stdout.write)
        padded = (pad_catalog(options["catalog_size"], say=self.stdout.write)
                  if options["catalog_size"] else 0)
        wanted = options["variants"] or list(VARIANTS)
        sends_words = any(VARIANTS[name][2] for name in wanted)
        try:
            catalog = Product.objects.filter(image_embedding_status="ready").count()
            if sends_words:
                started = time.perf_counter()
                documents = text_search.rebuild(Product)
                self.stdout.write(f"Text index: {documents:,} documents in "
                                  f"{time.perf_counter() - started:.0f} s")
            rows = self._measure(wanted, options, uploads)
        finally:
            if padded and not options["keep_padding"]:
                remove_padding(say=self.stdout.write)
                if sends_words:
                    text_search.rebuild(Product)  # drops the padding's documents
        if not options["no_write"]:
            self._write(rows, catalog, source, options)

    def _measure(self, variants: list[str], options: dict[str, Any],
                 uploads: list[Upload]) -> list[Row]:
        rows = []
        for name in variants:
            crops, precision, words = VARIANTS[name]
            texts = {"": {}, "common": {"text": COMMON_WORD}}
            search = multipart_posts(HOST, "/api/visual-reco/search/", "image", [
                (u.name, u.data, texts.get(words, {"text": u.words})) for u in uploads])
            environment = {"DEMO_SIMILAR_CACHE": "0", "DEMO_RATE_LIMITS": "0",
                           "DEMO_QUERY_MULTI_CROP": crops, "DEMO_EMBEDDER_PRECISION": precision}
            with gunicorn_demo(options["workers"], options["threads"], environment,
                               warm_models=True) as (port, _):
                run_load(HOST, port, search, 1, 0, max_requests=len(uploads))  # warm caches
                for level in options["concurrency"]:
                    row = Row(name, level, run_load(HOST, port, search, level,
                                                    options["seconds"]))
                    rows.append(row)
                    self.stdout.write(f"{name} x{level}: {row.result.rate:.2f} searches/s, "
                                      f"p50 {row.result.percentile(50):.0f} ms, p99 "
                                      f"{row.result.percentile(99):.0f} ms, "
                                      f"{row.result.errors} errors")
                    self.stdout.flush()
        return rows

    def _write(self, rows: list[Row], catalog: int, source: str,
               options: dict[str, Any]) -> None:
        lines = ["| query photo embedded as | concurrent searches | searches/s | p50 ms | "
                 "p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
        for row in rows:
            result = row.result
            lines.append(f"| {row.variant} | {row.level} | {result.rate:.2f} | "
                         f"{result.percentile(50):.0f} | {result.percentile(99):.0f} | "
                         f"{result.errors} |")
        body = (
            f"`POST /api/visual-reco/search/` from the uploaded bytes to the JSON, gunicorn "
            f"`demo_shop.wsgi` with {options['workers']} processes x {options['threads']} "
            f"threads (each with the model loaded and warm, `QUERY_EMBEDDING=\"process\"`), "
            f"DEBUG off, {catalog:,} embedded products (the demo catalog padded as in *API "
            f"under load*), `SEARCH_MODE` `{reco_settings.SEARCH_MODE}`, the category "
            f"predicted, limit {reco_settings.DEFAULT_LIMIT}. "
            f"Searches cycle through {source}; \"class words\" also send the photo's "
            f"coarse class name (\"Milk\") as `text`, which few products match, \"a word "
            f"every product has\" sends \"{COMMON_WORD}\" (all the padding's names), so "
            f"that Postgres ranks ~{catalog:,} text matches (the text index rebuilt for the "
            f"run). {options['seconds']:.0f} s per row after "
            f"one pass over the photos; the load generator on the same machine "
            f"({machine_line()}). \"six crops\": the query is the mean of the whole photo and "
            f"five crops (`QUERY_MULTI_CROP` {SIX_CROPS}, one batch of six); \"one pass\": the "
            f"whole photo (`QUERY_MULTI_CROP` 0); float32 / bfloat16: the embedder's "
            f"`precision`.\n\n" + "\n".join(lines)
            + "\n\nCommand: `manage.py bench_photo_search`.")
        path = write_section(f"## Photo search end to end\n\n{body}")
        self.stdout.write(f"Wrote {path}")


@dataclass
class Row:
    """One measured line of the table."""

    variant: str
    level: int
    result: LoadResult
