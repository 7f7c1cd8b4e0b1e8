"""``manage.py bench_query_embedding``: latency of embedding a search photo in the web
process (warm model) versus in a Celery worker (task + result), on real photos."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.test import override_settings

from demo_shop.bench.helpers import machine_line, start_worker, stop, write_section
from demo_shop.bench.samples import kitchenware_photos
from demo_shop.celery import app
from visual_reco.conf import reco_settings
from visual_reco.embedders import get_embedder, reset_embedders
from visual_reco.query_photos import embed_query

QUEUE = "bench_query_embedding"


def _percentiles(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples) * 1000
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
            "mean": float(values.mean())}


class Command(BaseCommand):
    """Measure both QUERY_EMBEDDING modes and write the table to docs/BENCHMARKS.md."""

    help = "Benchmark photo-search query embedding: web process vs Celery worker."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rounds", type=int, default=3, help="passes over the 18 photos")

    def handle(self, *args: Any, rounds: int, **options: Any) -> None:
        payloads = [p.path.read_bytes() for p in kitchenware_photos()]
        reset_embedders()
        started = time.perf_counter()
        embed_query(io.BytesIO(payloads[0]))
        cold = time.perf_counter() - started
        process = self._measure(payloads, rounds)
        self.stdout.write(f"process: cold {cold * 1000:.0f} ms, {process}")

        worker = start_worker(QUEUE)
        try:
            with override_settings(VISUAL_RECO={**getattr(settings, "VISUAL_RECO", {}),
                                                "QUERY_EMBEDDING": "worker",
                                                "QUERY_TIMEOUT": 60.0}):
                app.conf.task_routes = {"visual_reco.embed_query": {"queue": QUEUE}}
                embed_query(io.BytesIO(payloads[0]))  # the worker's model is warm after this
                in_worker = self._measure(payloads, rounds)
        finally:
            stop(worker)
        self.stdout.write(f"worker: {in_worker}")
        self._write(cold, process, in_worker, rounds * len(payloads))

    def _measure(self, payloads: list[bytes], rounds: int) -> dict[str, float]:
        samples = []
        for _ in range(rounds):
            for data in payloads:
                started = time.perf_counter()
                embed_query(io.BytesIO(data))
                samples.append(time.perf_counter() - started)
        return _percentiles(samples)

    def _write(self, cold: float, process: dict, worker: dict, n: int) -> None:
        body = (
            f"{n} searches with the 18 kitchenware photos (phone photos, 0.1-0.3 MB JPEG), "
            f"embedder `{get_embedder().fingerprint}`, query multi-crop "
            f"{reco_settings.QUERY_MULTI_CROP}, on {machine_line()}. Time from the uploaded "
            "bytes to the vector (decode, preprocess, model).\n\n"
            "| `QUERY_EMBEDDING` | p50 ms | p95 ms | mean ms |\n|---|---|---|---|\n"
            f"| `process` (warm model in the web process) | {process['p50']:.0f} | "
            f"{process['p95']:.0f} | {process['mean']:.0f} |\n"
            f"| `worker` (Celery task over Redis, result backend) | {worker['p50']:.0f} | "
            f"{worker['p95']:.0f} | {worker['mean']:.0f} |\n\n"
            f"The first search in a fresh web process also loads the model: {cold * 1000:.0f} ms."
            " `process` is the default: it is faster and needs no result backend; `worker` "
            "keeps TensorFlow out of web processes and gives up after `QUERY_TIMEOUT` (503) "
            "when no worker answers.\n\n"
            "Command: `make bench` (runs `manage.py bench_query_embedding`).")
        path = write_section(f"## Photo search: where the query photo is embedded\n\n{body}")
        self.stdout.write(f"Wrote {path}")
