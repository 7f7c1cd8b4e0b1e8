"""``manage.py bench_feedback``: the daily roll-up of many raw feedback events, and the admin
analytics page on top of the aggregates it makes.

The events are generated in SQL (``generate_series``) with surfaces named ``bench:...`` and
event ids ``bench-...``, so that the command can remove them, and their aggregates, after.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection
from django.test import Client

from demo_shop.bench.helpers import machine_line, write_section
from visual_reco.feedback.rollup import rollup
from visual_reco.models import FeedbackDaily, FeedbackEvent, FeedbackVariantDaily

CHUNK = 1_000_000
# Of 1,000 events: what shoppers do with recommendations, roughly.
MIX = "CASE WHEN r < 850 THEN 'impression' WHEN r < 950 THEN 'click' WHEN r < 980 THEN " \
      "'add_to_cart' WHEN r < 990 THEN 'purchase' WHEN r < 995 THEN 'favorite' ELSE 'dismiss' END"


class Command(BaseCommand):
    """Generate raw events, time the roll-up, then time the analytics page."""

    help = "Benchmark the feedback roll-up and the admin analytics page."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--events", type=int, default=10_000_000)
        parser.add_argument("--days", type=int, default=28)
        parser.add_argument("--products", type=int, default=2_000)
        parser.add_argument("--visitors", type=int, default=300_000)
        parser.add_argument("--requests", type=int, default=30, help="analytics page loads")
        parser.add_argument("--no-write", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        self._clean()
        try:
            started = time.perf_counter()
            self._generate(options)
            generated = time.perf_counter() - started
            self.stdout.write(f"{options['events']:,} events generated in {generated:.0f} s")
            started = time.perf_counter()
            result = rollup(wait=True)
            rolled = time.perf_counter() - started
            rows = FeedbackDaily.objects.filter(surface__startswith="bench:").count()
            self.stdout.write(f"roll-up: {rolled:.1f} s, {len(result.days or [])} days, "
                              f"{rows:,} daily rows")
            page = self._page(options["requests"])
            self.stdout.write(f"analytics page: p50 {np.percentile(page, 50):.0f} ms, "
                              f"p99 {np.percentile(page, 99):.0f} ms")
        finally:
            self._clean()
        if not options["no_write"]:
            self._write(options, rolled, rows, page)

    def _generate(self, options: dict[str, Any]) -> None:
        with connection.cursor() as cursor:
            for start in range(0, options["events"], CHUNK):
                stop = min(start + CHUNK, options["events"])
                cursor.execute(f"""
                    INSERT INTO {FeedbackEvent._meta.db_table}
                      (type, occurred_at, received_at, visitor, user_id, event_id, surface,
                       variant, source, product, position, list_id, fingerprint, quantity,
                       revenue)
                    SELECT {MIX}, t, now(), md5('v' || (g * 7919 %% %(visitors)s)::text), '',
                           'bench-' || g, 'bench:' || (ARRAY['similar', 'similar_api',
                           'photo_search'])[1 + g %% 3], CASE WHEN g %% 2 = 0 THEN 'control'
                           ELSE 'boosted' END, (g * 31 %% %(products)s)::text,
                           (g * 17 %% %(products)s)::text, 1 + g %% 8, '', 'bench', 1,
                           CASE WHEN r >= 980 AND r < 990 THEN 19.99 END
                    FROM (SELECT g, (g * 2654435761 %% 1000) AS r,
                                 now() - (g * 104729 %% (%(days)s * 86400))
                                         * interval '1 second' AS t
                          FROM generate_series(%(start)s::bigint, %(stop)s - 1) AS g) AS s
                """, {"visitors": options["visitors"], "products": options["products"],
                      "days": options["days"], "start": start, "stop": stop})
            cursor.execute(f"ANALYZE {FeedbackEvent._meta.db_table}")

    def _page(self, requests: int) -> list[float]:
        user, _ = get_user_model().objects.get_or_create(
            username="bench-analytics", defaults={"is_staff": True, "is_superuser": True})
        client = Client()
        client.force_login(user)
        url = "/admin/visual_reco/feedbackdaily/"
        timings = []
        try:
            for _ in range(requests):
                started = time.perf_counter()
                response = client.get(url)
                timings.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, response.status_code
        finally:
            user.delete()
        return timings

    def _clean(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {FeedbackEvent._meta.db_table} "
                           "WHERE event_id LIKE 'bench-%%'")
        FeedbackDaily.objects.filter(surface__startswith="bench:").delete()
        FeedbackVariantDaily.objects.filter(surface__startswith="bench:").delete()

    def _write(self, options: dict[str, Any], rolled: float, rows: int,
               page: list[float]) -> None:
        body = (
            f"{options['events']:,} raw events over {options['days']} days "
            f"({options['visitors']:,} visitors, {options['products']:,} products, 3 "
            "surfaces x 2 variants; 85% impressions, 10% clicks, 3% carts, 1% purchases), "
            "generated in SQL as if just received, so the roll-up recomputes every one of the days "
            "from them; the "
            "analytics page is the admin's `Feedback analytics` for the default 28 days, "
            f"rendered through Django's test client, {options['requests']} times. "
            f"{machine_line()}.\n\n"
            "| events | roll-up s | daily rows | page p50 ms | page p99 ms |\n"
            "|---:|---:|---:|---:|---:|\n"
            f"| {options['events']:,} | {rolled:.1f} | {rows:,} | "
            f"{np.percentile(page, 50):.0f} | {np.percentile(page, 99):.0f} |\n\n"
            f"Command: `manage.py bench_feedback --events {options['events']}` "
            "(`make bench`).")
        path = write_section(f"## Feedback roll-up and analytics\n\n{body}")
        self.stdout.write(f"Wrote {path}")
