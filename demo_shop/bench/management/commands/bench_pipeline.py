"""``manage.py bench_pipeline``: upload -> recommendable latency through a real warm worker,
and the memory of worker and web processes."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import psutil
from django.core.files.base import ContentFile
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.test import override_settings

from demo_shop.bench.helpers import machine_line, start_worker, stop, write_section
from demo_shop.bench.samples import kitchenware_photos
from demo_shop.shop.models import Product
from visual_reco.conf import reco_settings
from visual_reco.embedders import get_embedder

QUEUE = "bench_pipeline"


def _rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


class Command(BaseCommand):
    """Save products with photos one at a time and time until each is recommendable."""

    help = "Benchmark upload -> recommendable latency and process memory."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--uploads", type=int, default=20)
        parser.add_argument("--timeout", type=float, default=120.0)

    def handle(self, *args: Any, uploads: int, timeout: float, **options: Any) -> None:
        web_rss = _rss_mb(psutil.Process())
        photos = [p.path.read_bytes() for p in kitchenware_photos()]
        worker = start_worker(QUEUE)
        created: list[int] = []
        try:
            with override_settings(VISUAL_RECO={**reco_settings.user_settings,
                                                "TASK_QUEUE": QUEUE}):
                self._upload(photos[0], created, timeout)  # the worker loads its model
                latencies = [self._upload(photos[i % len(photos)], created, timeout)
                             for i in range(1, uploads + 1)]
            children = psutil.Process(worker.pid).children(recursive=True)
            worker_rss = {"main": _rss_mb(psutil.Process(worker.pid)),
                          "pool": max((_rss_mb(c) for c in children), default=0.0)}
        finally:
            stop(worker)
            for product in Product.objects.filter(pk__in=created):
                product.image.delete(save=False)
            Product.objects.filter(pk__in=created).delete()
        get_embedder().load()
        web_model_rss = _rss_mb(psutil.Process())
        self._write(np.asarray(latencies) * 1000, web_rss, web_model_rss, worker_rss)

    def _upload(self, data: bytes, created: list[int], timeout: float) -> float:
        started = time.perf_counter()
        product = Product(sku=f"bench-{uuid.uuid4().hex[:12]}", name="benchmark upload")
        product.image.save(f"bench-{uuid.uuid4().hex[:8]}.jpg", ContentFile(data), save=False)
        product.save()  # autocommit: the task is queued on commit, here
        created.append(product.pk)
        ready = Product.objects.filter(pk=product.pk, image_embedding_status="ready")
        while not ready.exists():
            if time.perf_counter() - started > timeout:
                raise CommandError(f"product {product.pk} not embedded within {timeout}s")
            time.sleep(0.005)
        product.refresh_from_db()  # the vector the worker wrote
        if not Product.objects.visually_similar(product, limit=1):
            raise CommandError("an embedded product produced no recommendation")
        return time.perf_counter() - started

    def _write(self, latencies: np.ndarray, web_rss: float, web_model_rss: float,
               worker_rss: dict[str, float]) -> None:
        body = (
            f"{len(latencies)} uploads, one at a time, of the kitchenware photos, each a "
            "`Product.save()` with a new image, timed until its row is `ready` and "
            "`visually_similar` returns results; one warm worker (concurrency 1) over Redis. "
            f"{machine_line()}.\n\n"
            "| upload -> recommendable | ms |\n|---|---|\n"
            f"| p50 | {np.percentile(latencies, 50):.0f} |\n"
            f"| p95 | {np.percentile(latencies, 95):.0f} |\n"
            f"| max | {latencies.max():.0f} |\n\n"
            "| process | RSS MB |\n|---|---|\n"
            f"| web process (Django, DRF, visual_reco; no model) | {web_rss:.0f} |\n"
            f"| web process with the model loaded (`QUERY_EMBEDDING=\"process\"`) | "
            f"{web_model_rss:.0f} |\n"
            f"| Celery worker main process | {worker_rss['main']:.0f} |\n"
            f"| Celery pool process with the model loaded | {worker_rss['pool']:.0f} |\n\n"
            "Command: `make bench` (runs `manage.py bench_pipeline`).")
        path = write_section(f"## Upload to recommendation, and memory\n\n{body}")
        self.stdout.write(f"p50 {np.percentile(latencies, 50):.0f} ms; wrote {path}")
