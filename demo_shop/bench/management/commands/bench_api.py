"""``manage.py bench_api``: the similar-products and photo-search endpoints served by
gunicorn, under a closed-loop load on loopback at increasing concurrency."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from demo_shop.bench.catalog_padding import ensure_demo_catalog, pad_catalog, remove_padding
from demo_shop.bench.helpers import machine_line, stop, write_section
from demo_shop.bench.loadgen import LoadResult, get_requests, multipart_post, run_load
from demo_shop.bench.samples import kitchenware_photos
from demo_shop.shop.models import Product
from visual_reco.dev_services import free_port

HOST = "127.0.0.1"


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
            with self._server(options, cache=cache) as port:
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
        with self._server(options, cache=False, warm_models=True) as port:
            for level in options["search_concurrency"]:
                rows.append(Row("photo search", False, level, run_load(
                    HOST, port, search, level, options["seconds"])))
                self._report(rows[-1])
        return rows

    @contextmanager
    def _server(self, options: dict[str, Any], *, cache: bool,
                warm_models: bool = False) -> Iterator[int]:
        """gunicorn on a free port; with ``warm_models`` every process loads the model (and
        embeds a photo) before the first measured request, as `demo_shop.gunicorn_conf`
        does."""
        port = free_port()
        env = {**os.environ, "DJANGO_DEBUG": "0", "DEMO_SIMILAR_CACHE": "1" if cache else "0"}
        command = [sys.executable, "-m", "gunicorn", "demo_shop.wsgi", "-b", f"{HOST}:{port}",
                   "-w", str(options["workers"]), "--threads", str(options["threads"]),
                   "--log-level", "warning"]
        with tempfile.TemporaryDirectory() as ready:
            if warm_models:
                command[3:3] = ["-c", "python:demo_shop.gunicorn_conf"]
                env["GUNICORN_READY_DIR"] = ready
            server = subprocess.Popen(command, cwd=settings.BASE_DIR, env=env)
            try:
                if warm_models:
                    self._wait_for_files(Path(ready), options["workers"], server)
                self._wait_for(port)
                yield port
            finally:
                stop(server)

    @staticmethod
    def _wait_for_files(folder: Path, count: int, server: subprocess.Popen,
                        timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while len(list(folder.iterdir())) < count:
            if server.poll() is not None or time.monotonic() > deadline:
                raise CommandError("gunicorn's processes did not load the model")
            time.sleep(0.5)

    def _wait_for(self, port: int, timeout: float = 60.0) -> None:
        pk = Product.objects.filter(image_embedding_status="ready").values_list(
            "pk", flat=True).first()
        url = f"http://{HOST}:{port}/api/visual-reco/products/{pk}/similar/"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise CommandError("gunicorn did not answer")

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
