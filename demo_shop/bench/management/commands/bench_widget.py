"""``manage.py bench_widget``: what the feedback script costs a product page, in Debian's
Chromium driven by Playwright: its size, and the page's load time with the script and with
the script's request blocked, alternating, on the demo served by gunicorn."""

from __future__ import annotations

import gzip
import shutil
import statistics
from pathlib import Path
from typing import Any

from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from demo_shop.bench.catalog_padding import ensure_demo_catalog
from demo_shop.bench.helpers import HOST, gunicorn_demo, machine_line, write_section
from demo_shop.shop.models import Product

SCRIPT = "visual_reco/feedback.js"
# Navigation Timing: when the document was parsed (deferred scripts run) and when the page,
# images included, finished loading, in ms from the navigation's start.
LOAD_MS = ("() => { const n = performance.getEntriesByType('navigation')[0];"
           " const s = performance.getEntriesByType('resource').find("
           "r => r.name.endsWith('feedback.js'));"
           " return [n.domContentLoadedEventEnd, n.loadEventEnd, s ? s.duration : 0]; }")


class Command(BaseCommand):
    """Load a product page many times with and without the script; write the difference."""

    help = "Benchmark the feedback script's cost on page load (headless Chromium)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loads", type=int, default=40, help="page loads per variant")
        parser.add_argument("--no-write", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        from playwright.sync_api import sync_playwright  # a dev dependency, for this only

        chromium = shutil.which("chromium")
        if chromium is None:
            raise CommandError("needs Debian's chromium (apt-get install chromium)")
        ensure_demo_catalog(say=self.stdout.write)
        call_command("collectstatic", "--noinput", "-v", "0")
        source = Path(finders.find(SCRIPT)).read_bytes()
        size = (len(source), len(gzip.compress(source, 9)))
        pk = Product.objects.filter(image_embedding_status="ready").values_list(
            "pk", flat=True).first()
        timings: dict[bool, list[tuple[float, ...]]] = {True: [], False: []}
        with gunicorn_demo(2, 4, {"DEMO_RATE_LIMITS": "0"}) as (port, _), \
                sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium,
                                                 args=["--no-sandbox"])
            url = f"http://{HOST}:{port}/products/{pk}/"
            for index in range(options["loads"] * 2 + 2):
                with_script = index % 2 == 0
                context = browser.new_context()
                page = context.new_page()
                if not with_script:
                    page.route(f"**/{SCRIPT}", lambda route: route.abort())
                page.goto(url, wait_until="load")
                if index >= 2:  # the first pair warms caches on both sides
                    timings[with_script].append(tuple(page.evaluate(LOAD_MS)))
                context.close()
            browser.close()
        self._report(size, timings, options)

    def _report(self, size: tuple[int, int], timings: dict[bool, list[tuple[float, ...]]],
                options: dict[str, Any]) -> None:
        def median(rows: list[tuple[float, ...]], column: int) -> float:
            return statistics.median(row[column] for row in rows)

        lines = ["| page load | DOMContentLoaded ms (median) | load ms (median) |",
                 "|---|---:|---:|"]
        for with_script in (True, False):
            rows = timings[with_script]
            lines.append(f"| {'with' if with_script else 'without'} the script | "
                         f"{median(rows, 0):.1f} | {median(rows, 1):.1f} |")
        difference = median(timings[True], 1) - median(timings[False], 1)
        fetch = median(timings[True], 2)
        self.stdout.write("\n".join(lines) + f"\nload difference {difference:.1f} ms, "
                          f"of which fetching the script {fetch:.1f} ms")
        if options["no_write"]:
            return
        body = (
            f"`{SCRIPT}`: {size[0]:,} bytes, {size[1]:,} gzipped (goal 3 kB). A demo product "
            f"page with its 8 similar products, loaded {options['loads']} times with the "
            "script and as often with the script's request blocked, alternating, each in a "
            "fresh browser context (nothing cached), in Debian's headless Chromium driven by "
            f"Playwright; gunicorn (2 x 4 threads) on the same machine ({machine_line()}). "
            "The script is `defer`red: it does not hold up parsing, but DOMContentLoaded and "
            f"load wait for it. It adds {difference:.1f} ms to the load at the median, of "
            f"which {fetch:.1f} ms is fetching it, uncached, from the demo's Django static "
            "view (a shop serves it from its web server or CDN, cached across pages).\n\n"
            + "\n".join(lines) + "\n\nCommand: `make bench` (runs `manage.py bench_widget`).")
        path = write_section(f"## Feedback script on page load\n\n{body}")
        self.stdout.write(f"Wrote {path}")
