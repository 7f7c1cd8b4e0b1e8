"""``manage.py bench_blend``: blended similar queries (issue 12's modes) at 10k-100k products.

The shop's catalog is padded (`demo_shop.bench.catalog_padding`: synthetic CNN vectors,
colour vectors jittered from the real products', both HNSW indexes built) to each size, then
for each mode, with the same source products drawn at random from the whole catalog:

- the SQL alone (the time of the statements sent, from a connection execute wrapper),
- ``Product.objects.visually_similar(product, 10, mode=...)`` evaluated (ORM included),
- the ``{% visually_similar product mode=... %}`` tag rendered (8 rows; re-ranking as the
  demo configures it, ``SIMILAR_CACHE`` off so that every call queries),

and recall@10 of the query against the exact blended top 10 computed with numpy from every
row's stored vectors (the same formula as `visual_reco.query._term`), so a fast mode cannot
hide lost rows. The Postgres cache is warm (unmeasured queries first).

    manage.py bench_blend                         # 10k and 100k: about 10 minutes on 2 cores
    manage.py bench_blend --sizes 10000 --queries 100 --no-write
    manage.py bench_blend --sizes 100000 --ef-margins -20 0 10 20 50 --pools 100 200 --keep

``--ef-margins`` and ``--pools`` print the measurements behind `CANDIDATE_EF_MARGIN` and the
candidate design instead of timing (``--keep`` keeps the padded catalog for the next run).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection
from django.template import RequestContext, Template
from django.test import RequestFactory, override_settings

from demo_shop.bench.catalog_padding import ensure_demo_catalog, pad_catalog, remove_padding
from demo_shop.bench.helpers import machine_line, write_section
from demo_shop.shop.models import Product
from visual_reco import query as query_module
from visual_reco.conf import reco_settings
from visual_reco.modes import SHAPE, Blend, mode_blend
from visual_reco.query import binary_vector, from_binary
from visual_reco.registry import get_embedding_field

HEADING = "## Similar in what way: blended queries"
MODES = ("cosine", "similar", "same_colour", "same_style_other_colours")
K = 10
TAG_LIMIT = 8
GOAL_MS = 15.0
VECTOR_LITERAL = re.compile(r"'\[[^\]]{200,}\]'")
TAG = Template("{% load visual_reco %}{% visually_similar product limit=8 mode=mode %}")


@dataclass
class Catalog:
    """Every row's stored vectors (unit length, float32) and variant value, by position."""

    pks: np.ndarray
    shape: np.ndarray
    colour: np.ndarray  # zero rows for a missing colour vector
    style: np.ndarray

    @classmethod
    def load(cls) -> Catalog:
        """Read the whole catalog's vectors in their binary form."""
        field = get_embedding_field(Product)
        rows = (Product.objects.order_by("pk")
                .annotate(shape_raw=binary_vector(field.attname),
                          colour_raw=binary_vector(field.colour_name))
                .values_list("pk", "shape_raw", "colour_raw", "style"))
        pks, shapes, colours, styles = [], [], [], []
        dims = None
        for pk, shape_raw, colour_raw, style in rows.iterator(chunk_size=5000):
            if shape_raw is None:
                continue
            pks.append(pk)
            shapes.append(from_binary(shape_raw).astype(np.float16))
            colour = from_binary(colour_raw) if colour_raw is not None else None
            dims = dims or (len(colour) if colour is not None else None)
            colours.append(colour)
            styles.append(style or "")
        dims = dims or 1
        colour_matrix = np.array([c if c is not None else np.zeros(dims, np.float32)
                                  for c in colours], dtype=np.float32)
        return cls(np.array(pks), _unit(np.array(shapes, dtype=np.float32)),
                   _unit(colour_matrix), np.array(styles, dtype=object))

    def cosines(self, index: int) -> dict[str, np.ndarray]:
        """Every row's cosine to the row at ``index``, by aspect."""
        return {SHAPE: self.shape @ self.shape[index], "colour": self.colour @ self.colour[index]}

    def score(self, index: int, blend: Blend | None) -> np.ndarray:
        """Every row's score for the row at ``index``: its cosine, or ``blend``'s score."""
        cosines = self.cosines(index)
        if blend is None:
            return cosines[SHAPE].astype(np.float64)
        score = np.zeros(len(self.pks))
        for term in blend.terms:
            cosine = cosines[term.aspect].astype(np.float64)
            if term.sharpness != 1.0:
                cosine = np.maximum(cosine, 0.0) ** term.sharpness
            score += term.weight * cosine
        return score

    def exact(self, index: int, blend: Blend | None) -> list[int]:
        """The exact top ``K`` pks for the row at ``index`` (itself excluded): by cosine,
        or by ``blend`` as the query scores it (variants first when the blend says so)."""
        score = self.score(index, blend)
        first = np.zeros(len(self.pks), dtype=bool)
        if blend is not None and blend.variants_first and self.style[index]:
            first = self.style == self.style[index]
        first[index] = False
        order = np.lexsort((self.pks, -score, ~first))
        return [int(self.pks[i]) for i in order if i != index][:K]

    def rescored(self, index: int, blend: Blend, pool: int, *, union: bool) -> list[int]:
        """The top ``K`` pks of ``blend`` re-scoring an exact pool: the ``pool`` nearest
        rows by the lead aspect, or (``union``) by each positive aspect (variants left
        aside)."""
        cosines = self.cosines(index)
        aspects = blend.candidate_aspects if union else (blend.lead_aspect,)
        rows = set()
        for aspect in aspects:
            cosine = cosines[aspect].copy()
            cosine[index] = -np.inf
            rows.update(np.argpartition(-cosine, pool)[:pool].tolist())
        candidates = np.array(sorted(rows))
        score = self.score(index, blend)[candidates]
        return [int(self.pks[i]) for i in candidates[np.argsort(-score, kind="stable")][:K]]


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def percentiles(values: list[float]) -> tuple[float, float, float]:
    """p50, p95 and p99 of ``values`` (seconds) in milliseconds."""
    ms = np.asarray(values) * 1000
    return tuple(float(np.percentile(ms, q)) for q in (50, 95, 99))  # type: ignore[return-value]


@dataclass
class Line:
    """One size and mode: its timings (seconds) and recall@10."""

    size: int
    mode: str
    lead: str
    sql: list[float]
    query: list[float]
    tag: list[float]  # empty when the tag was not timed
    recall: float
    server: list[float]  # planning + execution as EXPLAIN ANALYZE reports them
    candidates: int = 0


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A JSON plan node and every node below it."""
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


@contextmanager
def _margin(margin: int) -> Iterator[None]:
    """`visual_reco.query.CANDIDATE_EF_MARGIN` set to ``margin`` in the block."""
    kept = query_module.CANDIDATE_EF_MARGIN
    query_module.CANDIDATE_EF_MARGIN = margin
    try:
        yield
    finally:
        query_module.CANDIDATE_EF_MARGIN = kept


@contextmanager
def sql_timer(seconds: list[float]) -> Iterator[None]:
    """Add the time of every statement this connection runs in the block to ``seconds[-1]``."""
    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool,
                context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            seconds[-1] += time.perf_counter() - started

    with connection.execute_wrapper(wrapper):
        yield


class Command(BaseCommand):
    """Time plain and blended similar queries at several catalog sizes."""

    help = ("Measure visually_similar with each aspect mode (SQL, query, template tag) and "
            "its recall@10 against the exact blend, at 10k and 100k products.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
        parser.add_argument("--queries", type=int, default=400,
                            help="source products timed per size and mode")
        parser.add_argument("--warmup", type=int, default=50)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--candidates", type=int, nargs="+", help=(
            "ASPECT_CANDIDATES values to time blends with (default: the setting's); the tag "
            "is timed with the setting's only"))
        parser.add_argument("--ef-margins", type=int, nargs="+", help=(
            "instead of the timings: EXPLAIN ANALYZE time and HNSW buffers of the blended "
            "modes with each CANDIDATE_EF_MARGIN (hnsw.ef_search = ASPECT_CANDIDATES + it)"))
        parser.add_argument("--pools", type=int, nargs="+", help=(
            "instead of the timings: recall@10 of each blend re-scoring exact candidate "
            "pools of these sizes, from the lead aspect and from both aspects (numpy)"))
        parser.add_argument("--explain", action="store_true",
                            help="print EXPLAIN ANALYZE of one query per mode")
        parser.add_argument("--keep", action="store_true",
                            help="keep the padding (the next run at a size reuses it)")
        parser.add_argument("--no-write", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        self.load = os.getloadavg()[0]
        ensure_demo_catalog(say=self.stdout.write)
        lines: list[Line] = []
        builds: dict[int, dict[str, float]] = {}
        try:
            for size in sorted(options["sizes"]):
                builds[size] = {}
                if Product.objects.count() > size:  # kept from a larger run
                    remove_padding(say=self.stdout.write)
                pad_catalog(size, seed=options["seed"], say=self.stdout.write,
                            builds=builds[size])
                if options["ef_margins"] or options["pools"]:
                    self._tune(size, options)
                    continue
                if not builds[size]:  # the padding was there already: time a rebuild
                    builds[size] = self._rebuild_colour_index()
                lines.extend(self._measure(size, options))
        finally:
            if not options["keep"]:
                remove_padding(say=self.stdout.write)
        if lines and not options["no_write"]:
            path = write_section(self._section(lines, builds, options))
            self.stdout.write(f"Wrote {path}")

    def _sources(self, size: int, catalog: Catalog,
                 options: dict[str, Any]) -> list[tuple[int, Product]]:
        """The source products of a size: positions in ``catalog`` and rows, seeded."""
        rng = np.random.default_rng([options["seed"], size])
        count = options["warmup"] + options["queries"]
        picked = rng.choice(len(catalog.pks), size=min(count, len(catalog.pks)), replace=False)
        products = Product.objects.in_bulk([int(catalog.pks[i]) for i in picked])
        return [(int(i), products[int(catalog.pks[i])]) for i in picked]

    def _tune(self, size: int, options: dict[str, Any]) -> None:
        """Print what ``--ef-margins`` and ``--pools`` ask for (the choices behind
        `CANDIDATE_EF_MARGIN` and ``ASPECT_CANDIDATES``)."""
        catalog = Catalog.load()
        sources = self._sources(size, catalog, options)[options["warmup"]:]
        for mode in MODES[1:]:
            for margin in options["ef_margins"] or []:
                self._tune_margin(size, mode, margin, sources)
            for pool in options["pools"] or []:
                self._tune_pool(size, mode, pool, catalog, sources)

    def _tune_margin(self, size: int, mode: str, margin: int,
                     sources: list[tuple[int, Product]]) -> None:
        ef_search = int(reco_settings.ASPECT_CANDIDATES) + margin
        # HNSW_EF_SEARCH below the candidates, so that the margin alone sets ef_search.
        overrides = {**reco_settings.user_settings, "HNSW_EF_SEARCH": 1}
        seconds, buffers = [], []
        with override_settings(VISUAL_RECO=overrides), _margin(margin):
            for _, product in sources:
                plan = json.loads(Product.objects.visually_similar(product, K, mode=mode)
                                  .explain(format="json", analyze=True, buffers=True))[0]
                seconds.append((plan["Planning Time"] + plan["Execution Time"]) / 1000)
                buffers.append(sum(node.get("Shared Hit Blocks", 0) +
                                   node.get("Shared Read Blocks", 0)
                                   for node in _nodes(plan["Plan"])
                                   if node.get("Index Name", "").endswith("_hnsw")))
        p50, p95, p99 = percentiles(seconds)
        self.stdout.write(f"| {size:,} | `{mode}` | {margin} | {ef_search} | {p50:.2f} | "
                          f"{p95:.2f} | {p99:.2f} | {np.mean(buffers):,.0f} |")

    def _tune_pool(self, size: int, mode: str, pool: int, catalog: Catalog,
                   sources: list[tuple[int, Product]]) -> None:
        blend = mode_blend(mode)
        lead_only, both = [], []
        for index, _ in sources:
            expected = set(catalog.exact(index, blend))
            for union, found in ((False, lead_only), (True, both)):
                top = catalog.rescored(index, blend, pool, union=union)
                found.append(len(expected & set(top)) / len(expected))
        self.stdout.write(f"| {size:,} | `{mode}` | {pool} | {np.mean(lead_only):.3f} | "
                          f"{np.mean(both):.3f} |")

    def _rebuild_colour_index(self) -> dict[str, float]:
        field = get_embedding_field(Product)
        index = next(i for i in Product._meta.indexes if list(i.fields) == [field.colour_name])
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(f"REINDEX INDEX {connection.ops.quote_name(index.name)}")
        return {field.colour_name: time.perf_counter() - started}

    def _measure(self, size: int, options: dict[str, Any]) -> list[Line]:
        catalog = Catalog.load()
        self.stdout.write(f"{size:,} products: {len(catalog.pks):,} with vectors, "
                          f"{int((np.abs(catalog.colour).sum(axis=1) > 0).sum()):,} with colour")
        sources = self._sources(size, catalog, options)
        lines = []
        configured = int(reco_settings.ASPECT_CANDIDATES)
        for mode in MODES:
            counts = [configured] if mode == "cosine" else options["candidates"] or [configured]
            for candidates in counts:
                overrides = {**reco_settings.user_settings, "SIMILAR_CACHE": None,
                             "ASPECT_CANDIDATES": candidates}
                with override_settings(VISUAL_RECO=overrides):
                    line = self._line(size, mode, catalog, sources, options,
                                      with_tag=candidates == configured)
                line.candidates = candidates
                lines.append(line)
                self.stdout.write(self._row(line))
        return lines

    def _line(self, size: int, mode: str, catalog: Catalog,
              sources: list[tuple[int, Product]], options: dict[str, Any], *,
              with_tag: bool) -> Line:
        """Time one mode over ``sources`` (the first ``--warmup`` unmeasured)."""
        blend = None if mode == "cosine" else mode_blend(mode)
        name = None if mode == "cosine" else mode
        request = RequestFactory().get("/")

        def query(product: Product) -> list[Any]:
            return list(Product.objects.visually_similar(product, K, mode=name))

        def tag(product: Product) -> str:
            # The tag's own default mode stands for the plain cosine: "shape".
            return TAG.render(RequestContext(request, {"product": product,
                                                       "mode": name or "shape"}))

        warmup, timed = sources[:options["warmup"]], sources[options["warmup"]:]
        for _, product in warmup:
            query(product)
            if with_tag:
                tag(product)
        if options["explain"]:
            plan = Product.objects.visually_similar(timed[0][1], K, mode=name).explain(
                analyze=True, buffers=True)
            self.stdout.write(f"-- {mode}\n" + VECTOR_LITERAL.sub("'[...]'", plan))
        sql: list[float] = []
        server: list[float] = []
        queries: list[float] = []
        tags: list[float] = []
        recalls = []
        for index, product in timed:
            sql.append(0.0)
            with sql_timer(sql):
                started = time.perf_counter()
                rows = query(product)
                queries.append(time.perf_counter() - started)
            if with_tag:
                started = time.perf_counter()
                tag(product)
                tags.append(time.perf_counter() - started)
            plan = json.loads(Product.objects.visually_similar(product, K, mode=name).explain(
                format="json", analyze=True))[0]
            server.append((plan["Planning Time"] + plan["Execution Time"]) / 1000)
            expected = catalog.exact(index, blend)
            recalls.append(len({row.pk for row in rows} & set(expected)) / len(expected))
        lead = "shape" if blend is None else "+".join(blend.candidate_aspects)
        return Line(size, mode, lead, sql, queries, tags, float(np.mean(recalls)), server)

    @staticmethod
    def _row(line: Line) -> str:
        tag = [f"{v:.1f}" for v in percentiles(line.tag)] if line.tag else ["", "", ""]
        cells = [f"{line.size:,}", f"`{line.mode}`", line.lead,
                 str(line.candidates) if line.mode != "cosine" else "",
                 *(f"{v:.1f}" for v in percentiles(line.server)),
                 *(f"{v:.1f}" for v in percentiles(line.sql)),
                 *(f"{v:.1f}" for v in percentiles(line.query)), *tag, f"{line.recall:.3f}"]
        return "| " + " | ".join(cells) + " |"

    def _section(self, lines: list[Line], builds: dict[int, dict[str, float]],
                 options: dict[str, Any]) -> str:
        field = get_embedding_field(Product)
        sizes = " ".join(str(s) for s in sorted(options["sizes"]))
        command = (f"python demo_shop/services.py run -- python manage.py bench_blend "
                   f"--sizes {sizes} --queries {options['queries']} --warmup {options['warmup']}"
                   + (f" --candidates {' '.join(map(str, options['candidates']))}"
                      if options["candidates"] else "")
                   + (f" --seed {options['seed']}" if options["seed"] else ""))
        at_100k = [line for line in lines if line.size == 100_000 and line.mode != "cosine"
                   and line.candidates == reco_settings.ASPECT_CANDIDATES]
        worst = max((percentiles(line.query)[2] for line in at_100k), default=None)
        verdict = ("not measured at 100k" if worst is None else
                   f"the slowest blended mode's query p99 is {worst:.1f} ms: "
                   + ("**met**" if worst <= GOAL_MS else "**not met**"))
        out = [HEADING, "",
               f"`visually_similar(product, {K}, mode=...)` on the demo catalog padded with "
               "synthetic products (`demo_shop/bench/catalog_padding.py`: CNN-like vectors, "
               "colour vectors jittered from the real products' colour histograms, both HNSW "
               f"indexes built), {options['queries']} source products per line drawn at "
               f"random from the whole catalog after {options['warmup']} unmeasured ones "
               "(warm cache), one client in process. *SQL* is the time of the statements "
               "sent, measured in this process; *server* the planning and execution time that "
               "`EXPLAIN ANALYZE` reports for the same query (run again; least disturbed by "
               "other work on the cores); *query* the ORM call evaluated; *tag* "
               "`{% visually_similar %}` "
               f"rendered ({TAG_LIMIT} rows, feedback re-ranking as the demo sets it, "
               "`SIMILAR_CACHE` off). Recall@10 is against the exact blended top 10 "
               "computed with numpy over every row's stored vectors. `cosine` is the plain "
               "CNN query; blends re-score *candidates* rows (`ASPECT_CANDIDATES`, "
               f"{reco_settings.ASPECT_CANDIDATES} by default; the tag is timed with that "
               "only) from the index of the column named under *candidates from*.", "",
               f"{machine_line()}; load average {self.load:.1f} at the start (the cores "
               f"are shared). Command: `{command}`.", "",
               f"Issue 12's goal, p99 <= {GOAL_MS:.0f} ms at 100k products: {verdict}.", "",
               "| size | mode | candidates from | candidates | server p50 | p95 | p99 ms | "
               "SQL p50 | p95 | p99 ms | query p50 | p95 | p99 ms | tag p50 | p95 | p99 ms | "
               "recall@10 |",
               "|---:|---|---|---:|" + "---:|" * 13,
               *(self._row(line) for line in lines), "",
               "HNSW index builds (one parallel worker; the whole catalog after the load):", "",
               "| size | embedding index s | colour index s |", "|---:|---:|---:|"]
        for size, seconds in sorted(builds.items()):
            shape = seconds.get(field.name)
            out.append(f"| {size:,} | {f'{shape:.1f}' if shape is not None else 'cached'} | "
                       f"{seconds.get(field.colour_name, float('nan')):.1f} |")
        return "\n".join(out) + "\n"
