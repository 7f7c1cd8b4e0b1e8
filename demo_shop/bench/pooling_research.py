"""Does a better pooling of Xception's last feature map tell styles apart better (issue 12) and
find the product in a phone photo more often (issue 13)?

Run: ``.venv/bin/python demo_shop/bench/pooling_research.py [--datasets DIR]`` after
``demo_shop/bench/feature_maps.py`` (the one model pass per photo this reads; with
``--crops`` there, the grocery six-crop columns too).

Every shape vector here is pooled from the same stored 10 x 10 x 2048 map (``avg`` is the
embedder's vector today): GeM, max, R-MAC-style regions, foreground-weighted pooling, and the
block-13 map's pooled features concatenated. For each, on the same splits as
``mode_tuning.py`` (Luma by the MD5 of the style, fashion by the MD5 of the id):

1. the shape vector alone: Luma same-item and same-category R@1, fashion type P@10, grocery
   fine R@1/R@5 (``val`` phone photos against the 81 studio photos) with the query as the
   whole photo, as the mean of the whole photo and its five 70% crops (six passes, the
   search today), and as the mean of the whole map and five 7 x 7 windows of it (one pass);
2. ``similar`` re-chosen for that shape vector by the issue's rule on the tune halves (the
   largest tune item R@1 whose tune category R@1 >= 0.88 and tune fashion type P@10 >= 0.70,
   over colour weight x sharpness), its report-half numbers, and grocery with it;
3. ``similar`` today (w=0.3 s=16) and ``same_colour`` (w=3 s=1) with that shape vector.

Blends rank as the query does (`visual_reco.modes.Blend.scores`: the 100 candidates of each
positive aspect, re-scored), computed here on each half's candidate mask once; the first
variant is checked against `Blend.scores` itself.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo_shop.bench import colour_research as research  # noqa: E402
from demo_shop.bench import feature_maps as maps  # noqa: E402
from demo_shop.bench import mode_tuning as tuning  # noqa: E402

# The query's candidates per aspect and issue 12's floors, as mode_tuning.py uses them.
CANDIDATES, CATEGORY_FLOOR, TYPE_FLOOR = tuning.CANDIDATES, tuning.CATEGORY_FLOOR, tuning.TYPE_FLOOR
TODAY = (0.3, 16.0)  # `similar`
SAME_COLOUR = (3.0, 1.0)
CHUNK = 128


# --- pooling --------------------------------------------------------------------------------


def l2(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def gem(block: np.ndarray, p: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Generalised mean over the spatial axes (1, 2) of (n, H, W, C) non-negative maps; p=1 is
    the average. ``weights`` (n, H, W) weigh the cells (normalised per photo)."""
    x = np.maximum(block.astype(np.float32), 0.0)
    if weights is None:
        weights = np.ones(x.shape[:3], dtype=np.float32)
    w = weights / np.maximum(weights.sum(axis=(1, 2), keepdims=True), 1e-9)
    if p == 1:
        return np.einsum("nhwc,nhw->nc", x, w)
    return np.einsum("nhwc,nhw->nc", x ** p, w) ** (1.0 / p)


def regions(side: int = 10, levels: int = 3) -> list[tuple[int, int, int]]:
    """R-MAC's square regions of a ``side`` map: at level l, l x l windows of side
    ``2 side / (l + 1)`` evenly spread ((row, column, size) each)."""
    found = []
    for level in range(1, levels + 1):
        size = round(2 * side / (level + 1)) if level > 1 else side
        starts = np.round(np.linspace(0, side - size, level)).astype(int)
        found += [(int(r), int(c), size) for r in starts for c in starts]
    return found


# The five windows of a 10 x 10 map that the five 70% crops of `multi_crops` see: centre and
# corners, 7 cells a side.
CROP_WINDOWS = [(1, 1, 7), (0, 0, 7), (0, 3, 7), (3, 0, 7), (3, 3, 7)]


def regional(block: np.ndarray, p: float, windows: list[tuple[int, int, int]]) -> np.ndarray:
    """R-MAC-style: each window pooled (GeM ``p``; ``inf``: max), L2-normalised, summed."""
    total = 0.0
    for r, c, size in windows:
        part = block[:, r:r + size, c:c + size]
        pooled = (part.astype(np.float32).max(axis=(1, 2)) if p == np.inf else gem(part, p))
        total = total + l2(pooled)
    return total


def foreground_cells(pixels: np.ndarray, side: int = 10) -> np.ndarray:
    """(n, side, side): the share of each map cell's pixels that are the product
    (`visual_reco.colour.foreground_mask` of the model input)."""
    from visual_reco.colour import foreground_mask

    return np.stack([maps._area_resize(foreground_mask(np.asarray(image)), side)
                     for image in pixels])


@dataclass(frozen=True)
class Pooling:
    """One way to turn a photo's stored maps into a shape vector."""

    name: str
    function: Callable[[dict[str, np.ndarray], np.ndarray | None], np.ndarray]
    # Whether its query can also be pooled over the map's five crop windows (one pass).
    windowed: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None


def _concat(first: np.ndarray, second: np.ndarray, weight: float) -> np.ndarray:
    return np.concatenate([l2(first), weight * l2(second)], axis=1)


def poolings() -> list[Pooling]:
    """The variants measured; ``avg`` first (the embedder's vector today)."""
    def windows(p: float) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        return lambda m: (l2(gem(m["final"], p) if p != np.inf
                             else m["final"].astype(np.float32).max(axis=(1, 2)))
                          + sum(l2(regional(m["final"], p, [w])) for w in CROP_WINDOWS))

    found = [Pooling("avg (today)", lambda m, fg: gem(m["final"], 1), windows(1))]
    found += [Pooling(f"GeM p={p:g}", lambda m, fg, p=p: gem(m["final"], p), windows(p))
              for p in (2, 3, 4)]
    found += [Pooling("max (MAC)", lambda m, fg: m["final"].astype(np.float32).max(axis=(1, 2)),
                      windows(np.inf)),
              Pooling("R-MAC (14 regions, max)",
                      lambda m, fg: regional(m["final"], np.inf, regions())),
              Pooling("R-GeM p=3 (14 regions)",
                      lambda m, fg: regional(m["final"], 3, regions())),
              Pooling("foreground-weighted avg", lambda m, fg: gem(m["final"], 1, fg)),
              Pooling("foreground-weighted GeM p=3", lambda m, fg: gem(m["final"], 3, fg)),
              Pooling("avg + block 13 avg (x0.5)",
                      lambda m, fg: _concat(gem(m["final"], 1), gem(m["mid"], 1), 0.5)),
              Pooling("avg + block 13 avg (x1)",
                      lambda m, fg: _concat(gem(m["final"], 1), gem(m["mid"], 1), 1.0)),
              Pooling("GeM p=3 + block 13 GeM p=3 (x0.5)",
                      lambda m, fg: _concat(gem(m["final"], 3), gem(m["mid"], 3), 0.5))]
    return found


def pooled(pooling: Pooling, stored: dict[str, np.ndarray], foreground: np.ndarray,
           windowed: bool = False) -> np.ndarray:
    """``pooling`` of every stored photo (a chunk at a time), unit rows."""
    parts = []
    for start in range(0, len(stored["final"]), CHUNK):
        chunk = {k: np.asarray(stored[k][start:start + CHUNK]) for k in ("final", "mid")}
        if windowed:
            parts.append(pooling.windowed(chunk))
        else:
            parts.append(pooling.function(chunk, foreground[start:start + CHUNK]))
    return l2(np.concatenate(parts))


# --- data -----------------------------------------------------------------------------------


@dataclass
class Sets:
    """The stored passes and labels of the three datasets."""

    luma: research.Photos
    fashion: research.Photos
    stored: dict[str, dict[str, np.ndarray]]
    grocery_gallery_fine: np.ndarray
    grocery_query_fine: np.ndarray


def load_sets(datasets: Path) -> Sets:
    """Every set's stored pass (`feature_maps`), labels and photos."""
    stored = {}
    luma_folder, fashion_folder = datasets / "magento_luma", datasets / "fashion_products"
    luma_rows, fashion_rows = research.luma_rows(luma_folder), research.fashion_rows(fashion_folder)
    luma_paths = [luma_folder / r["path"] for r in luma_rows]
    fashion_paths = [fashion_folder / r["image"] for r in fashion_rows]
    gallery, gallery_fine, queries, query_fine, *_ = maps.grocery_sets(datasets / "grocery_store")
    for name, paths in (("luma", luma_paths), ("fashion", fashion_paths),
                        ("grocery-gallery", gallery), ("grocery-val", queries),
                        ("grocery-val-crops", queries)):
        key = maps.cache_key(name, paths)
        if maps.outputs_exist(name, key):
            stored[name] = maps.load(name, key)
        elif name != "grocery-val-crops":
            raise SystemExit(f"{name}: run demo_shop/bench/feature_maps.py first")
    luma = research.Photos("luma", luma_paths,
                           {k: np.array([r[k] for r in luma_rows])
                            for k in ("item", "style", "colour", "category", "view")},
                           np.asarray(stored["luma"]["cnn"]), stored["luma"]["pixels"])
    fashion = research.Photos("fashion", fashion_paths,
                              {k: np.array([r[k] for r in fashion_rows])
                               for k in ("articleType", "baseColour", "subCategory")},
                              np.asarray(stored["fashion"]["cnn"]), stored["fashion"]["pixels"])
    return Sets(luma, fashion, stored, np.array(gallery_fine), np.array(query_fine))


def colours(name: str, pixels: np.ndarray) -> np.ndarray:
    """The worker's colour vectors of these model inputs (cached by ``colour_research``)."""
    return research.worker_colours(name, pixels)


# --- ranking as the query does --------------------------------------------------------------


@dataclass
class Half:
    """One half's queries against the whole gallery: cosines and the candidate mask that
    does not depend on the blend (the colour's own nearest)."""

    rows: np.ndarray
    shape: np.ndarray
    colour: np.ndarray
    colour_kept: np.ndarray
    itself: np.ndarray


def nearest_mask(cosine: np.ndarray, barred: np.ndarray, count: int) -> np.ndarray:
    """Each row's ``count`` largest columns (not ``barred``), ties to the earlier column."""
    cosine = np.where(barred, -np.inf, cosine)
    nearest = np.argsort(-cosine, axis=1, kind="stable")[:, :count]
    found = np.zeros(cosine.shape, dtype=bool)
    np.put_along_axis(found, nearest, True, axis=1)
    return found


def half_of(rows: np.ndarray, shape: np.ndarray, colour: np.ndarray,
            self_excluded: bool = True) -> Half:
    """The `Half` of query ``rows`` (indices into the gallery itself, leave-one-out)."""
    itself = rows[:, None] == np.arange(len(shape))[None, :]
    if not self_excluded:
        itself = np.zeros_like(itself)
    cosine = colour[rows].astype(np.float64) @ colour.T.astype(np.float64)
    return Half(rows, shape[rows].astype(np.float64) @ shape.T.astype(np.float64), cosine,
                nearest_mask(cosine, itself, CANDIDATES), itself)


def order(half: Half, weight: float, sharpness: float, k: int = 10,
          shape_kept: np.ndarray | None = None) -> np.ndarray:
    """Each query's ``k`` best rows under ``cos_shape + weight * max(cos_colour, 0)^s``, with
    the union of both aspects' candidates (the shape's alone for weight 0 or less)."""
    if shape_kept is None:
        shape_kept = nearest_mask(half.shape, half.itself, CANDIDATES)
    kept = shape_kept | (half.colour_kept if weight > 0 else False)
    total = half.shape + (weight * np.maximum(half.colour, 0.0) ** sharpness if weight else 0.0)
    total = np.where(kept & ~half.itself, total, -np.inf)
    return research.top_k(total, k)


# --- metrics --------------------------------------------------------------------------------


def grocery_numbers(query_shape: np.ndarray, gallery_shape: np.ndarray, sets: Sets,
                    query_colour: np.ndarray | None = None,
                    gallery_colour: np.ndarray | None = None,
                    blend: tuple[float, float] | None = None) -> dict[str, float]:
    """Fine R@1 and R@5 of the phone photos against the studio photos (81: every one is a
    candidate), by the shape alone or by ``blend`` (w, s) with the photos' colour vectors."""
    scores = query_shape.astype(np.float64) @ gallery_shape.T.astype(np.float64)
    if blend is not None:
        colour = query_colour.astype(np.float64) @ gallery_colour.T.astype(np.float64)
        scores = scores + blend[0] * np.maximum(colour, 0.0) ** blend[1]
    top = research.top_k(scores, 5)
    hit = sets.grocery_gallery_fine[top] == sets.grocery_query_fine[:, None]
    return {"fine R@1": float(hit[:, 0].mean()), "fine R@5": float(hit.any(axis=1).mean())}


GRID = [(w, s) for s in tuning.SHARPNESS for w in tuning.WEIGHTS]


def measure(shape: dict[str, np.ndarray], colour: dict[str, np.ndarray], sets: Sets,
            halves: dict[str, dict[str, np.ndarray]]) -> dict[tuple[float, float], dict]:
    """Luma and fashion numbers of every blend of `GRID` (and (0, 1): shape alone, and the
    modes `TODAY`, `SAME_COLOUR`) on both halves: ``{(w, s): {half: numbers}}``."""
    results: dict[tuple[float, float], dict] = {}
    for h in ("tune", "report"):
        luma = half_of(halves["luma"][h], shape["luma"], colour["luma"])
        fashion = half_of(halves["fashion"][h], shape["fashion"], colour["fashion"])
        luma_kept = nearest_mask(luma.shape, luma.itself, CANDIDATES)
        fashion_kept = nearest_mask(fashion.shape, fashion.itself, CANDIDATES)
        for blend in [(0.0, 1.0), *GRID, TODAY, SAME_COLOUR]:
            results.setdefault(blend, {})[h] = {
                **tuning.luma_numbers(order(luma, *blend, shape_kept=luma_kept), sets.luma,
                                      luma.rows),
                **tuning.fashion_numbers(order(fashion, *blend, shape_kept=fashion_kept),
                                         sets.fashion, fashion.rows)}
    return results


def choose(results: dict[tuple[float, float], dict]) -> tuple[float, float] | None:
    """The issue's rule on the tune halves: the largest item R@1 among the blends of `GRID`
    whose category R@1 >= `CATEGORY_FLOOR` and fashion type P@10 >= `TYPE_FLOOR`."""
    allowed = [b for b in GRID if results[b]["tune"]["category R@1"] >= CATEGORY_FLOOR
               and results[b]["tune"]["type P@10"] >= TYPE_FLOOR]
    return max(allowed, key=lambda b: results[b]["tune"]["item R@1"]) if allowed else None


def check_against_blend_scores(shape: np.ndarray, colour: np.ndarray, rows: np.ndarray) -> None:
    """The fast ranking here must order as `Blend.scores` (through ``mode_tuning.ranked``)."""
    vectors = {"shape": shape, "colour": colour}
    for weight, sharpness in (TODAY, SAME_COLOUR):
        expected = tuning.ranked(tuning.spec(weight, sharpness), vectors, rows)[:, :10]
        got = order(half_of(rows, shape, colour), weight, sharpness)
        same = (expected == got).all(axis=1).mean()
        if same < 0.995:
            raise AssertionError(f"fast ranking differs from Blend.scores: {same:.3f} equal")


def main(argv: list[str] | None = None) -> None:
    """Pool every variant, measure, print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--only", action="append", help="variants whose name starts so")
    args = parser.parse_args(argv)
    research.setup_django()
    started = time.perf_counter()
    sets = load_sets(args.datasets)
    stored = sets.stored
    colour = {"luma": colours("luma", stored["luma"]["pixels"]),
              "fashion": colours("fashion", stored["fashion"]["pixels"]),
              "grocery-gallery": colours("grocery-gallery", stored["grocery-gallery"]["pixels"]),
              "grocery-val": colours("grocery-val", stored["grocery-val"]["pixels"])}
    foreground = {name: foreground_cells(stored[name]["pixels"]) for name in stored}
    halves = {"luma": {h: np.flatnonzero(np.array([research.half(s) for s in
                                                   sets.luma.labels["style"]]) == h)
                       for h in ("tune", "report")},
              "fashion": {h: np.flatnonzero(np.array([research.half(p.stem) for p in
                                                      sets.fashion.paths]) == h)
                          for h in ("tune", "report")}}
    print(f"loaded in {time.perf_counter() - started:.0f} s", flush=True)
    alone_rows, similar_rows = [], []
    for index, pooling in enumerate(poolings()):
        if args.only and not any(pooling.name.startswith(o) for o in args.only):
            continue
        shape = {name: pooled(pooling, stored[name], foreground[name])
                 for name in ("luma", "fashion", "grocery-gallery", "grocery-val")}
        if index == 0:
            drift = np.abs(shape["luma"] - sets.luma.cnn).max()
            print(f"avg pooling against the embedder's vectors: max difference {drift:.2e}")
            check_against_blend_scores(shape["luma"], colour["luma"], halves["luma"]["tune"])
        # The search's query: six crops when their pass is stored, else the whole photo.
        multi_crop = shape["grocery-val"]
        grocery = {"whole": grocery_numbers(multi_crop, shape["grocery-gallery"], sets)}
        if "grocery-val-crops" in stored:
            crops = pooled(pooling, stored["grocery-val-crops"], foreground["grocery-val-crops"])
            multi_crop = l2(multi_crop + crops.reshape(len(multi_crop), maps.CROPS, -1).sum(axis=1))
            grocery["crops"] = grocery_numbers(multi_crop, shape["grocery-gallery"], sets)
        windows = None
        if pooling.windowed is not None:
            windows = pooled(pooling, stored["grocery-val"], foreground["grocery-val"], True)
            grocery["windows"] = grocery_numbers(windows, shape["grocery-gallery"], sets)
        results = measure(shape, colour, sets, halves)
        chosen = choose(results)
        alone = results[(0.0, 1.0)]
        alone_rows.append([
            pooling.name, str(shape["luma"].shape[1]),
            *(research.fmt(alone[h][k]) for h in ("tune", "report")
              for k in ("item R@1", "category R@1", "type P@10")),
            *(f"{research.fmt(grocery[q]['fine R@1'])} / {research.fmt(grocery[q]['fine R@5'])}"
              if q in grocery else "-" for q in ("whole", "crops", "windows"))])

        def grocery_blend(blend: tuple[float, float], queries: tuple = (multi_crop, windows),
                          shape: dict[str, np.ndarray] = shape) -> str:
            cells = []
            for query in queries:
                if query is None:
                    cells.append("-")
                    continue
                found = grocery_numbers(query, shape["grocery-gallery"], sets,
                                        colour["grocery-val"], colour["grocery-gallery"], blend)
                cells.append(f"{research.fmt(found['fine R@1'])} / "
                             f"{research.fmt(found['fine R@5'])}")
            return "; ".join(cells)

        for label, blend in (("today w=0.3 s=16", TODAY), ("re-chosen", chosen),
                             ("`same_colour` w=3 s=1", SAME_COLOUR)):
            if blend is None:
                similar_rows.append([pooling.name, label, "none meets the rule"] + [""] * 9)
                continue
            tune, report = results[blend]["tune"], results[blend]["report"]
            similar_rows.append([
                pooling.name, f"{label} (w={blend[0]:g} s={blend[1]:g})",
                *(research.fmt(tune[k]) for k in ("item R@1", "category R@1", "type P@10")),
                *(research.fmt(report[k]) for k in ("item R@1", "category R@1",
                                                    "other colours R@5", "type P@10",
                                                    "colour P@10")),
                grocery_blend(blend)])
        print(f"{pooling.name}: done at {time.perf_counter() - started:.0f} s", flush=True)
    print()
    print(research.table(
        ["shape vector", "dims", "tune item R@1", "tune category R@1", "tune type P@10",
         "report item R@1", "report category R@1", "report type P@10",
         "grocery fine R@1 / R@5, whole photo", "six crops (6 passes)",
         "map + 5 windows (1 pass)"], alone_rows))
    print()
    print(research.table(
        ["shape vector", "blend", "tune item R@1", "tune category R@1", "tune type P@10",
         "report item R@1", "report category R@1", "report other colours R@5",
         "report type P@10", "report colour P@10",
         "grocery fine R@1 / R@5: six crops if stored, else whole photo; map + 5 windows"],
        similar_rows))
    print(f"\n{research.cpu_model()}, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
