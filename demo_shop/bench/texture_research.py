"""Would a small pattern/texture aspect find the same item (Luma) without losing the category
(issue 12, lever 2)?

Run: ``.venv/bin/python demo_shop/bench/texture_research.py [--datasets DIR]`` after
``demo_shop/bench/feature_maps.py`` (its stored pass: model inputs and early-block
statistics; no model call here).

Candidate texture vectors, each of the product's foreground
(`visual_reco.colour.foreground_mask`) only:

- **LBP + gradients** (42 dims, from the pixels, as an aspect function of the prepared array
  would be): at full and half resolution, the uniform local binary pattern histogram
  (8 neighbours, 10 codes), the gradient orientation histogram (8 bins, weighted by
  magnitude) and the log of the gradient magnitude's median, 75th and 90th percentiles;
- **block 2 / block 3 statistics**: Xception's per-channel mean and standard deviation of
  blocks 2 (128 channels) and 3 (256), style statistics of an early layer;
- **block 2 Gram matrix** (8,256 dims, signed square root): the classic texture descriptor.

Each is added to ``similar`` today (``cos_shape + 0.3 max(cos_colour, 0)^16``) as a third
term ``w max(cos_texture, 0)^s``, with its own 100 candidates (as a third aspect's index
would add them). The weight and sharpness are chosen on the tune halves by the issue's rule
(largest Luma item R@1 with Luma category R@1 >= 0.88 and fashion type P@10 >= 0.70), and the
report halves are read at that choice.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo_shop.bench import colour_research as research  # noqa: E402
from demo_shop.bench import feature_maps as maps  # noqa: E402
from demo_shop.bench import mode_tuning as tuning  # noqa: E402
from demo_shop.bench import pooling_research as pooling  # noqa: E402

WEIGHTS = [0.05, 0.1, 0.2, 0.3, 0.5]
SHARPNESS = [1.0, 4.0, 16.0]


def lbp_gradients(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The 42-dim LBP and gradient statistics of a model input's foreground."""
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = []
    for step in (1, 2):
        level, inside = grey[::step, ::step], mask[::step, ::step][1:-1, 1:-1]
        centre = level[1:-1, 1:-1]
        around = [level[:-2, :-2], level[:-2, 1:-1], level[:-2, 2:], level[1:-1, 2:],
                  level[2:, 2:], level[2:, 1:-1], level[2:, :-2], level[1:-1, :-2]]
        # A small margin keeps flat areas' sensor noise from flipping bits.
        bits = np.stack([n >= centre + 2.0 for n in around]).astype(np.int8)
        changes = np.abs(np.diff(np.concatenate([bits, bits[:1]]), axis=0)).sum(axis=0)
        codes = np.where(changes <= 2, bits.sum(axis=0), 9)[inside]
        histogram = np.bincount(codes, minlength=10).astype(np.float32)
        gx, gy = around[3] - around[7], around[5] - around[1]
        magnitude = np.hypot(gx, gy)[inside]
        angle = np.arctan2(gy, gx)[inside] % np.pi
        orientation = np.bincount((angle / np.pi * 8).astype(int) % 8, weights=magnitude,
                                  minlength=8).astype(np.float32)
        quantiles = (np.percentile(magnitude, [50, 75, 90]) if magnitude.size
                     else np.zeros(3))
        out += [np.sqrt(histogram / max(histogram.sum(), 1.0)),
                np.sqrt(orientation / max(orientation.sum(), 1e-6)),
                np.log1p(quantiles).astype(np.float32) / 5.0]
    return np.concatenate(out)


def pixel_texture(name: str, pixels: np.ndarray) -> np.ndarray:
    """`lbp_gradients` of every model input (cached under ``.cache/feature-maps``)."""
    from visual_reco.colour import foreground_mask

    path = maps.CACHE / f"{name}-{len(pixels)}-texture-lbp.npy"
    if path.exists():
        return np.load(path)
    rows = []
    for image in pixels:
        image = np.asarray(image)
        rows.append(lbp_gradients(image, foreground_mask(image)))
    np.save(path, np.stack(rows))
    return np.load(path)


def candidates(stored: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """Every texture vector of a set, unit rows."""
    block2, block3 = np.asarray(stored["block2"]), np.asarray(stored["block3"])
    gram = np.asarray(stored["gram2"]).astype(np.float32)
    return {name_: pooling.l2(vectors) for name_, vectors in {
        "LBP + gradients (42)": pixel_texture(name, stored["pixels"]),
        "block 2 mean + std (256)": np.concatenate([block2[:, 0], block2[:, 1]], axis=1),
        "block 3 mean + std (512)": np.concatenate([block3[:, 0], block3[:, 1]], axis=1),
        "block 2 Gram (8,256)": np.sign(gram) * np.sqrt(np.abs(gram)),
    }.items()}


def main(argv: list[str] | None = None) -> None:
    """Measure each texture vector in ``similar`` on both halves; print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    args = parser.parse_args(argv)
    research.setup_django()
    started = time.perf_counter()
    sets = pooling.load_sets(args.datasets)
    data = {"luma": sets.luma, "fashion": sets.fashion}
    shape = {name: np.asarray(sets.stored[name]["cnn"]) for name in data}
    colour = {name: research.worker_colours(name, sets.stored[name]["pixels"]) for name in data}
    texture = {name: candidates(sets.stored[name], name) for name in data}
    split = {"luma": np.array([research.half(s) for s in sets.luma.labels["style"]]),
             "fashion": np.array([research.half(p.stem) for p in sets.fashion.paths])}
    print(f"loaded in {time.perf_counter() - started:.0f} s", flush=True)
    weight, sharpness = pooling.TODAY
    grid = [(0.0, 1.0)] + [(w, s) for s in SHARPNESS for w in WEIGHTS]
    rows = []
    for vector in texture["luma"]:
        results: dict[tuple[float, float], dict] = {}
        for h in ("tune", "report"):
            for name, photos in data.items():
                qs = np.flatnonzero(split[name] == h)
                half = pooling.half_of(qs, shape[name], colour[name])
                kept = pooling.nearest_mask(half.shape, half.itself, pooling.CANDIDATES)
                kept |= half.colour_kept
                tex = texture[name][vector]
                cosine = tex[qs].astype(np.float64) @ tex.T.astype(np.float64)
                tex_kept = pooling.nearest_mask(cosine, half.itself, pooling.CANDIDATES)
                base = half.shape + weight * np.maximum(half.colour, 0.0) ** sharpness
                for w, s in grid:
                    total = base + w * np.maximum(cosine, 0.0) ** s
                    allowed = (kept | tex_kept) if w > 0 else kept
                    top = research.top_k(np.where(allowed & ~half.itself, total, -np.inf), 10)
                    numbers = (tuning.luma_numbers(top, photos, qs) if name == "luma"
                               else tuning.fashion_numbers(top, photos, qs))
                    results.setdefault((w, s), {}).setdefault(h, {}).update(numbers)
        allowed = [b for b in grid[1:]
                   if results[b]["tune"]["category R@1"] >= pooling.CATEGORY_FLOOR
                   and results[b]["tune"]["type P@10"] >= pooling.TYPE_FLOOR]
        chosen = max(allowed, key=lambda b: results[b]["tune"]["item R@1"], default=None)
        for label, blend in (("`similar` today, no texture", (0.0, 1.0)), (vector, chosen)):
            if blend is None:
                rows.append([label, "none meets the rule"] + [""] * 8)
                continue
            if label.startswith("`similar`") and rows:
                continue
            tune, report = results[blend]["tune"], results[blend]["report"]
            rows.append([label, "-" if blend == (0.0, 1.0) else f"w={blend[0]:g} s={blend[1]:g}",
                         *(research.fmt(tune[k]) for k in ("item R@1", "category R@1",
                                                           "type P@10")),
                         *(research.fmt(report[k]) for k in ("item R@1", "category R@1",
                                                             "other colours R@5", "type P@10",
                                                             "colour P@10"))])
        print(f"{vector}: done at {time.perf_counter() - started:.0f} s", flush=True)
    print()
    print(research.table(["texture vector", "chosen term (tune)", "tune item R@1",
                          "tune category R@1", "tune type P@10", "report item R@1",
                          "report category R@1", "report other colours R@5",
                          "report type P@10", "report colour P@10"], rows))
    print(f"\n{research.cpu_model()}, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
