"""``manage.py bench_vector_filters``: filtered similar queries at the app's defaults, and
what each path (exact ranking, HNSW) costs, on a table `bench_vectors` kept.

    manage.py bench_vectors --sizes 100000 --storages halfvec2048 --ef-search 100 --keep
    manage.py bench_vector_filters --size 100000 --queries 200

For each filter of `vectors_lib.FILTERS`: the planner's estimate of the passing rows, the
path ``EXACT_SEARCH_MAX_ROWS`` (default "auto") takes, and latency, recall@10 and complete
answers with the defaults, with the exact path forced and with the HNSW path forced (the
filter's B-tree dropped and sequential and bitmap scans off, rolled back afterwards).
``--runs ... partial`` adds a run at the defaults with a partial HNSW index over the passing
rows (built in a transaction rolled back afterwards; its build time is printed too). The
ground truth is recomputed from the same seed as the table's load. Prints markdown rows;
nothing is written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, models, transaction
from django.test import override_settings

from demo_shop.bench import vectors_lib as lib
from demo_shop.bench.helpers import cpu_model_and_mhz
from demo_shop.bench.management.commands.bench_vectors import (
    Command as VectorsCommand,
)
from demo_shop.bench.management.commands.bench_vectors import (
    Measured,
    bench_model,
    table_name,
)
from demo_shop.bench.vectors_lib import FILTERS, GroundTruth, K, RowFilter, Storage
from visual_reco import query as query_module
from visual_reco.query import (
    ef_search_for,
    estimated_rows,
    exact_cost_ms,
    hnsw_cost_ms,
    table_rows,
)

# An EXACT_SEARCH_MAX_ROWS no filter reaches: the exact path, whatever the cost.
ALWAYS_EXACT = 10**12


class Command(BaseCommand):
    """Measure filtered searches at the defaults and on each forced path."""

    help = "Filtered similar_to_vector at the app's defaults, exact and HNSW paths forced."
    ef_override: dict[str, int] = {}

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--size", type=int, default=100_000)
        parser.add_argument("--queries", type=int, default=200)
        parser.add_argument("--warmup", type=int, default=10)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--query-offset", type=int, default=0, help=(
            "skip this many query vectors: other queries than a run with another offset "
            "(calibrate on one set, report on another)"))
        parser.add_argument("--chunk-size", type=int, default=5_000)
        parser.add_argument("--runs", nargs="+", default=["defaults", "exact", "hnsw"],
                            choices=["defaults", "exact", "hnsw", "partial"])
        parser.add_argument("--filters", nargs="+", help="e.g. 'bucket < 10' (default: all)")
        parser.add_argument("--ef-search", type=int, help=(
            "HNSW_EF_SEARCH for every run (default: as configured, \"auto\")"))

    def handle(self, *args: Any, **options: Any) -> None:
        storage = Storage("halfvec", lib.DIMS)
        table = table_name(options["size"], storage)
        if table not in connection.introspection.table_names():
            raise CommandError(f"{table} is missing: run bench_vectors --sizes "
                               f"{options['size']} --storages halfvec2048 --keep first")
        model = bench_model(table, storage)
        data = lib.SyntheticVectors(seed=options["seed"])
        offset = options["query_offset"]
        vectors = data.queries(offset + options["warmup"] + options["queries"])[offset:]
        warmup, queries = vectors[:options["warmup"]], vectors[options["warmup"]:]
        filters = [f for f in FILTERS if not options["filters"] or f.sql in options["filters"]]
        truth = GroundTruth(queries, filters, {})
        for rows in data.chunks(options["size"], options["chunk_size"]):
            truth.update(rows, storage.as_stored(rows.vectors), {})
        if options["ef_search"]:
            self.ef_override = {"HNSW_EF_SEARCH": options["ef_search"]}
        cpu, mhz = cpu_model_and_mhz()
        self._say(f"{cpu} at {mhz:.0f} MHz, load average {os.getloadavg()[0]:.2f}")
        rows_in_table = table_rows(model, "default")
        ef_search = options["ef_search"] or ef_search_for(model, "default")
        self._say(f"{table}: {rows_in_table:,.0f} rows (reltuples), ef_search {ef_search}")
        self.stdout.write("| size | filter | rows passing (estimated) | run | path | "
                          "estimated ms | queries with 10 rows | p50 ms | p99 ms | "
                          "recall@10 |\n|---:|---|---:|---|---|---:|---:|---:|---:|---:|")
        for row_filter in filters:
            passing = estimated_rows(model.objects.filter(**row_filter.orm).values("pk"))
            estimates = {"exact": exact_cost_ms(passing),
                         "HNSW": hnsw_cost_ms(passing, rows_in_table, K, ef_search)}
            for run in options["runs"]:
                measured, path = self._measure(model, row_filter, run, warmup, queries)
                result = measured.result(options["size"], storage, ef_search,
                                         truth.filtered[row_filter].neighbours())
                estimate = estimates.get(path.split()[0], float("nan"))
                self.stdout.write(
                    f"| {options['size']:,} | `{row_filter.sql}` | {passing:,.0f} | {run} | "
                    f"{path} | {estimate:.1f} | {result.complete:.0%} | "
                    f"{result.latency.p50:.1f} | {result.latency.p99:.1f} | "
                    f"{result.recall:.3f} |")
                self.stdout.flush()
        self._say(f"load average {os.getloadavg()[0]:.2f}")

    def _say(self, message: str) -> None:
        self.stdout.write(f"[{time.strftime('%H:%M:%S')}] {message}")
        self.stdout.flush()

    def _measure(self, model: type[models.Model], row_filter: RowFilter, run: str,
                 warmup: np.ndarray, queries: np.ndarray) -> tuple[Measured, str]:
        """Time the queries of one run; returns them and the path taken (the plan)."""

        def search(vector: np.ndarray) -> models.QuerySet:
            return model.objects.filter(**row_filter.orm).similar_to_vector(vector, K)

        configured = {**getattr(settings, "VISUAL_RECO", {}), **self.ef_override}
        overrides = {"defaults": configured,
                     "exact": {**configured, "EXACT_SEARCH_MAX_ROWS": ALWAYS_EXACT},
                     "hnsw": {**configured, "EXACT_SEARCH_MAX_ROWS": None},
                     "partial": configured}[run]
        table = model._meta.db_table
        with override_settings(VISUAL_RECO=overrides), self._setup(run, table, row_filter):
            first = search(queries[0])
            path = "exact" if first._exact() is not None else "HNSW"
            plan = lib.summarise_plan(first.explain())
            for vector in warmup:
                list(search(vector))
            measured = VectorsCommand._timed(search, queries, plan)
        return measured, f"{path} ({plan})"

    @contextmanager
    def _setup(self, run: str, table: str, row_filter: RowFilter) -> Iterator[None]:
        if run == "hnsw":
            with VectorsCommand._forced(table):
                yield
        elif run == "partial":
            with transaction.atomic(), connection.cursor() as cursor:
                started = time.perf_counter()
                cursor.execute(f"CREATE INDEX {table}_partial ON {table} USING hnsw "
                               f"(embedding halfvec_cosine_ops) WITH (m = 16, "
                               f"ef_construction = 64) WHERE {row_filter.sql}")
                self._say(f"partial index WHERE {row_filter.sql}: built in "
                          f"{time.perf_counter() - started:.1f} s")
                cursor.execute(f"ANALYZE {table}")
                # A process looks for partial indexes once per TABLE_ROWS_TTL: now, and again
                # once the index is gone.
                query_module._partial_indexes.clear()
                yield
                transaction.set_rollback(True)
            query_module._partial_indexes.clear()
        else:
            yield
