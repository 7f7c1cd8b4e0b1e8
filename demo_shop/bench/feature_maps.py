"""One Xception pass per photo, keeping what pooling research needs (issues 12 and 13).

Run: ``.venv/bin/python demo_shop/bench/feature_maps.py [--datasets DIR] [--only NAME]``.

Every photo is decoded and fitted to the model's input exactly as production does (the
configured default embedder's ``decode`` and ``prepare``, its ``preprocess_input``), and one
model call per batch returns, besides the usual pooled vector:

- ``final``: the last feature map (``block14_sepconv2_act``, 10 x 10 x 2048, float16), from
  which every pooling of the shape vector (average, GeM, max, regional, foreground-weighted)
  is computed later without another pass;
- ``mid``: the output of block 13 (10 x 10 x 1024, float16), for concatenated mid-level
  features;
- ``early``: per channel of blocks 2 (74 x 74 x 128) and 3 (37 x 37 x 256), the mean and
  standard deviation over the product's foreground (`visual_reco.colour.foreground_mask`)
  and over the whole input, and the foreground Gram matrix of block 2 (its upper triangle):
  texture statistics for a pattern aspect.

Luma and fashion are written where ``colour_research.py`` caches its embeddings too (the CNN
vectors and the model inputs under ``.cache/colour-research/`` with the same keys), so that
script and ``mode_tuning.py`` reuse this pass. Grocery: the 81 studio photos and each
``val`` phone photo whole; with ``--crops`` also the five 70% crops of ``QUERY_MULTI_CROP``
(`visual_reco.preprocessing.multi_crops`), rows ``5 q`` .. ``5 q + 4`` of query ``q``.
Everything else lives under ``.cache/feature-maps/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo_shop.bench import colour_research as research  # noqa: E402

CACHE = ROOT / ".cache" / "feature-maps"
BATCH = 16
CROP_FRACTION = 0.7
CROPS = 5
# Outputs of the pass: name -> (shape per photo, dtype).
EARLY_CHANNELS = {"block2": 128, "block3": 256}
GRAM_SIZE = EARLY_CHANNELS["block2"] * (EARLY_CHANNELS["block2"] + 1) // 2


def cache_key(name: str, paths: list[Path]) -> str:
    """``colour_research``'s cache key of these photos under the configured embedder."""
    from visual_reco.embedders import get_embedder

    return hashlib.sha256(json.dumps([get_embedder().fingerprint, [str(p) for p in paths]])
                          .encode()).hexdigest()[:12]


def grocery_sets(folder: Path) -> tuple[list[Path], list[str], list[Path], list[str],
                                        list[str], list[str]]:
    """Grocery gallery paths and fine labels (as ``eval_csv``), ``val`` query paths, their
    fine and coarse labels and the gallery's coarse labels."""
    import csv

    with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    iconic: dict[str, dict[str, str]] = {}
    for row in rows:
        iconic.setdefault(row["iconic"], row)
    gallery = [(folder / path, r["fine_name"], r["coarse_name"])
               for path, r in iconic.items() if path]
    queries = [r for r in rows if r["split"] == "val"]
    return ([p for p, _, _ in gallery], [f for _, f, _ in gallery],
            [folder / r["path"] for r in queries], [r["fine_name"] for r in queries],
            [r["coarse_name"] for r in queries], [c for _, _, c in gallery])


def _extractor():
    """The embedder's model, returning its pooled vector and the maps this pass keeps."""
    import keras

    from visual_reco.embedders import get_embedder

    embedder = get_embedder()
    embedder.load()
    model = embedder._model
    outputs = [model.output,
               model.get_layer("block14_sepconv2_act").output,
               model.get_layer("block14_sepconv1").input,  # block 13's output
               model.get_layer("block3_sepconv1_act").input,  # block 2's output
               model.get_layer("block4_sepconv1_act").input]  # block 3's output
    return keras.Model(model.input, outputs), embedder._preprocess


def _area_resize(mask: np.ndarray, side: int) -> np.ndarray:
    """The share of foreground pixels in each cell of a ``side`` x ``side`` grid."""
    from PIL import Image

    image = Image.fromarray(mask.astype(np.float32))
    return np.asarray(image.resize((side, side), Image.Resampling.BOX), dtype=np.float32)


def _early_stats(feature: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(4, C): foreground-weighted mean and std, plain mean and std of a (H, W, C) map."""
    flat = feature.reshape(-1, feature.shape[-1]).astype(np.float64)
    w = weights.reshape(-1, 1).astype(np.float64)
    w = w / max(w.sum(), 1e-9)
    mean = (flat * w).sum(axis=0)
    std = np.sqrt(np.maximum((flat ** 2 * w).sum(axis=0) - mean ** 2, 0.0))
    return np.stack([mean, std, flat.mean(axis=0), flat.std(axis=0)]).astype(np.float32)


def _gram(feature: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The foreground-weighted Gram matrix of a (H, W, C) map, upper triangle."""
    flat = feature.reshape(-1, feature.shape[-1]).astype(np.float32)
    w = weights.reshape(-1, 1)
    gram = (flat * (w / max(float(w.sum()), 1e-9))).T @ flat
    return gram[np.triu_indices(flat.shape[1])]


class Writer:
    """Memory-mapped outputs of one set of photos, filled batch by batch."""

    def __init__(self, name: str, key: str, count: int, side: int) -> None:
        CACHE.mkdir(parents=True, exist_ok=True)
        self.prefix = CACHE / f"{name}-{key}"
        shapes = {"final": ((10, 10, 2048), np.float16), "mid": ((10, 10, 1024), np.float16),
                  "block2": ((4, 128), np.float32), "block3": ((4, 256), np.float32),
                  "gram2": ((GRAM_SIZE,), np.float16), "cnn": ((2048,), np.float32),
                  "pixels": ((side, side, 3), np.uint8)}
        self.arrays = {k: np.lib.format.open_memmap(f"{self.prefix}-{k}.tmp.npy", mode="w+",
                                                    dtype=dtype, shape=(count, *shape))
                       for k, (shape, dtype) in shapes.items()}

    def done(self) -> dict[str, Path]:
        """Flush and move every output to its final name."""
        out = {}
        for k, array in self.arrays.items():
            array.flush()
            final = Path(f"{self.prefix}-{k}.npy")
            os.replace(f"{self.prefix}-{k}.tmp.npy", final)
            out[k] = final
        self.arrays.clear()
        return out


def outputs_exist(name: str, key: str) -> bool:
    """Whether the pass over this set is cached."""
    return Path(f"{CACHE / name}-{key}-gram2.npy").exists()


def load(name: str, key: str) -> dict[str, np.ndarray]:
    """The cached outputs of a set, memory-mapped."""
    return {k: np.load(f"{CACHE / name}-{key}-{k}.npy", mmap_mode="r")
            for k in ("final", "mid", "block2", "block3", "gram2", "cnn", "pixels")}


def run_pass(name: str, key: str, count: int, image_at: Callable[[int], object]) -> None:
    """Decode, prepare and run the model over ``count`` images (``image_at(i)`` is the decoded
    PIL image of row i), writing every output."""
    import tensorflow as tf

    from visual_reco.colour import foreground_mask
    from visual_reco.embedders import get_embedder
    from visual_reco.embedders.base import l2_normalise

    if outputs_exist(name, key):
        print(f"{name}: cached", flush=True)
        return
    tf.config.threading.set_inter_op_parallelism_threads(1)
    embedder = get_embedder()
    model, preprocess = _extractor()
    writer = Writer(name, key, count, embedder.input_size)
    started = time.perf_counter()

    def prepared(start: int) -> tuple[np.ndarray, list[np.ndarray]]:
        rows = range(start, min(start + BATCH, count))
        batch = np.stack([embedder.prepare(image_at(i)) for i in rows])
        return batch, [foreground_mask(image) for image in batch]

    starts = list(range(0, count, BATCH))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepared, starts[0])
        for index, start in enumerate(starts):
            batch, masks = pending.result()
            if index + 1 < len(starts):
                pending = pool.submit(prepared, starts[index + 1])
            pooled, final, mid, block2, block3 = (
                np.asarray(x) for x in model.predict_on_batch(
                    preprocess(batch.astype(np.float32))))
            rows = slice(start, start + len(batch))
            writer.arrays["pixels"][rows] = batch
            writer.arrays["cnn"][rows] = l2_normalise(pooled)
            writer.arrays["final"][rows] = final.astype(np.float16)
            writer.arrays["mid"][rows] = mid.astype(np.float16)
            for j, mask in enumerate(masks):
                w2 = _area_resize(mask, block2.shape[1])
                w3 = _area_resize(mask, block3.shape[1])
                writer.arrays["block2"][start + j] = _early_stats(block2[j], w2)
                writer.arrays["block3"][start + j] = _early_stats(block3[j], w3)
                writer.arrays["gram2"][start + j] = _gram(block2[j], w2).astype(np.float16)
            if index % 10 == 0:
                done = start + len(batch)
                spent = time.perf_counter() - started
                print(f"{name}: {done}/{count} in {spent:.0f} s "
                      f"({done / spent:.1f}/s)", flush=True)
    paths = writer.done()
    print(f"{name}: {count} photos in {time.perf_counter() - started:.0f} s", flush=True)
    if name in ("luma", "fashion"):
        # colour_research's cache of the same photos (CNN vectors, model inputs).
        research.CACHE.mkdir(parents=True, exist_ok=True)
        for kind in ("cnn", "pixels"):
            target = research.CACHE / f"{name}-{key}-{kind}.npy"
            if not target.exists():
                os.link(paths[kind], target)


def decoder() -> Callable[[Path], object]:
    """Decode a photo as the evaluation does (`visual_reco.evaluation.embedding.load_image`);
    a photo that cannot be decoded stops the run."""
    from visual_reco.evaluation.embedding import load_image
    from visual_reco.images import ImageError

    def decode(path: Path) -> object:
        image = load_image(path)
        if isinstance(image, ImageError):
            raise SystemExit(f"{path}: {image}")
        return image
    return decode


def main(argv: list[str] | None = None) -> None:
    """Run the pass over every set (or ``--only`` one), skipping those cached."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--only", choices=["luma", "fashion", "grocery"], action="append")
    parser.add_argument("--crops", action="store_true",
                        help="also the five 70%% crops of each grocery val photo")
    args = parser.parse_args(argv)
    research.setup_django()
    from visual_reco.preprocessing import multi_crops

    decode = decoder()
    only = set(args.only or ["luma", "fashion", "grocery"])
    for name, folder_name, rows_of, column in (
            ("luma", "magento_luma", research.luma_rows, "path"),
            ("fashion", "fashion_products", research.fashion_rows, "image")):
        if name in only:
            folder = args.datasets / folder_name
            paths = [folder / r[column] for r in rows_of(folder)]
            run_pass(name, cache_key(name, paths), len(paths),
                     lambda i, paths=paths: decode(paths[i]))
    if "grocery" in only:
        gallery, _, queries, *_ = grocery_sets(args.datasets / "grocery_store")
        run_pass("grocery-gallery", cache_key("grocery-gallery", gallery), len(gallery),
                 lambda i: decode(gallery[i]))
        run_pass("grocery-val", cache_key("grocery-val", queries), len(queries),
                 lambda i: decode(queries[i]))
    if args.crops:
        _, _, queries, *_ = grocery_sets(args.datasets / "grocery_store")
        views: dict[int, list] = {}

        def crop(i: int) -> object:
            query, view = divmod(i, CROPS)
            if query not in views:
                views.clear()
                views[query] = multi_crops(decode(queries[query]), CROP_FRACTION)[1:]
            return views[query][view]
        run_pass("grocery-val-crops", cache_key("grocery-val-crops", queries),
                 CROPS * len(queries), crop)

if __name__ == "__main__":
    main()
