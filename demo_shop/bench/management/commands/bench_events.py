"""``manage.py bench_events``: shopper-feedback ingest (``POST /api/visual-reco/events/``)
served by gunicorn under a closed-loop load of batches on loopback, then the same load while
a gunicorn process is killed again and again, counting what was answered against what was
stored."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psutil
from django.core.management.base import BaseCommand, CommandParser

from demo_shop.bench.catalog_padding import ensure_demo_catalog
from demo_shop.bench.helpers import HOST, gunicorn_demo, machine_line, write_section
from demo_shop.bench.loadgen import LoadResult, run_load
from demo_shop.shop.models import Product
from visual_reco.feedback.tokens import issue
from visual_reco.models import FeedbackEvent

VISITOR = "bench-visitor-0123456789"
PREFIX = "bench-"
BATCH_ID = re.compile(rb'"event_id": "(bench-[0-9a-f]+)-0"')


def event_batches(size: int, sent: list[str]) -> Callable[[], bytes]:
    """A request factory: each call posts ``size`` new impressions of a served list (ids
    unique per batch, remembered in ``sent``)."""
    pks = list(Product.objects.filter(image_embedding_status="ready")
               .values_list("pk", flat=True)[:9])
    token = issue("similar", pks[0], pks[1:])

    def make() -> bytes:
        batch = f"{PREFIX}{uuid.uuid4().hex[:12]}"
        sent.append(batch)
        now = int(time.time() * 1000)
        events = [{"type": "impression", "event_id": f"{batch}-{i}", "token": token,
                   "product": str(pks[1 + i % (len(pks) - 1)]), "ts": now}
                  for i in range(size)]
        body = json.dumps({"events": events}).encode()
        return (f"POST /api/visual-reco/events/ HTTP/1.1\r\nHost: {HOST}\r\n"
                f"Cookie: vr_vid={VISITOR}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    return make


class Command(BaseCommand):
    """Measure event ingest, then check that killed processes lose no answered batch."""

    help = "Benchmark the feedback events endpoint (gunicorn + loopback load generator)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--seconds", type=float, default=10.0)
        parser.add_argument("--batch", type=int, default=20, help="events per request")
        parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
        parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1) + 1)
        parser.add_argument("--threads", type=int, default=2)
        parser.add_argument("--kills", type=int, default=5,
                            help="gunicorn processes killed during the loss check")
        parser.add_argument("--no-write", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        ensure_demo_catalog(say=self.stdout.write)
        env = {"DEMO_RATE_LIMITS": "0"}
        rows = []
        try:
            with gunicorn_demo(options["workers"], options["threads"], env) as (port, server):
                for level in options["concurrency"]:
                    sent: list[str] = []
                    result = run_load(HOST, port, event_batches(options["batch"], sent), level,
                                      options["seconds"])
                    rows.append((level, result))
                    self._report(level, result, options["batch"])
                loss = self._kill_check(port, server, options)
        finally:
            FeedbackEvent.objects.filter(event_id__startswith=PREFIX).delete()
        if not options["no_write"]:
            self._write(rows, loss, options)

    def _kill_check(self, port: int, server: Any, options: dict[str, Any]) -> dict[str, int]:
        """Load while SIGKILLing a gunicorn process every second: every answered batch must
        be stored whole, and no batch stored in part."""
        sent: list[str] = []
        make = event_batches(options["batch"], sent)
        stop = threading.Event()

        def killer() -> None:
            for _ in range(options["kills"]):
                if stop.wait(1.0):
                    return
                children = psutil.Process(server.pid).children()
                if children:
                    os.kill(children[0].pid, signal.SIGKILL)
        thread = threading.Thread(target=killer)
        thread.start()
        try:
            result = run_load(HOST, port, make, 8, options["kills"] + 2, tolerate=True,
                              keep_answered=True)
        finally:
            stop.set()
            thread.join()
        mine = set(sent)
        stored = {batch: n for batch, n in self._batches().items() if batch in mine}
        answered = [BATCH_ID.search(request).group(1).decode() for request in result.answered]
        loss = {"answered": len(answered), "sent": len(sent), "errors": result.errors,
                "stored_whole": sum(count == options["batch"] for count in stored.values()),
                "stored_partial": sum(count != options["batch"] for count in stored.values()),
                "lost": sum(stored.get(batch, 0) != options["batch"] for batch in answered)}
        self.stdout.write(f"kill check: {loss}")
        return loss

    @staticmethod
    def _batches() -> dict[str, int]:
        counts: dict[str, int] = {}
        for event_id in FeedbackEvent.objects.filter(event_id__startswith=PREFIX).values_list(
                "event_id", flat=True).iterator():
            batch = event_id.rsplit("-", 1)[0]
            counts[batch] = counts.get(batch, 0) + 1
        return counts

    def _report(self, level: int, result: LoadResult, batch: int) -> None:
        self.stdout.write(f"x{level}: {result.rate * batch:.0f} events/s "
                          f"({result.rate:.0f} batches/s), p50 {result.percentile(50):.1f} ms, "
                          f"p99 {result.percentile(99):.1f} ms, {result.errors} errors")
        self.stdout.flush()

    def _write(self, rows: list[tuple[int, LoadResult]], loss: dict[str, int],
               options: dict[str, Any]) -> None:
        batch = options["batch"]
        lines = ["| concurrent connections | events/s | batches/s | p50 ms | p99 ms | errors |",
                 "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {level} | {r.rate * batch:.0f} | {r.rate:.0f} | {r.percentile(50):.1f} | "
                  f"{r.percentile(99):.1f} | {r.errors} |" for level, r in rows]
        body = (
            f"`POST /api/visual-reco/events/` with batches of {batch} impressions, gunicorn "
            f"`demo_shop.wsgi` with {options['workers']} processes x {options['threads']} "
            "threads, DEBUG off, Postgres and Redis on the same machine, a closed-loop "
            f"keep-alive load generator on it too ({machine_line()}), "
            f"{options['seconds']:.0f} s per row. Each batch is validated whole and written "
            "in the request's transaction (no buffer), so an answered batch is stored.\n\n"
            + "\n".join(lines)
            + f"\n\nKilled processes: with 8 connections, a gunicorn process SIGKILLed every "
            f"second ({options['kills']} times): {loss['answered']} batches answered 200, "
            f"{loss['stored_whole']} stored whole, {loss['stored_partial']} stored in part, "
            f"{loss['lost']} answered but not stored.\n\nCommand: `make bench` (runs "
            "`manage.py bench_events`).")
        path = write_section(f"## Feedback event ingest\n\n{body}")
        self.stdout.write(f"Wrote {path}")
