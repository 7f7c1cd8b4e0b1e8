"""``manage.py bench_embedding``: embedding throughput of the default backbone through the
real code path, by batch size, against the machine's FP32 limit and a seed-style baseline."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandParser

from demo_shop.bench.helpers import cpu_model_and_mhz, machine_line, write_section
from demo_shop.bench.samples import kitchenware_photos
from visual_reco.embedders import get_embedder
from visual_reco.embedders.keras import cpu_flags
from visual_reco.embedders.weights import resolve_model_file
from visual_reco.images import open_image


def model_flops(model: Any) -> float:
    """Floating-point operations (2 x multiply-adds) of one forward pass of ``model``'s
    convolutions, which dominate a CNN backbone."""
    import keras

    macs = 0
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D | keras.layers.SeparableConv2D |
                          keras.layers.DepthwiseConv2D):
            continue
        _, height, width, c_out = layer.output.shape
        c_in = layer.input.shape[-1]
        k_h, k_w = layer.kernel_size
        if isinstance(layer, keras.layers.SeparableConv2D):
            macs += height * width * k_h * k_w * c_in + height * width * c_in * c_out
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            macs += height * width * k_h * k_w * c_in
        else:
            macs += height * width * k_h * k_w * c_in * c_out
    return 2.0 * macs


def _rate(run, images_per_call: int, seconds: float) -> float:
    run()  # warm-up (graph tracing, oneDNN primitive creation)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        done += images_per_call
    return done / (time.perf_counter() - started)


class Command(BaseCommand):
    """Measure images/s by batch size and write the table to docs/BENCHMARKS.md."""

    help = "Benchmark embedding throughput (real code path vs FP32 limit and seed baseline)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
        parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32])
        parser.add_argument("--baseline-calls", type=int, default=3)

    def handle(self, *args: Any, seconds: float, batch_sizes: list[int], baseline_calls: int,
               **options: Any) -> None:
        payloads = [p.path.read_bytes() for p in kitchenware_photos()]
        images = [open_image(io.BytesIO(data)) for data in payloads] * 2
        embedder = get_embedder()
        started = time.perf_counter()
        embedder.load()
        load_seconds = time.perf_counter() - started
        flops = model_flops(embedder._model)
        rows = []
        for size in batch_sizes:
            embedder.batch_size = size
            batch = (images * (size // len(images) + 1))[:max(size, 1)]
            rate = _rate(lambda b=batch: embedder.embed(b), len(batch), seconds)
            rows.append((f"`embed()`, batch {size} (decoded images)", rate))
            self.stdout.write(f"batch {size}: {rate:.1f} img/s")
        embedder.batch_size = 16
        chunk = payloads[:16]
        decode_rate = _rate(lambda: embedder.embed([open_image(io.BytesIO(d)) for d in chunk]),
                            len(chunk), seconds)
        rows.append(("JPEG bytes -> vector, batch 16", decode_rate))
        aspects_rate = _rate(lambda: embedder.embed_with_aspects(
            [open_image(io.BytesIO(d)) for d in chunk], ("colour",)), len(chunk), seconds)
        rows.append(("JPEG bytes -> vector + colour aspect, batch 16 (what a worker task "
                     "does)", aspects_rate))
        self.stdout.write(f"JPEG -> vector {decode_rate:.1f} img/s, + colour "
                          f"{aspects_rate:.1f} img/s")
        baseline = self._baseline(embedder, payloads[:baseline_calls])
        self._write(rows, baseline, flops, load_seconds)

    def _baseline(self, embedder: Any, payloads: list[bytes]) -> float:
        """Seed-style: build the model and load its weights for every image, predict one."""
        import keras

        source, layer = resolve_model_file(embedder.weights)
        started = time.perf_counter()
        for data in payloads:
            saved = keras.saving.load_model(source, compile=False)
            model = keras.applications.Xception(include_top=False, weights=None, pooling="avg",
                                                input_shape=(299, 299, 3))
            model.set_weights(saved.get_layer(layer).get_weights())
            pixels = embedder.prepare(open_image(io.BytesIO(data)))[None].astype(np.float32)
            model.predict(keras.applications.xception.preprocess_input(pixels), verbose=0)
        rate = len(payloads) / (time.perf_counter() - started)
        self.stdout.write(f"seed-style baseline: {rate:.2f} img/s")
        return rate

    def _write(self, rows: list[tuple[str, float]], baseline: float, flops: float,
               load_seconds: float) -> None:
        model, mhz = cpu_model_and_mhz()
        import os

        cores = os.cpu_count() or 1
        avx2_peak = cores * mhz * 1e6 * 32  # 8-wide FMA x 2 units x 2 FLOP
        lines = ["| path | images/s | GFLOP/s | % of AVX2+FMA limit | x baseline |",
                 "|---|---|---|---|---|"]
        for name, rate in rows:
            lines.append(f"| {name} | {rate:.1f} | {rate * flops / 1e9:.0f} | "
                         f"{100 * rate * flops / avx2_peak:.0f}% | {rate / baseline:.0f}x |")
        lines.append(f"| seed-style baseline: build the model per call, one image | "
                     f"{baseline:.2f} | {baseline * flops / 1e9:.1f} | "
                     f"{100 * baseline * flops / avx2_peak:.1f}% | 1x |")
        avx512 = "avx512f" in cpu_flags()
        body = (
            f"Embedder `{get_embedder().fingerprint}` on {machine_line()}. One 299x299 image "
            f"costs {flops / 1e9:.2f} GFLOP (2 x multiply-adds of the convolutions, counted "
            f"from the Keras model). FP32 limit as the issue defines it: {cores} cores x "
            f"{mhz / 1000:.2f} GHz x 32 FLOP/cycle (AVX2 + FMA) = {avx2_peak / 1e9:.0f} GFLOP/s"
            + (f"; this CPU also has AVX-512, which doubles the limit to "
               f"{2 * avx2_peak / 1e9:.0f} GFLOP/s, and TensorFlow's oneDNN kernels use it, "
               "so more than 100% of the AVX2 limit is possible." if avx512 else ".")
            + f" Model load: {load_seconds:.1f} s once per worker process.\n\n"
            + "\n".join(lines)
            + "\n\nImages: the 18 kitchenware photos, decoded once (rows 1-5) or from their "
            "JPEG bytes (rows 6-7; row 7 also computes the colour vector from each prepared "
            "array, `embed_with_aspects`, as the worker does for a field with the default "
            "aspects). Command: `make bench` (runs `manage.py bench_embedding`).")
        path = write_section(f"## Embedding throughput\n\n{body}")
        self.stdout.write(f"Wrote {path}")
