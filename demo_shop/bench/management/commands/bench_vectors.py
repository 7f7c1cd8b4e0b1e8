"""``manage.py bench_vectors``: nearest-neighbour query latency and recall at 10k-1M rows.

For each catalog size: synthetic CNN-like vectors are bulk-loaded (binary ``COPY``) into
benchmark tables of their own, queried without an index (exact scan), indexed with HNSW as
`ImageEmbeddingField` does, and queried through `VisualQuerySet` at several
``hnsw.ef_search``, with filters (iterative scan on and off) and, for the smaller sizes, in a
PCA-projected ``vector(d)`` column.

Results accumulate in docs/bench_vectors.json: a run replaces the results of the sizes it
measures and keeps the others (``--fresh`` starts over), so sizes can be run separately. The
``## Nearest-neighbour queries at scale`` section of docs/BENCHMARKS.md and its plot are
rendered from all of them.

    manage.py bench_vectors --sizes 10000 --queries 50       # about two minutes
    manage.py bench_vectors --quick                          # 10k and 100k
    manage.py bench_vectors --sizes 1000000                  # an hour; keeps 10k and 100k
    manage.py bench_vectors                                  # 10k, 100k and 1M: hours
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.apps.registry import Apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, models, transaction
from django.test import override_settings

from demo_shop.bench import vectors_lib as lib
from demo_shop.bench.helpers import benchmarks_path, cpu_model_and_mhz, write_section
from demo_shop.bench.vectors_lib import (
    DIMS,
    FILTERS,
    BuildResult,
    GroundTruth,
    K,
    Latency,
    QueryResult,
    Report,
    Run,
    Storage,
    SyntheticVectors,
)
from visual_reco.conf import reco_settings
from visual_reco.fields import ImageEmbeddingField
from visual_reco.query import VisualQuerySet

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
QUICK = {"sizes": [10_000, 100_000], "queries": 50, "exact_queries": 20}
FILTER_EF_SEARCH = 100
# Filtered runs: (hnsw.iterative_scan, sequential scans off). The first is the app's default.
FILTER_RUNS = (("relaxed_order", False), ("relaxed_order", True), ("off", True))
PROJECTION_SAMPLE = 20_000
RESULTS_NAME = "bench_vectors.json"
# Benchmark models live in a registry of their own, not in the project's apps.
BENCH_APPS = Apps()
_MODELS: dict[str, type[models.Model]] = {}


def table_name(size: int, storage: Storage) -> str:
    """The benchmark table for one size and storage."""
    return f"bench_vectors_{size}_{storage.slug}"


def bench_model(table: str, storage: Storage) -> type[models.Model]:
    """An unmanaged model over ``table`` with the app's field and queryset.

    ``similar_to_vector`` on it sends the same SQL as on the shop's ``Product`` (with this
    table's columns): that is the code path measured.
    """
    if table not in _MODELS:
        meta = type("Meta", (), {"managed": False, "db_table": table,
                                 "app_label": "bench_vectors", "apps": BENCH_APPS})
        _MODELS[table] = type(f"Bench_{table}", (models.Model,), {
            "__module__": __name__,
            "id": models.BigIntegerField(primary_key=True),
            "category": models.IntegerField(),
            "bucket": models.IntegerField(),
            "image": models.CharField(max_length=100),
            "embedding": ImageEmbeddingField(source="image", dimensions=storage.dims,
                                             with_companions=False),
            "objects": VisualQuerySet.as_manager(),
            "Meta": meta,
        })
    return _MODELS[table]


def hnsw_defaults() -> tuple[int, int]:
    """``m`` and ``ef_construction`` of an `ImageEmbeddingField` with default options."""
    field = ImageEmbeddingField(source="image")
    return field.hnsw_m, field.hnsw_ef_construction


@dataclass
class Measured:
    """Raw timings and results of one query configuration."""

    seconds: list[float]
    found: list[list[int]]
    plan: str

    def result(self, size: int, storage: Storage, ef_search: int,
               expected: Sequence[Sequence[int]], **extra: Any) -> QueryResult:
        """Latency and recall against ``expected`` as a `QueryResult`."""
        complete = float(np.mean([len(f) == K for f in self.found])) if self.found else 0.0
        return QueryResult(size=size, storage=storage, ef_search=ef_search,
                           latency=lib.latency_ms(self.seconds),
                           recall=lib.recall_at_k(self.found, expected), plan=self.plan,
                           complete=complete, **extra)


class Command(BaseCommand):
    """Benchmark nearest-neighbour queries at several catalog sizes."""

    help = ("Measure similar_to_vector latency and recall@10 (HNSW vs exact scan, filters, "
            "halfvec vs PCA-projected vector) and write docs/BENCHMARKS.md.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--sizes", type=int, nargs="+", help=(
            f"catalog sizes (default {' '.join(map(str, DEFAULT_SIZES))})"))
        parser.add_argument("--queries", type=int, help="timed queries per line (default 200)")
        parser.add_argument("--exact-queries", type=int, help=(
            "queries for the exact scan (default: --queries up to 100k rows, 20 above)"))
        parser.add_argument("--warmup", type=int, default=10,
                            help="unmeasured queries before each line")
        parser.add_argument("--ef-search", type=int, nargs="+", default=[40, 100, 200])
        parser.add_argument("--storages", nargs="+", default=["halfvec2048", "vector512"],
                            help="halfvec2048 and/or PCA projections such as vector512")
        parser.add_argument("--projection-max-size", type=int, default=100_000,
                            help="skip projected storages above this size")
        parser.add_argument("--chunk-size", type=int, default=5_000,
                            help="rows generated and copied at a time")
        parser.add_argument("--maintenance-work-mem", default="auto",
                            help="for the index build (default: enough for the graph)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--real-npy", help=(
            "real embeddings (.npy, n x 2048) to compare the synthetic ones with; default: "
            "the shop's ready Product embeddings when there are 100 or more"))
        parser.add_argument("--quick", action="store_true", help=(
            "sizes 10k and 100k, 50 queries, 20 exact-scan queries (explicit options win)"))
        parser.add_argument("--keep", action="store_true", help="keep the benchmark tables")
        parser.add_argument("--out", default=str(benchmarks_path()))
        parser.add_argument("--plot", default=str(benchmarks_path().parent /
                                                  "bench_latency_vs_size.png"))
        parser.add_argument("--results", help=(
            f"results of earlier runs, merged with this one's (default: {RESULTS_NAME} next "
            "to --out)"))
        parser.add_argument("--fresh", action="store_true", help=(
            "ignore earlier results: the section shows this run's sizes only"))
        parser.add_argument("--no-write", action="store_true",
                            help="print the section instead of writing the files")

    def handle(self, *args: Any, **options: Any) -> None:
        options = self._resolve(options)
        storages = [Storage.parse(s) for s in options["storages"]]
        if not any(not s.projected for s in storages):
            raise CommandError("--storages must include halfvec2048 (filters and the exact "
                               "scan are measured on it)")
        self.options = options
        self.data = SyntheticVectors(seed=options["seed"])
        self.main = next(s for s in storages if not s.projected)
        self.run = self._new_run()
        self.report = Report(data=self.data, projection_sample=PROJECTION_SAMPLE,
                             max_scan_tuples=int(reco_settings.HNSW_MAX_SCAN_TUPLES))
        warmup, queries = options["warmup"], options["queries"]
        vectors = self.data.queries(warmup + queries)
        self.warmup_queries, self.queries = vectors[:warmup], vectors[warmup:]
        self.bases = self._fit_projections(storages, options["sizes"])
        self._reference_profile(options["real_npy"])
        created: list[str] = []
        try:
            for size in options["sizes"]:
                self._run_size(size, storages, created)
        finally:
            if not options["keep"]:
                self._drop(created)
        self._write()

    # -- setup --------------------------------------------------------------------------------

    def _resolve(self, options: dict[str, Any]) -> dict[str, Any]:
        preset = QUICK if options["quick"] else {}
        for key, default in (("sizes", list(DEFAULT_SIZES)), ("queries", 200)):
            if options[key] is None:
                options[key] = preset.get(key, default)
        if options["exact_queries"] is None:
            options["exact_queries"] = preset.get("exact_queries")
        if options["queries"] < 1 or any(n < 10 * K for n in options["sizes"]):
            raise CommandError("need at least one query and sizes of 100 rows or more")
        return options

    def _say(self, message: str) -> None:
        self.stdout.write(f"[{time.strftime('%H:%M:%S')}] {message}")
        self.stdout.flush()

    def _new_run(self) -> Run:
        argv = [Path(sys.argv[0]).name if sys.argv[0].endswith("manage.py") else sys.argv[0],
                *sys.argv[1:]]
        return Run(command=f"python {shlex.join(argv)}", machine=self._machine(),
                   queries=self.options["queries"], warmup=self.options["warmup"])

    def _machine(self) -> lib.Machine:
        cpu, _ = cpu_model_and_mhz()
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('server_version'), "
                           "current_setting('shared_buffers'), "
                           "(SELECT extversion FROM pg_extension WHERE extname = 'vector')")
            postgres, shared_buffers, pgvector = cursor.fetchone()
        return lib.Machine(cpus=os.cpu_count() or 0, cpu_model=cpu,
                           date=time.strftime("%Y-%m-%d"), postgres=postgres,
                           pgvector=pgvector or "?", shared_buffers=shared_buffers,
                           load_average=os.getloadavg()[0])

    def _fit_projections(self, storages: list[Storage], sizes: list[int]
                         ) -> dict[Storage, np.ndarray]:
        projected = [s for s in storages if s.projected]
        if not projected or min(sizes) > self.options["projection_max_size"]:
            return {}
        self._say(f"Fitting PCA on {PROJECTION_SAMPLE:,} sample vectors")
        sample, _ = self.data.sample(PROJECTION_SAMPLE, self.data.rng(lib.STREAM_PROJECTION))
        basis = lib.fit_projection(sample, max(s.dims for s in projected))
        return {s: basis[:, :s.dims] for s in projected}

    def _reference_profile(self, real_npy: str | None) -> None:
        if real_npy:
            real, source = np.load(real_npy).astype(np.float32), f"`{Path(real_npy).name}`"
        else:
            real, source = self._shop_embeddings(), "the demo shop's Xception embeddings"
        if real is None or len(real) < 2 * K:
            return
        real = real[:2000]
        if real.shape[1] != DIMS:
            raise CommandError(f"{real_npy}: expected {DIMS} columns, got {real.shape[1]}")
        synthetic, _ = self.data.sample(len(real), self.data.rng(lib.STREAM_PROFILE))
        self.report.reference = (source, lib.similarity_profile(real),
                                 lib.similarity_profile(synthetic))

    def _shop_embeddings(self) -> np.ndarray | None:
        from demo_shop.bench.catalog_padding import SKU_PREFIX
        from demo_shop.shop.models import Product

        # Real photos only: bench_api's synthetic padding is drawn like the benchmark's own.
        ready = Product.objects.filter(image_embedding__isnull=False).exclude(
            sku__startswith=SKU_PREFIX)
        if ready.count() < 100:
            return None
        return np.array([np.asarray(v, dtype=np.float32) for v in
                         ready.values_list("image_embedding", flat=True)[:2000]])

    # -- one catalog size ---------------------------------------------------------------------

    def _run_size(self, size: int, storages: list[Storage], created: list[str]) -> None:
        here = [s for s in storages
                if not s.projected or size <= self.options["projection_max_size"]]
        tables = {s: table_name(size, s) for s in here}
        for storage, table in tables.items():
            self._create_table(table, storage)
            created.append(table)
        started = time.perf_counter()
        truth = self._load(size, tables)
        load_seconds = time.perf_counter() - started
        for table in tables.values():
            self._finish_table(table)
        self.report.profiles[size] = lib.query_profile(truth.full, self.queries)
        self._measure_exact(size, tables[self.main], truth)
        for storage, table in tables.items():
            self._build(size, storage, table, truth, load_seconds)
            self._measure_hnsw(size, storage, table, truth)
        self._measure_filtered(size, tables[self.main], truth)
        self.report.runs[size] = self.run

    def _create_table(self, table: str, storage: Storage) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
            cursor.execute(f"CREATE TABLE {table} (id bigint NOT NULL, category integer NOT "
                           "NULL, bucket integer NOT NULL, image varchar(100) NOT NULL, "
                           f"embedding {storage.name})")
            # As visual_reco.inline_storage does for the app's own columns.
            cursor.execute(f"ALTER TABLE {table} ALTER COLUMN embedding SET STORAGE PLAIN")

    def _load(self, size: int, tables: dict[Storage, str]) -> GroundTruth:
        """Generate, copy and remember the exact neighbours, one chunk at a time."""
        self._say(f"{size:,} rows: loading {', '.join(tables.values())}")
        projected_queries = {s: lib.project(self.queries, self.bases[s])
                             for s in tables if s.projected}
        truth = GroundTruth(self.queries, FILTERS, projected_queries)
        started, done = time.perf_counter(), 0
        for rows in self.data.chunks(size, self.options["chunk_size"]):
            projected = {s: lib.project(rows.vectors, self.bases[s]) for s in projected_queries}
            for storage, table in tables.items():
                vectors = projected.get(storage, rows.vectors)
                self._copy(table, lib.copy_payload(rows, storage, vectors))
            truth.update(rows, self.main.as_stored(rows.vectors),
                         {s: s.as_stored(v) for s, v in projected.items()})
            done += len(rows)
            self._progress(done, size, started)
        return truth

    def _progress(self, done: int, size: int, started: float) -> None:
        if done == size or done % max(size // 10, 1) < self.options["chunk_size"]:
            rate = done / max(time.perf_counter() - started, 1e-9)
            self._say(f"  {done:,}/{size:,} rows ({rate:,.0f} rows/s)")

    def _copy(self, table: str, payload: bytes) -> None:
        with connection.cursor() as cursor:
            with cursor.copy(f"COPY {table} ({lib.COPY_COLUMNS}) FROM STDIN "
                             "(FORMAT BINARY)") as copy:
                copy.write(payload)

    def _finish_table(self, table: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
            # Filter columns are indexed, as a shop indexes category or stock.
            cursor.execute(f"CREATE INDEX {table}_category ON {table} (category)")
            cursor.execute(f"CREATE INDEX {table}_bucket ON {table} (bucket)")
            cursor.execute(f"VACUUM ANALYZE {table}")

    def _build(self, size: int, storage: Storage, table: str, truth: GroundTruth,
               load_seconds: float) -> None:
        mwm = self.options["maintenance_work_mem"]
        mwm = lib.maintenance_work_mem(size, storage) if mwm == "auto" else mwm
        self._say(f"{size:,} rows: building the HNSW index on {table} "
                  f"(maintenance_work_mem {mwm}, 1 parallel worker)")
        seconds, notices = self._create_index(table, storage, mwm)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_table_size(%s), pg_relation_size(%s)",
                           [table, f"{table}_hnsw"])
            table_bytes, index_bytes = cursor.fetchone()
        exact_recall = (lib.recall_at_k(truth.projected[storage].neighbours(),
                                        truth.full.neighbours()) if storage.projected else 1.0)
        build = BuildResult(size=size, storage=storage, seconds=seconds,
                            index_mb=index_bytes / 2**20, table_mb=table_bytes / 2**20,
                            load_seconds=load_seconds, maintenance_work_mem=mwm,
                            notices=notices, exact_recall=exact_recall)
        self.report.builds.append(build)
        self._say(f"  built in {seconds:.1f} s: index {build.index_mb:,.0f} MB, "
                  f"table {build.table_mb:,.0f} MB" + "".join(f"; {n}" for n in notices))

    def _create_index(self, table: str, storage: Storage, mwm: str) -> tuple[float, list[str]]:
        m, ef_construction = hnsw_defaults()
        notices: list[str] = []
        connection.ensure_connection()
        raw = connection.connection

        def on_notice(diagnostic: Any) -> None:
            notices.append(str(diagnostic.message_primary))

        raw.add_notice_handler(on_notice)
        try:
            with connection.cursor() as cursor, lib.index_build_settings(cursor, mwm):
                started = time.perf_counter()
                cursor.execute(f"CREATE INDEX {table}_hnsw ON {table} USING hnsw "
                               f"(embedding {storage.opclass}) "
                               f"WITH (m = {m}, ef_construction = {ef_construction})")
                seconds = time.perf_counter() - started
        finally:
            raw.remove_notice_handler(on_notice)
        return seconds, notices

    # -- queries ------------------------------------------------------------------------------

    def _queries_for(self, storage: Storage) -> tuple[np.ndarray, np.ndarray]:
        if storage.projected:
            return (lib.project(self.warmup_queries, self.bases[storage]),
                    lib.project(self.queries, self.bases[storage]))
        return self.warmup_queries, self.queries

    def _run_queries(self, model: type[models.Model], storage: Storage, *, ef_search: int,
                     iterative_scan: str = "relaxed_order", where: dict[str, int] | None = None,
                     force_index: bool = False,
                     limit: int | None = None) -> Measured:
        """Time ``similar_to_vector`` for every query under the given HNSW settings.

        ``force_index`` runs the queries in a transaction that drops the filter columns'
        B-tree indexes (rolled back afterwards) and turns sequential and bitmap scans off, so
        the planner takes the HNSW index even where it estimates reading the matching rows
        to be cheaper.
        """
        warmup, queries = self._queries_for(storage)
        if limit is not None:  # the exact scan: fewer queries, and a short warm-up
            warmup, queries = warmup[:lib.EXACT_WARMUP], queries[:limit]

        def search(vector: np.ndarray) -> models.QuerySet:
            return model.objects.filter(**(where or {})).similar_to_vector(vector, K)

        overrides = {**getattr(settings, "VISUAL_RECO", {}), "HNSW_EF_SEARCH": ef_search,
                     "HNSW_ITERATIVE_SCAN": iterative_scan}
        if force_index:  # HNSW even where the app would rank the few passing rows exactly
            overrides["EXACT_SEARCH_MAX_ROWS"] = None
        with override_settings(VISUAL_RECO=overrides), self._forced(
                model._meta.db_table if force_index else None):
            plan = lib.summarise_plan(search(queries[0]).explain())
            for vector in warmup:
                list(search(vector))
            return self._timed(search, queries, plan)

    @staticmethod
    @contextmanager
    def _forced(table: str | None) -> Iterator[None]:
        if table is None:
            yield
            return
        # DDL is transactional: the B-trees come back with the rollback.
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(f"DROP INDEX {table}_category, {table}_bucket")
                cursor.execute("SET LOCAL enable_seqscan = off")
                cursor.execute("SET LOCAL enable_bitmapscan = off")
            yield
            transaction.set_rollback(True)

    @staticmethod
    def _timed(search: Callable[[np.ndarray], models.QuerySet], queries: np.ndarray,
               plan: str) -> Measured:
        seconds, found = [], []
        for vector in queries:
            started = time.perf_counter()
            rows = list(search(vector))
            seconds.append(time.perf_counter() - started)
            found.append([row.pk for row in rows])
        return Measured(seconds, found, plan)

    def _exact_query_count(self, size: int) -> int:
        if self.options["exact_queries"] is not None:
            return min(self.options["exact_queries"], self.options["queries"])
        return self.options["queries"] if size <= 100_000 else min(20, self.options["queries"])

    def _measure_exact(self, size: int, table: str, truth: GroundTruth) -> None:
        count = self._exact_query_count(size)
        self._say(f"{size:,} rows: exact scan (no index yet), {count} queries")
        measured = self._run_queries(bench_model(table, self.main), self.main,
                                     ef_search=FILTER_EF_SEARCH, limit=count)
        result = measured.result(size, self.main, 0, truth.full.neighbours()[:count])
        self.report.exact.append(result)
        self._log(result)

    def _measure_hnsw(self, size: int, storage: Storage, table: str,
                      truth: GroundTruth) -> None:
        model = bench_model(table, storage)
        expected = truth.full.neighbours()
        for ef_search in self.options["ef_search"]:
            measured = self._run_queries(model, storage, ef_search=ef_search)
            self.report.hnsw.append(measured.result(size, storage, ef_search, expected))
            self._log(self.report.hnsw[-1])

    def _measure_filtered(self, size: int, table: str, truth: GroundTruth) -> None:
        model = bench_model(table, self.main)
        for row_filter in FILTERS:
            expected = truth.filtered[row_filter].neighbours()
            for iterative_scan, force_index in FILTER_RUNS:
                measured = self._run_queries(model, self.main, ef_search=FILTER_EF_SEARCH,
                                             iterative_scan=iterative_scan,
                                             where=row_filter.orm, force_index=force_index)
                if force_index and iterative_scan == "relaxed_order" and self._same_plan(
                        measured):
                    continue  # the planner's own choice was the index: already measured
                self.report.filtered.append(measured.result(
                    size, self.main, FILTER_EF_SEARCH, expected, row_filter=row_filter,
                    iterative_scan=iterative_scan,
                    variant="forced" if force_index else ""))
                self._log(self.report.filtered[-1])

    def _same_plan(self, measured: Measured) -> bool:
        previous = self.report.filtered[-1]
        return previous.plan == measured.plan and not previous.variant

    def _log(self, r: QueryResult) -> None:
        what = ("exact scan" if r.ef_search == 0 else
                f"{r.storage.name} ef_search={r.ef_search}" + (f" {r.variant}" if r.variant
                                                                else ""))
        if r.row_filter:
            what += f" where {r.row_filter.sql}, iterative scan {r.iterative_scan}"
        latency: Latency = r.latency
        self._say(f"  {what}: p50 {latency.p50:.1f} ms, p99 {latency.p99:.1f} ms, "
                  f"recall@10 {r.recall:.3f}, {r.complete:.0%} with {K} rows [{r.plan}]")

    # -- the end ------------------------------------------------------------------------------

    def _drop(self, tables: list[str]) -> None:
        with connection.cursor() as cursor:
            for table in tables:
                cursor.execute(f"DROP TABLE IF EXISTS {table}")
        if tables:
            self._say(f"Dropped {len(tables)} benchmark tables (--keep keeps them)")

    def _results_path(self) -> Path:
        results = self.options["results"]
        return Path(results) if results else Path(self.options["out"]).parent / RESULTS_NAME

    def _merged(self, results: Path) -> Report:
        """This run's results, plus earlier ones for the sizes it did not measure."""
        if self.options["fresh"]:
            return self.report
        previous, discarded = lib.previous_results(results, self.data)
        if discarded:
            self._say(discarded)
        if previous is None:
            return self.report
        kept = [size for size in previous.sizes if size not in self.report.runs]
        if kept:
            self._say(f"Keeping the results of {', '.join(f'{s:,}' for s in kept)} rows "
                      f"from {results}")
        return lib.merge(previous, self.report)

    def _write(self) -> None:
        plot = Path(self.options["plot"])
        out = Path(self.options["out"])
        results = self._results_path()
        report = self._merged(results)
        if self.options["no_write"]:
            self.stdout.write(lib.render_section(report))
            return
        if lib.plot_latency(report, self.main, FILTER_EF_SEARCH, plot):
            report.plot = os.path.relpath(plot, out.parent)
            self._say(f"Wrote {plot}")
        else:
            self._say("matplotlib is not installed: no plot (pip install matplotlib)")
        lib.save_results(results, report)
        self._say(f"Wrote {results}")
        write_section(lib.render_section(report), out)
        self._say(f"Wrote {out}")
