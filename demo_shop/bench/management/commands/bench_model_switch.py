"""``manage.py bench_model_switch``: what `visual_reco.model_switch` costs on a large
catalog (issue 14 point 5): `coverage` (the status command's count), `switch` and
`rollback`, each one transaction that rewrites every product with an image and its HNSW
entries.

The catalog is padded with synthetic products (`demo_shop.bench.catalog_padding`) to
``--rows``, each given an image name, the live fingerprint and a random colour vector; the
shadow table is filled in SQL with a candidate's vectors (each row gets the next row's
vector and colour, so every value changes and no update is HOT). The candidate is the
default Xception seeing 256 pixels (another fingerprint, the same size); no model runs.
Each switch's two statements are timed apart, and the switch is run once first with the
HNSW indexes dropped in a transaction that is rolled back, for what their inserts cost.
The padding and the shadow are removed at the end. Writes the ``## Changing the embedder``
section of docs/BENCHMARKS.md.

    manage.py bench_model_switch --rows 10000
"""

from __future__ import annotations

import shlex
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from demo_shop.bench.catalog_padding import SKU_PREFIX, hnsw_indexes, pad_catalog, remove_padding
from demo_shop.bench.helpers import machine_line, write_section
from demo_shop.shop.models import Product
from visual_reco import model_switch
from visual_reco.aspects import get_aspect
from visual_reco.embedders import get_embedder
from visual_reco.models import EmbedderRollout, EmbeddingShadow
from visual_reco.registry import get_embedding_field
from visual_reco.rollout import field_key

CANDIDATE = "bench_xception_256"


class Command(BaseCommand):
    """Time coverage, switch and rollback on a padded catalog."""

    help = "Time visual_reco_model_switch's coverage, switch and rollback at --rows products."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rows", type=int, default=10_000)
        parser.add_argument("--no-write", action="store_true", help="print, do not write docs")

    def handle(self, *args: Any, **options: Any) -> None:
        embedders = {**settings.VISUAL_RECO.get("EMBEDDERS", {}), CANDIDATE: {
            "BACKEND": "visual_reco.embedders.keras.KerasApplicationEmbedder",
            "OPTIONS": {"input_size": 256}}}
        with override_settings(VISUAL_RECO={**settings.VISUAL_RECO, "EMBEDDERS": embedders}):
            field = get_embedding_field(Product)
            if EmbedderRollout.objects.filter(model=field.model._meta.label_lower).exists():
                raise SystemExit("A rollout of the demo's Product exists: finish it first.")
            pad_catalog(options["rows"], say=self.stdout.write)
            try:
                timings = self._measure(field)
            finally:
                EmbeddingShadow.objects.filter(**field_key(field)).delete()
                EmbedderRollout.objects.filter(**field_key(field)).delete()
                remove_padding(say=self.stdout.write)
        rows = timings.pop("rows")
        command = "manage.py bench_model_switch " + shlex.join(sys.argv[2:])
        section = (
            "## Changing the embedder\n\n"
            f"`{command}` on {machine_line()}, with other jobs on the machine (load "
            f"{timings.pop('load')}). {rows:,} products with an image and a 2,048-dimension "
            "`halfvec` plus colour vector, each with an HNSW index; the shadow table filled "
            "with another vector per product. Each step is one statement or transaction:\n\n"
            "| step | seconds |\n| --- | ---: |\n"
            + "".join(f"| {step} | {seconds:.1f} |\n" for step, seconds in timings.items())
            + "\n`switch` and `rollback` rewrite every product row and its entries in both "
            "HNSW indexes; saves of those rows wait for them, searches do not. The rewrite is "
            "one `UPDATE ... FROM` the shadow table (a hash join); the row 'switch without the "
            "HNSW indexes', the same switch with both dropped in a transaction that is "
            "rolled back, is what it costs without their inserts.\n")
        self.stdout.write(section)
        if not options["no_write"]:
            self.stdout.write(f"Wrote {write_section(section)}")

    def _measure(self, field: Any) -> dict[str, Any]:
        table = connection.ops.quote_name(Product._meta.db_table)
        live_fp = field.fingerprint_for(get_embedder(field.embedder))
        candidate_fp = field.fingerprint_for(get_embedder(CANDIDATE))
        dims = get_aspect("colour").dimensions
        colour = connection.ops.quote_name(field.colour_name)
        vector = connection.ops.quote_name(field.column)
        started = time.perf_counter()
        with connection.cursor() as cursor:
            # A random colour per padded row (the id makes the subquery run per row).
            cursor.execute(
                f"UPDATE {table} p SET image = 'products/bench.jpg', "
                f"{connection.ops.quote_name(field.fingerprint_name)} = %s, {colour} = "
                f"ARRAY(SELECT random() + 0 * p.id FROM generate_series(1, %s))::real[]"
                f"::halfvec WHERE sku LIKE %s", [live_fp, dims, f"{SKU_PREFIX}%"])
            cursor.execute(
                f"INSERT INTO {connection.ops.quote_name(EmbeddingShadow._meta.db_table)} "
                "(model, field, object_id, fingerprint, source, vector, aspects, error, "
                "updated_at) SELECT %s, %s, id::text, %s, image, "
                f"coalesce(lead({vector}) OVER w, first_value({vector}) OVER w), "
                f"jsonb_build_object('colour', coalesce(lead({colour}) OVER w, "
                f"first_value({colour}) OVER w)::text), '', now() FROM {table} "
                f"WHERE image <> '' AND {vector} IS NOT NULL WINDOW w AS (ORDER BY id)",
                [field.model._meta.label_lower, field.name, candidate_fp])
        self.stdout.write(f"Prepared in {time.perf_counter() - started:.1f} s")
        EmbedderRollout.objects.create(**field_key(field), live=field.embedder,
                                       shadow=CANDIDATE, started_at=timezone.now())
        timings: dict[str, Any] = {}
        with open("/proc/loadavg") as loadavg:
            timings["load"] = " ".join(loadavg.read().split()[:3])
        started = time.perf_counter()
        found = model_switch.coverage(field, CANDIDATE)
        timings["coverage (status)"] = time.perf_counter() - started
        timings["rows"] = found.total
        if not found.complete:
            raise SystemExit(f"The shadow covers {found} only")
        # What the rewrite costs without the HNSW indexes' inserts: the same switch with
        # both dropped, in a transaction rolled back (nothing is dropped for good).
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("DROP INDEX " + ", ".join(
                    connection.ops.quote_name(index.name) for index in hnsw_indexes().values()))
            started = time.perf_counter()
            model_switch.switch(field)
            timings[NO_HNSW] = time.perf_counter() - started
            transaction.set_rollback(True)
        self.stdout.write(f"{NO_HNSW}: {timings[NO_HNSW]:.1f} s")
        shadow_table = EmbeddingShadow._meta.db_table
        for step in ("switch", "rollback"):
            statements: dict[str, float] = {}
            started = time.perf_counter()
            with connection.execute_wrapper(_timed(statements, {
                    f"INSERT INTO {connection.ops.quote_name(shadow_table)}": "copy out",
                    f"UPDATE {table}": "rewrite"})):
                getattr(model_switch, step)(field)
            timings[step] = time.perf_counter() - started
            for part in ("copy out", "rewrite"):
                timings[f"{step}: {PARTS[part]}"] = statements.get(part, 0.0)
            self.stdout.write(f"{step}: {timings[step]:.1f} s ({statements})")
        return timings


NO_HNSW = "switch without the HNSW indexes (rolled back)"
# What each statement of `model_switch._swap` does, as the table says it.
PARTS = {"copy out": "the column's vectors to the shadow table",
         "rewrite": "the shadow's vectors into the column"}


def _timed(into: dict[str, float], prefixes: dict[str, str]) -> Any:
    """An ``execute_wrapper`` adding each statement's seconds to ``into`` under the name of
    the first of ``prefixes`` its SQL starts with."""
    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            for prefix, name in prefixes.items():
                if sql.startswith(prefix):
                    into[name] = into.get(name, 0.0) + time.perf_counter() - started
    return wrapper
