"""``manage.py bench_photo_search``: photo search end to end (upload -> JSON) under gunicorn
at 100k products, for each way of embedding the query photo (issue 13, point 4), in the web
processes or in a warm query worker (``--query-embedding worker``: their memory without
TensorFlow, issue 14 point 2)."""

from __future__ import annotations

import csv
import os
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from demo_shop.bench.catalog_padding import ensure_demo_catalog, pad_catalog, remove_padding
from demo_shop.bench.helpers import (
    HOST,
    children,
    gunicorn_demo,
    machine_line,
    maps_tensorflow,
    resident_mb,
    start_worker,
    stop,
    write_section,
)
from demo_shop.bench.loadgen import LoadResult, multipart_posts, run_load
from demo_shop.bench.samples import kitchenware_photos
from demo_shop.shop.models import Product
from visual_reco import text_search
from visual_reco.conf import reco_settings

SIX_CROPS = "0.7"  # the default until 2026-12-01
QUERY_QUEUE = "bench_photo_search_query"
# The words of the padding's products (`catalog_padding`): "synthetic" matches every one.
COMMON_WORD = "synthetic"
# name -> (query views, precision or "litert" (the LiteRT embedder, float32), words sent:
# none, the photo's class, or COMMON_WORD).
VARIANTS: dict[str, tuple[str, str, str]] = {
    "six crops, float32": (SIX_CROPS, "float32", ""),
    "six crops, bfloat16": (SIX_CROPS, "bfloat16", ""),
    "one pass, float32": ("0", "float32", ""),
    "one pass, bfloat16": ("0", "bfloat16", ""),
    "one pass, LiteRT float32": ("0", "litert", ""),
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
        parser.add_argument("--query-embedding", nargs="+", choices=["process", "worker"],
                            default=["process"], help=(
                                "where the query photo is embedded: the web processes, or a "
                                "warm Celery worker on a queue of its own (a section of its "
                                "own in docs/BENCHMARKS.md)"))
        parser.add_argument("--query-workers", type=int, default=2,
                            help="processes of the query worker")
        parser.add_argument("--query-pool", nargs="+", choices=["prefork", "solo"],
                            default=["prefork"], help=(
                                "the query worker's pool, each measured (solo: one process "
                                "that runs the task itself)"))
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
            for where in options["query_embedding"]:
                for pool in options["query_pool"] if where == "worker" else [""]:
                    rows += self._measure_variant(name, where, pool, options, uploads)
        return rows

    def _measure_variant(self, name: str, where: str, pool: str, options: dict[str, Any],
                         uploads: list[Upload]) -> list[Row]:
        crops, precision, words = VARIANTS[name]
        texts = {"": {}, "common": {"text": COMMON_WORD}}
        search = multipart_posts(HOST, "/api/visual-reco/search/", "image", [
            (u.name, u.data, texts.get(words, {"text": u.words})) for u in uploads])
        environment = {"DEMO_SIMILAR_CACHE": "0", "DEMO_RATE_LIMITS": "0",
                       "DEMO_QUERY_MULTI_CROP": crops, "DEMO_EMBEDDER_PRECISION": precision,
                       "DEMO_QUERY_EMBEDDING": where, "DEMO_QUERY_QUEUE": QUERY_QUEUE}
        worker = (start_worker(QUERY_QUEUE, concurrency=options["query_workers"],
                               pool=pool, env=environment)
                  if where == "worker" else None)
        rows = []
        try:
            with gunicorn_demo(options["workers"], options["threads"], environment,
                               warm_models=True) as (port, server):
                # Warms caches, and the query worker's model (its first searches may time out).
                for _ in range(2 if worker else 1):
                    run_load(HOST, port, search, 1, 0, max_requests=len(uploads))
                for level in options["concurrency"]:
                    result = run_load(HOST, port, search, level, options["seconds"])
                    if not result.latencies:  # e.g. a migration not applied: nothing to write
                        raise CommandError(f"{name}, {where} x{level}: every search failed "
                                           f"({result.errors} errors)")
                    rows.append(Row(name, level, result, where, Memory.of(server, worker),
                                    pool))
                    self.stdout.write(
                        f"{name}, {where} {pool} x{level}: {result.rate:.2f} searches/s, p50 "
                        f"{result.percentile(50):.0f} ms, p99 {result.percentile(99):.0f} ms, "
                        f"{result.errors} errors; {rows[-1].memory}")
                    self.stdout.flush()
        finally:
            if worker:
                stop(worker)
        return rows

    def _write(self, rows: list[Row], catalog: int, source: str,
               options: dict[str, Any]) -> None:
        if "worker" in options["query_embedding"]:
            self._write_worker(rows, catalog, source, options)
            return
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


    def _write_worker(self, rows: list[Row], catalog: int, source: str,
                      options: dict[str, Any]) -> None:
        lines = ["| query photo embedded | as | concurrent searches | searches/s | p50 ms | "
                 "p99 ms | errors | web process RSS MB | TensorFlow in web processes | "
                 "query worker RSS MB |", "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
        for row in rows:
            result, memory = row.result, row.memory
            lines.append(
                f"| {self._where(row, options)} "
                f"| {row.variant} | {row.level} | {result.rate:.2f} | "
                f"{result.percentile(50):.0f} | {result.percentile(99):.0f} | {result.errors} "
                f"| {memory.web_mb:.0f} | {'yes' if memory.web_tensorflow else 'no'} | "
                f"{f'{memory.worker_mb:.0f}' if memory.worker_mb else '-'} |")
        body = (
            f"`POST /api/visual-reco/search/` from the uploaded bytes to the JSON, gunicorn "
            f"`demo_shop.wsgi` with {options['workers']} processes x {options['threads']} "
            f"threads, DEBUG off, {catalog:,} embedded products, `SEARCH_MODE` "
            f"`{reco_settings.SEARCH_MODE}`, the category predicted, limit "
            f"{reco_settings.DEFAULT_LIMIT}; the query photo embedded in each web process "
            f"(`QUERY_EMBEDDING=\"process\"`, model loaded and warm) or in a Celery worker "
            f"on the `query` queue of its own "
            f"(`QUERY_EMBEDDING=\"worker\"`, `QUEUES[\"query\"]`, model warm; the task and "
            f"its result through Redis on the same machine). Searches cycle through {source}; "
            f"{options['seconds']:.0f} s per row after a pass over the photos; the load "
            f"generator on the same machine ({machine_line()}). RSS: the largest resident set "
            f"of the gunicorn worker processes after the row (VmRSS), and the query worker's "
            f"processes summed; \"TensorFlow in web processes\": whether any maps its "
            f"library. Goal (issue 14): web process RSS <= 150 MB with photo search p50 <= "
            f"250 ms through the worker.\n\n" + "\n".join(lines)
            + "\n\nCommand: `manage.py bench_photo_search --query-embedding process worker "
            + " ".join(f"--variant '{name}'" for name in dict.fromkeys(r.variant for r in rows))
            + f" --catalog-size {options['catalog_size']} --seconds {options['seconds']:g} "
            f"--photos {options['photos']} --concurrency "
            f"{' '.join(str(level) for level in options['concurrency'])} "
            f"--query-pool {' '.join(options['query_pool'])} --query-workers "
            f"{options['query_workers']}`.")
        path = write_section(f"## Photo search through a query worker\n\n{body}")
        self.stdout.write(f"Wrote {path}")


    @staticmethod
    def _where(row: Row, options: dict[str, Any]) -> str:
        if row.where == "process":
            return "in the web process"
        if row.pool == "solo":
            return "in a query worker, `--pool solo` (one process that runs the task)"
        return f"in a query worker, prefork pool of {options['query_workers']} processes"


@dataclass(frozen=True)
class Memory:
    """The web processes' and the query worker's memory after a row."""

    web_mb: float
    web_tensorflow: bool
    worker_mb: float

    @classmethod
    def of(cls, server: subprocess.Popen, worker: subprocess.Popen | None) -> Memory:
        """Measured on gunicorn's worker processes and the query worker's (all of them)."""
        web = children(server.pid)
        pool = [worker.pid, *children(worker.pid)] if worker else []
        return cls(max(resident_mb(pid) for pid in web),
                   any(maps_tensorflow(pid) for pid in web),
                   sum(resident_mb(pid) for pid in pool))

    def __str__(self) -> str:
        return (f"web RSS {self.web_mb:.0f} MB (TensorFlow: {self.web_tensorflow}), "
                f"query worker {self.worker_mb:.0f} MB")


@dataclass
class Row:
    """One measured line of the table."""

    variant: str
    level: int
    result: LoadResult
    where: str = "process"
    memory: Memory | None = None
    pool: str = ""
