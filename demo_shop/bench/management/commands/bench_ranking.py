"""``manage.py bench_ranking``: what re-ranking with feedback costs a similar-products list,
and what a picked-for-you list costs, at 100k products with 10 million events.

The events are generated in SQL on pairs the benchmark then asks for (each sampled product
with its visual candidate pool) and, for the rest, on random pairs of the whole catalog, so
the running totals are as large as a busy shop's and every list finds evidence; and
``--visitors`` visitors get a history of 40 events each under their real (hashed) keys.
Then, in this process, each list is timed visual-only and re-ranked, and each visitor's
picks; and gunicorn serves the API under load: similar lists visual-only and re-ranked, and
picked-for-you with the visitors' cookies.

``--keep`` leaves the padding, the events, their totals and the sampled sources in place, and
a later run with ``--keep`` times them again without generating or rolling up anything (for
iterating on the serving code; a run without it starts clean).
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from functools import partial
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction
from django.test import RequestFactory
from django.utils import timezone

from demo_shop.bench.catalog_padding import ensure_demo_catalog, pad_catalog, remove_padding
from demo_shop.bench.cpu import demo_servers, readings
from demo_shop.bench.helpers import HOST, gunicorn_demo, machine_line, write_section
from demo_shop.bench.loadgen import LoadResult, get_requests, run_load
from demo_shop.shop.models import Product
from visual_reco.conf import reco_settings
from visual_reco.feedback.evidence import forget_priors
from visual_reco.feedback.experiments import Variant
from visual_reco.feedback.picks import picks_for
from visual_reco.feedback.rollup import (
    LOCK_KEY,
    first_recomputable_day,
    recompute_days,
    rollup,
)
from visual_reco.feedback.similar import ranked_similar
from visual_reco.feedback.visitors import visitor_key
from visual_reco.models import FeedbackEvent, FeedbackPairStats
from visual_reco.result_cache import similar_products

CHUNK = 1_000_000
PAIRS = "bench_rerank_pairs"
MIX = ("CASE WHEN r < 880 THEN 'impression' WHEN r < 970 THEN 'click' WHEN r < 990 THEN "
       "'add_to_cart' ELSE 'purchase' END")
LIMIT = 8
# The capacity a server CPU cost per request implies is given for this many cores.
CORES = 2
CPU_NOTE = ("req/s counts the load generator's and any other job's use of the cores; server "
            "CPU is that of gunicorn's processes, Postgres and Redis over the level, from /proc, "
            f"per answered request, and the capacity is {CORES} cores divided by it: the "
            f"servers alone on {CORES} dedicated cores, scaling perfectly")
CACHE_ON = ("on, as the demo sets it, and every list a hit: both lists of each source asked "
            "once before the timing")
BEST_SELLERS_ONLY = Variant("best_sellers", ranking={"PICKS": "best_sellers"})


class Command(BaseCommand):
    """Generate events, roll them up, time lists in process, then load gunicorn."""

    help = "Benchmark re-ranking with feedback (in process and under gunicorn)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--events", type=int, default=10_000_000)
        parser.add_argument("--catalog-size", type=int, default=100_000)
        parser.add_argument("--sources", type=int, default=1000,
                            help="products whose lists are asked for")
        parser.add_argument("--lists", type=int, default=2000, help="lists timed in process")
        parser.add_argument("--visitors", type=int, default=1000,
                            help="visitors with a history, for picked-for-you")
        parser.add_argument("--seconds", type=float, default=10.0)
        parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 8, 16])
        parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1) + 1)
        parser.add_argument("--threads", type=int, default=2)
        parser.add_argument("--cache", choices=["on", "off", "both"], default="both",
                            help="serve the API under load with the similar cache on, off or "
                                 "both (on: the demo's setting)")
        parser.add_argument("--no-write", action="store_true")
        parser.add_argument("--keep", action="store_true",
                            help="keep the padding and events; reuse those a --keep run left")

    def handle(self, *args: Any, **options: Any) -> None:
        # The cores may be shared: the sections say how busy they were when it started.
        self.load_average = os.getloadavg()[0]
        self.reused = False
        ensure_demo_catalog(say=self.stdout.write)
        padded = pad_catalog(options["catalog_size"], say=self.stdout.write)
        sources = self._kept_sources() if options["keep"] else []
        if not sources:
            self._clean()
        try:
            if sources:
                self.reused = True
                visitors = [_visitor_raw_id(n) for n in range(options["visitors"])]
                self.stdout.write(f"Reusing the events of the last --keep run "
                                  f"({len(sources):,} sources)")
            else:
                sources = list(Product.objects.filter(image_embedding_status="ready")
                               .order_by("?").values_list("pk", flat=True)[:options["sources"]])
                started = time.perf_counter()
                self._generate(sources, options)
                visitors = self._histories(options["visitors"])
                self.stdout.write(f"{options['events']:,} events generated in "
                                  f"{time.perf_counter() - started:.0f} s")
                started = time.perf_counter()
                rollup(wait=True)
                self.stdout.write(f"roll-up {time.perf_counter() - started:.0f} s")
            pairs = FeedbackPairStats.objects.count()
            self.stdout.write(f"{pairs:,} pair totals")
            timings = self._in_process(sources, options["lists"])
            timings.update(self._picks_in_process(visitors, options["lists"]))
            loads = self._under_load(sources, visitors, options)
        finally:
            if not options["keep"]:
                self._clean()
                if padded:
                    remove_padding(say=self.stdout.write)
        if not options["no_write"]:
            self._write(options, pairs, timings, loads)
            if "picked for you" in loads:
                self._write_picks(options, timings, loads)

    def _generate(self, sources: list[int], options: dict[str, Any]) -> None:
        pool = LIMIT * int(reco_settings.RANKING["POOL"])
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {PAIRS}")
            cursor.execute(f"CREATE UNLOGGED TABLE {PAIRS} (n serial, source text, product text,"
                           " position int)")
            for source in sources:
                # The candidate pool ranked_similar re-ranks (undiversified).
                rows = similar_products(Product.objects.get(pk=source), None, pool,
                                        diverse=False)
                cursor.executemany(
                    f"INSERT INTO {PAIRS} (source, product, position) VALUES (%s, %s, %s)",
                    [(str(source), str(row.pk), index % LIMIT + 1)
                     for index, row in enumerate(rows)])
            cursor.execute(f"SELECT count(*) FROM {PAIRS}")
            pairs = cursor.fetchone()[0]
            cursor.execute("SELECT max(id) FROM " + Product._meta.db_table)
            top = cursor.fetchone()[0]
            for start in range(0, options["events"], CHUNK):
                stop = min(start + CHUNK, options["events"])
                # Half the events on the asked-for pools, half on random pairs of the catalog.
                cursor.execute(f"""
                    INSERT INTO {FeedbackEvent._meta.db_table}
                      (type, occurred_at, received_at, visitor, user_id, event_id, surface,
                       variant, source, product, position, list_id, fingerprint, quantity)
                    SELECT {MIX}, now() - (g %% 28) * interval '1 day', now(),
                           md5('v' || (g %% 300000)::text), '', 'bench-rr-' || g,
                           CASE WHEN g %% 2 = 0 THEN 'similar' ELSE 'similar_api' END,
                           'control',
                           CASE WHEN g %% 2 = 0 THEN p.source
                                ELSE (1 + g * 31 %% %(top)s)::text END,
                           CASE WHEN g %% 2 = 0 THEN p.product
                                ELSE (1 + g * 17 %% %(top)s)::text END,
                           CASE WHEN g %% 2 = 0 THEN p.position ELSE 1 + g %% 8 END,
                           '', 'bench', 1
                    FROM (SELECT g, (g * 2654435761 %% 1000) AS r
                          FROM generate_series(%(start)s::bigint, %(stop)s - 1) AS g) AS s
                    JOIN {PAIRS} p ON p.n = 1 + (s.g * 7919 %% %(pairs)s)
                """, {"top": top, "pairs": pairs, "start": start, "stop": stop})
            cursor.execute(f"ANALYZE {FeedbackEvent._meta.db_table}")

    def _histories(self, count: int) -> list[str]:
        """``count`` visitors, each with 40 events of the last 14 days (24 impressions, 12
        clicks, 3 carts, 1 purchase) on random products, stored under its real key."""
        raw_ids = [_visitor_raw_id(n) for n in range(count)]
        keys = [visitor_key(raw_id) for raw_id in raw_ids]
        kinds = ["impression"] * 24 + ["click"] * 12 + ["add_to_cart"] * 3 + ["purchase"]
        with connection.cursor() as cursor:
            cursor.execute("SELECT max(id) FROM " + Product._meta.db_table)
            top = cursor.fetchone()[0]
            cursor.execute(f"""
                INSERT INTO {FeedbackEvent._meta.db_table}
                  (type, occurred_at, received_at, visitor, user_id, event_id, surface,
                   variant, source, product, position, list_id, fingerprint, quantity)
                SELECT (%s::text[])[1 + e], now() - (k.n * 7 + e) %% 336 * interval '1 hour',
                       now(), k.key, '', 'bench-rr-h' || k.n || '-' || e, '', '', '',
                       (1 + (k.n * 7919 + e * 104729) %% %s)::text, NULL, '', 'bench', 1
                FROM unnest(%s::text[]) WITH ORDINALITY AS k(key, n),
                     generate_series(0, 39) AS e""", [kinds, top, keys])
            cursor.execute(f"ANALYZE {FeedbackEvent._meta.db_table}")
        return raw_ids

    def _picks_in_process(self, visitors: list[str], lists: int) -> dict[str, list[float]]:
        factory = RequestFactory()
        cookie = reco_settings.FEEDBACK["VISITOR_COOKIE"]
        timings: dict[str, list[float]] = {"picks": [], "best sellers": []}
        for n in range(lists):
            request = factory.get("/")
            request.COOKIES[cookie] = visitors[n % len(visitors)]
            for name, variant in (("picks", None), ("best sellers", BEST_SELLERS_ONLY)):
                started = time.perf_counter()
                picks = picks_for(request, None, LIMIT, variant=variant)
                timings[name].append((time.perf_counter() - started) * 1000)
                assert len(picks.products) == LIMIT
                assert name != "picks" or picks.source == "taste"
        for name, values in timings.items():
            self.stdout.write(f"in process, {name}: p50 {np.percentile(values, 50):.2f} ms, "
                              f"p99 {np.percentile(values, 99):.2f} ms")
        return timings

    def _in_process(self, sources: list[int], lists: int) -> dict[str, list[float]]:
        forget_priors()
        products = {product.pk: product for product in
                    Product.objects.filter(pk__in=sources).defer("image_embedding")}
        timings: dict[str, list[float]] = {"visual": [], "reranked": []}
        # Both rankings of every source asked once before the timing: with the similar cache
        # both lists are then hits (the steady state of a shop), so their difference is what
        # re-ranking adds, not a miss on one side.
        for pk in sources:
            similar_products(products[pk], None, LIMIT)
            ranked_similar(products[pk], None, LIMIT)
        for n in range(lists):
            source = products[sources[n % len(sources)]]
            for name in ("visual", "reranked"):
                started = time.perf_counter()
                if name == "visual":
                    rows = similar_products(source, None, LIMIT)
                else:
                    rows = ranked_similar(source, None, LIMIT)
                timings[name].append((time.perf_counter() - started) * 1000)
                assert len(rows) == LIMIT
        for name, values in timings.items():
            self.stdout.write(f"in process, {name}: p50 {np.percentile(values, 50):.2f} ms, "
                              f"p99 {np.percentile(values, 99):.2f} ms")
        return timings

    def _under_load(self, sources: list[int], visitors: list[str], options: dict[str, Any]
                    ) -> dict[str, dict[int, LoadResult]]:
        paths = [f"/api/visual-reco/products/{pk}/similar/?limit={LIMIT}" for pk in sources]
        cookie = reco_settings.FEEDBACK["VISITOR_COOKIE"]
        picks = ([f"/api/visual-reco/picked-for-you/?limit={LIMIT}"] * len(visitors),
                 [f"{cookie}={raw_id}" for raw_id in visitors])
        loads: dict[str, dict[int, LoadResult]] = {}
        caches = {"off": ["0"], "on": ["1"], "both": ["0", "1"]}[options["cache"]]
        for cache in caches:
            self._serve(cache, paths, picks, options, loads)
        return loads

    def _serve(self, cache: str, paths: list[str], picks: tuple[list[str], list[str]],
               options: dict[str, Any], loads: dict[str, dict[int, LoadResult]]) -> None:
        """Load gunicorn with the similar cache ``cache`` ("1": on), visual-only then
        re-ranked (and, with the cache on, picked-for-you), charging each level the CPU
        the servers used (`demo_shop.bench.cpu`)."""
        for ranking in ("visual", "reranked"):
            name = f"{ranking}, cache {'on' if cache == '1' else 'off'}"
            env = {"DEMO_RATE_LIMITS": "0", "DEMO_SIMILAR_CACHE": cache,
                   "DEMO_RANKING": ranking}
            loads[name] = {}
            with gunicorn_demo(options["workers"], options["threads"], env) as (port, server):
                cpu = partial(readings, demo_servers(server.pid))
                # Every list asked once: warm connections, and with the cache the steady
                # state of a busy shop (the candidate pools cached, the feedback read live).
                run_load(HOST, port, get_requests(HOST, paths), 4, 0,
                         max_requests=len(paths))
                for level in options["concurrency"]:
                    result = run_load(HOST, port, get_requests(HOST, paths), level,
                                      options["seconds"], server_cpu=cpu)
                    loads[name][level] = result
                    self._report(name, level, result)
                if ranking == "reranked" and cache == "1":
                    loads["picked for you"] = {}
                    for level in options["concurrency"]:
                        result = run_load(HOST, port, get_requests(HOST, *picks), level,
                                          options["seconds"], server_cpu=cpu)
                        loads["picked for you"][level] = result
                        self._report("picked for you", level, result)

    def _report(self, name: str, level: int, result: LoadResult) -> None:
        self.stdout.write(f"{name} c={level}: {result.rate:.0f} req/s, "
                          f"p50 {result.percentile(50):.1f} ms, "
                          f"p99 {result.percentile(99):.1f} ms, {result.errors} errors; "
                          f"server CPU {result.server_ms_per_request:.2f} ms/request "
                          f"({_parts(result)}) "
                          f"(capacity {result.capacity(CORES):.0f} req/s on {CORES} cores), "
                          f"load generator {result.client_cpu or 0:.1f} CPU s")

    def _kept_sources(self) -> list[int]:
        """The sources whose pools a ``--keep`` run generated events on (none: start over)."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s)", [PAIRS])
            if cursor.fetchone()[0] is None:
                return []
            cursor.execute(f"SELECT DISTINCT source::bigint FROM {PAIRS} ORDER BY 1")
            return [source for source, in cursor.fetchall()]

    def _clean(self) -> None:
        """Delete the bench's events and pairs, and count the days they were on again from
        the shop's own events."""
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {FeedbackEvent._meta.db_table} "
                           "WHERE event_id LIKE 'bench-rr-%%'")
            deleted = cursor.rowcount
            cursor.execute(f"DROP TABLE IF EXISTS {PAIRS}")
        if not deleted:
            return
        today = timezone.now().date()
        first = first_recomputable_day()
        days = [today - timedelta(days=n) for n in range(30)]
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
            recompute_days(sorted(day for day in days if first is None or day >= first))

    def _machine(self) -> str:
        return f"{machine_line()}; load average {self.load_average:.1f} at the start"

    def _command(self, options: dict[str, Any]) -> str:
        command = f"`manage.py bench_ranking --events {options['events']}` (`make bench`)"
        if self.reused:
            command += (", its events, visitors and padding generated by the same command "
                        "with `--keep` just before and reused (`--keep` again)")
        return command

    def _write(self, options: dict[str, Any], pairs: int, timings: dict[str, list[float]],
               loads: dict[str, dict[int, LoadResult]]) -> None:
        visual, reranked = timings["visual"], timings["reranked"]
        added = np.percentile(reranked, 99) - np.percentile(visual, 99)
        added_median = np.percentile(reranked, 50) - np.percentile(visual, 50)
        rows = _load_rows({name: by_level for name, by_level in loads.items()
                           if name != "picked for you"})
        body = (
            f"{options['catalog_size']:,} products (the demo catalog padded with synthetic "
            f"vectors), {options['events']:,} feedback events over 28 days rolled up into "
            f"{pairs:,} pair totals: half on the candidate pools of {options['sources']:,} "
            "sampled products, half on random pairs. Lists of "
            f"{LIMIT}, pool {reco_settings.RANKING['POOL']} x {LIMIT}. "
            f"{self._machine()}.\n\n"
            f"In process ({options['lists']:,} lists each, the same sources, similar cache "
            f"{CACHE_ON if reco_settings.SIMILAR_CACHE else 'off'}):\n\n"
            "| ranking | p50 ms | p99 ms |\n|---|---:|---:|\n"
            f"| visual only (`similar_products`, {LIMIT} rows) | "
            f"{np.percentile(visual, 50):.2f} | {np.percentile(visual, 99):.2f} |\n"
            f"| re-ranked (`ranked_similar`: pool, evidence, ranking) | "
            f"{np.percentile(reranked, 50):.2f} | {np.percentile(reranked, 99):.2f} |\n"
            f"| **added by re-ranking** | {added_median:.2f} "
            f"| **{added:.2f}** |\n\n"
            f"The API under gunicorn ({options['workers']} processes x {options['threads']} "
            f"threads, {options['seconds']:.0f} s per level, closed loop on loopback; "
            f"{CPU_NOTE}):\n\n"
            + _load_header("ranking") + rows + "\n\n"
            f"Command: {self._command(options)}.")
        path = write_section(f"## Re-ranking with feedback\n\n{body}")
        self.stdout.write(f"Wrote {path}")

    def _write_picks(self, options: dict[str, Any], timings: dict[str, list[float]],
                     loads: dict[str, dict[int, LoadResult]]) -> None:
        picks, sellers = timings["picks"], timings["best sellers"]
        body = (
            f"The same catalog and events, plus {options['visitors']:,} visitors with 40 "
            "events each of the last 14 days (24 impressions, 12 clicks, 3 carts, 1 purchase "
            f"on random products) under their hashed keys. Lists of {LIMIT}. "
            f"{self._machine()}.\n\n"
            f"In process (`picks_for`, {options['lists']:,} lists each):\n\n"
            "| strategy | p50 ms | p99 ms |\n|---|---:|---:|\n"
            f"| taste (events, vectors, HNSW pool, category affinity) | "
            f"{np.percentile(picks, 50):.2f} | {np.percentile(picks, 99):.2f} |\n"
            f"| best sellers (cached per process) | {np.percentile(sellers, 50):.2f} | "
            f"{np.percentile(sellers, 99):.2f} |\n\n"
            "`GET picked-for-you/` under gunicorn, each request with a visitor's cookie "
            f"({CPU_NOTE}):\n\n"
            + _load_header("list")
            + _load_rows({"picked for you": loads["picked for you"]}) + "\n\n"
            f"Command: {self._command(options)}.")
        path = write_section(f"## Picked for you\n\n{body}")
        self.stdout.write(f"Wrote {path}")


def _visitor_raw_id(number: int) -> str:
    """The cookie value of the benchmark's visitor ``number``."""
    return f"bench-visitor-{number:08d}"


def _parts(result: LoadResult) -> str:
    """Each server's share of the CPU per request, e.g. "web 7.1 + postgres 2.5 + redis 0.3"."""
    return " + ".join(f"{name} {result.part_ms_per_request(name):.1f}"
                      for name in result.server_parts)


def _load_header(first: str) -> str:
    return (f"| {first} | connections | req/s | p50 ms | p99 ms | errors | server CPU ms/req | "
            f"capacity on {CORES} cores, req/s | load generator CPU s |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")


def _load_rows(loads: dict[str, dict[int, LoadResult]]) -> str:
    return "\n".join(
        f"| {name} | {level} | {result.rate:.0f} | {result.percentile(50):.1f} | "
        f"{result.percentile(99):.1f} | {result.errors} | {result.server_ms_per_request:.2f} "
        f"({_parts(result)}) | "
        f"{result.capacity(CORES):.0f} | {result.client_cpu or 0:.1f} |"
        for name, by_level in loads.items() for level, result in by_level.items())
