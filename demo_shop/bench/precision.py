"""float32 against bfloat16 embeddings of real photos: speed and how far the vectors move.

Run: ``.venv/bin/python demo_shop/bench/precision.py [--datasets DIR] [--photos N]``. Embeds
N grocery ``val`` phone photos and N Luma photos with the default weights in each precision
(batch 16, then one at a time), and prints images/s, the median single-photo time, the
cosine between the two vectors of each photo and how often both agree on the nearest other
photo. Search quality is measured by ``visual_reco_evaluate --set
EMBEDDER.OPTIONS.precision=...`` (docs/QUALITY.md "Embedder precision").
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_shop.settings")


def main() -> None:
    """Parse the arguments, embed in both precisions, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--photos", type=int, default=32, help="photos from each set")
    args = parser.parse_args()

    import django

    django.setup()
    from PIL import Image

    from visual_reco.conf import DEFAULT_WEIGHTS
    from visual_reco.embedders.keras import KerasApplicationEmbedder

    grocery = sorted((args.datasets / "grocery_store" / "dataset" / "val").rglob("*.jpg"))
    random.Random(0).shuffle(grocery)
    luma = sorted((args.datasets / "magento_luma" / "images").glob("*.jpg"))
    paths = grocery[:args.photos] + luma[:args.photos]
    if not paths:
        sys.exit(f"No photos under {args.datasets}")
    images = [Image.open(path).convert("RGB") for path in paths]
    vectors = {}
    for precision in ("float32", "bfloat16"):
        embedder = KerasApplicationEmbedder(weights=DEFAULT_WEIGHTS, precision=precision)
        embedder.embed(images[:2])  # load and warm
        started = time.perf_counter()
        vectors[precision] = embedder.embed(images)
        batch = len(images) / (time.perf_counter() - started)
        single = []
        for image in images[:10]:
            started = time.perf_counter()
            embedder.embed([image])
            single.append(time.perf_counter() - started)
        print(f"{precision}: batch 16 {batch:.1f} images/s, one photo median "
              f"{1000 * np.median(single):.0f} ms")
    cosine = (vectors["float32"] * vectors["bfloat16"]).sum(axis=1)
    exact = vectors["float32"] @ vectors["float32"].T
    fast = vectors["bfloat16"] @ vectors["float32"].T
    np.fill_diagonal(exact, -2.0)
    np.fill_diagonal(fast, -2.0)
    agree = float((exact.argmax(axis=1) == fast.argmax(axis=1)).mean())
    print(f"{len(images)} photos: cosine float32 vs bfloat16 min {cosine.min():.5f}, median "
          f"{np.median(cosine):.5f}; nearest other photo the same for {agree:.0%}")


if __name__ == "__main__":
    main()
