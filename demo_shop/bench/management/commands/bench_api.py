"""``manage.py bench_api``: the similar-products and photo-search endpoints served by
gunicorn, under a closed-loop load on loopback at increasing concurrency."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from demo_shop.bench.catalog_padding import ensure_demo_catalog, pad_catalog, remove_padding
from demo_shop.bench.helpers import HOST, gunicorn_demo, machine_line, write_section
from demo_shop.bench.loadgen import LoadResult, get_requests, multipart_post, run_load
from demo_shop.bench.samples import kitchenware_photos
from demo_shop.shop.models import Product


class Command(BaseCommand):
    """Start gunicorn, load each endpoint for a bounded time per concurrency, write a table."""

    help = "Benchmark the API under load (gunicorn + loopback load generator)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--seconds", type=float, default=10.0)
        parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16, 32])
        parser.add_argument("--search-concurrency", type=int, nargs="+", default=[1, 2, 4])
        parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1) + 1,
                            help="gunicorn processes (default: 2 x cores + 1, as gunicorn advises)")
        parser.add_argument("--threads", type=int, default=2, help="threads per process")
        parser.add_argument("--catalog-size", type=int, default=100_000, help=(
            "pad the catalog with synthetic products up to this size for the run "
            "(0: the catalog as it is)"))
        parser.add_argument("--keep-padding", action="store_true",
                            help="leave the synthetic products in the catalog afterwards")
        parser.add_argument("--products", type=int, default=1000,
                            help="distinct products the similar requests cycle through")
        parser.add_argument("--no-search", action="store_true",
                            help="skip the photo-search endpoint")
        parser.add_argument("--no-write", action="store_true",
                            help="print the results instead of writing docs/BENCHMARKS.md")

    def handle(self, *args: Any, **options: Any) -> None:
        ensure_demo_catalog(say=self.stdout.write)
        padded = pad_catalog(options["catalog_size"], say=self.stdout.write) if options[
            "catalog_size"] else 0
        try:
            catalog = Product.objects.filter(image_embedding_status="ready").count()
            rows = self._measure(options)
        finally:
            if padded and not options["keep_padding"]:
                remove_padding(say=self.stdout.write)
        if options["no_write"]:
            return
        self._write(rows, catalog, options)

    def _measure(self, options: dict[str, Any]) -> list[Row]:
        # A random sample of the whole catalog, so the padding is queried as much as the rest.
        pks = list(Product.objects.filter(image_embedding_status="ready").order_by("?")
                   .values_list("pk", flat=True)[:options["products"]])
        paths = [f"/api/visual-reco/products/{pk}/similar/?limit=8" for pk in pks]
        rows: list[Row] = []
        for cache in (False, True):
            with self._server(options, cache=cache) as (port, _):
                if cache:  # every product asked once: the steady state of a busy shop
                    run_load(HOST, port, get_requests(HOST, paths), 4, 0,
                             max_requests=len(pks))
                for level in options["concurrency"]:
                    rows.append(Row("similar", cache, level, run_load(
                        HOST, port, get_requests(HOST, paths), level, options["seconds"])))
                    self._report(rows[-1])
        if options["no_search"]:
            return rows
        photo = kitchenware_photos()[3].path.read_bytes()
        search = multipart_post(HOST, "/api/visual-reco/search/", "image", "photo.jpg", photo)
        with self._server(options, cache=False, warm_models=True) as (port, _):
            for level in options["search_concurrency"]:
                rows.append(Row("photo search", False, level, run_load(
                    HOST, port, search, level, options["seconds"])))
                self._report(rows[-1])
        return rows

    def _server(self, options: dict[str, Any], *, cache: bool,
                warm_models: bool = False) -> Any:
        """gunicorn serving the demo, the similar-products cache on or off."""
        return gunicorn_demo(options["workers"], options["threads"],
                             {"DEMO_SIMILAR_CACHE": "1" if cache else "0",
                              "DEMO_RATE_LIMITS": "0"},
                             warm_models=warm_models)

    def _report(self, row: Row) -> None:
        result = row.result
        self.stdout.write(f"{row.endpoint}{' (cached)' if row.cache else ''} x{row.level}: "
                          f"{result.rate:.0f} req/s, p50 {result.percentile(50):.1f} ms, "
                          f"p99 {result.percentile(99):.1f} ms, {result.errors} errors")
        self.stdout.flush()

    def _write(self, rows: list[Row], catalog: int, options: dict[str, Any]) -> None:
        lines = ["| endpoint | similar-products cache | concurrent connections | req/s | "
                 "p50 ms | p99 ms | errors |", "|---|---|---:|---:|---:|---:|---:|"]
        for row in rows:
            result = row.result
            cache = ("warm" if row.cache else "off") if row.endpoint == "similar" else "-"
            lines.append(f"| {row.endpoint} | {cache} | {row.level} | {result.rate:.0f} | "
                         f"{result.percentile(50):.1f} | {result.percentile(99):.1f} | "
                         f"{result.errors} |")
        body = (
            f"gunicorn `demo_shop.wsgi` with {options['workers']} processes x "
            f"{options['threads']} threads, DEBUG off, {catalog:,} embedded products "
            "(the demo catalog padded with synthetic products whose vectors are drawn like "
            "the ones in *Nearest-neighbour queries at scale*, see "
            "`demo_shop/bench/catalog_padding.py`); Postgres and Redis on the same machine; "
            "a closed-loop asyncio load generator "
            f"on the same machine too ({machine_line()}), {options['seconds']:.0f} s per "
            "row, keep-alive. Everything shares the 2 cores. `similar` cycles through "
            f"{options['products']:,} random products "
            "(`GET /api/visual-reco/products/<pk>/similar/?limit=8`), once with "
            "`SIMILAR_CACHE` off (every request runs the HNSW query) and once with it on, after "
            "each product was asked once (the cache's steady state; a save, delete or new "
            "embedding empties it). `photo search` posts one kitchenware photo "
            "(`QUERY_EMBEDDING=\"process\"`, query multi-crop on). Which gunicorn process a "
            "keep-alive connection lands on is up to the kernel, so at a given concurrency one "
            "process can get most connections and one core: rows vary from run to run (seen "
            "on this machine: 239-350 req/s uncached and 274-561 cached at the same "
            "concurrency).\n\n"
            + "\n".join(lines) + "\n\nCommand: `make bench` (runs `manage.py bench_api`).")
        path = write_section(f"## API under load\n\n{body}")
        self.stdout.write(f"Wrote {path}")


@dataclass
class Row:
    """One measured line of the table."""

    endpoint: str
    cache: bool
    level: int
    result: LoadResult
