"""``manage.py bench_api``: the similar-products and photo-search endpoints served by
gunicorn, under a closed-loop load on loopback at increasing concurrency."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from demo_shop.benchtools import machine_line, replace_section, stop
from demo_shop.loadgen import LoadResult, get_requests, multipart_post, run_load
from demo_shop.shop.models import Product
from visual_reco.samples import kitchenware_photos

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Command(BaseCommand):
    """Start gunicorn, load each endpoint for a bounded time per concurrency, write a table."""

    help = "Benchmark the API under load (gunicorn + loopback load generator)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--seconds", type=float, default=10.0)
        parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
        parser.add_argument("--search-concurrency", type=int, nargs="+", default=[1, 2, 4])
        parser.add_argument("--workers", type=int, default=2, help="gunicorn processes")
        parser.add_argument("--threads", type=int, default=4, help="threads per process")

    def handle(self, *args: Any, seconds: float, concurrency: list[int],
               search_concurrency: list[int], workers: int, threads: int,
               **options: Any) -> None:
        pks = list(Product.objects.filter(image_embedding_status="ready")
                   .values_list("pk", flat=True)[:1000])
        if not pks:
            raise CommandError("No embedded products: run `make demo` (or import a catalog).")
        catalog = Product.objects.filter(image_embedding_status="ready").count()
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "demo_shop.wsgi", "-b", f"{HOST}:{port}",
             "-w", str(workers), "--threads", str(threads), "--log-level", "warning"],
            cwd=settings.BASE_DIR, env={**os.environ, "DJANGO_DEBUG": "0"})
        rows: list[tuple[str, int, LoadResult]] = []
        try:
            self._wait_for(port, pks[0])
            similar = get_requests(HOST, [f"/api/visual-reco/products/{pk}/similar/?limit=8"
                                          for pk in pks])
            for level in concurrency:
                rows.append(("similar", level, run_load(HOST, port, similar, level, seconds)))
                self._report(rows[-1])
            photo = kitchenware_photos()[3].path.read_bytes()
            search = multipart_post(HOST, "/api/visual-reco/search/", "image", "photo.jpg",
                                    photo)
            run_load(HOST, port, search, workers, 5.0)  # every worker loads its model
            for level in search_concurrency:
                rows.append(("photo search", level, run_load(HOST, port, search, level,
                                                             seconds)))
                self._report(rows[-1])
        finally:
            stop(server)
        self._write(rows, catalog, workers, threads, seconds)

    def _wait_for(self, port: int, pk: int, timeout: float = 60.0) -> None:
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

    def _report(self, row: tuple[str, int, LoadResult]) -> None:
        name, level, result = row
        self.stdout.write(f"{name} x{level}: {result.rate:.0f} req/s, p50 "
                          f"{result.percentile(50):.1f} ms, p99 {result.percentile(99):.1f} ms,"
                          f" {result.errors} errors")

    def _write(self, rows: list, catalog: int, workers: int, threads: int,
               seconds: float) -> None:
        lines = ["| endpoint | concurrent connections | req/s | p50 ms | p99 ms | errors |",
                 "|---|---|---|---|---|---|"]
        for name, level, result in rows:
            lines.append(f"| {name} | {level} | {result.rate:.0f} | {result.percentile(50):.1f}"
                         f" | {result.percentile(99):.1f} | {result.errors} |")
        body = (
            f"gunicorn `demo_shop.wsgi` with {workers} processes x {threads} threads, "
            f"DEBUG off, {catalog} embedded products; a closed-loop asyncio load generator on "
            f"the same machine ({machine_line()}), {seconds:.0f} s per row, keep-alive. "
            "`similar` cycles through up to 1,000 products "
            "(`GET /api/visual-reco/products/<pk>/similar/?limit=8`); `photo search` posts one "
            "kitchenware photo (`QUERY_EMBEDDING=\"process\"`, query multi-crop on).\n\n"
            + "\n".join(lines) + "\n\nCommand: `make bench` (runs `manage.py bench_api`).")
        path = replace_section("API under load", body)
        self.stdout.write(f"Wrote {path}")
