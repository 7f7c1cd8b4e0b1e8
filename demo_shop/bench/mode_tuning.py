"""Tuning the blends of the ``similar`` and ``same_colour`` modes (issue 12, point 5) with the
scorer's own knobs (weights, sharpness), exactly as the query ranks (`Blend.scores`, with the
``ASPECT_CANDIDATES`` cut), on the tune halves; the report halves are printed beside them.

Run: ``.venv/bin/python demo_shop/bench/mode_tuning.py [--datasets DIR]``. Reuses the
embeddings cached by ``demo_shop/bench/colour_research.py`` (same splits: Luma by the MD5 of
the style, fashion by the MD5 of the id) and computes the colour vectors as a worker does
(`visual_reco.aspects.compute_aspects` on the model's input arrays).

- ``similar`` is chosen on the Luma tune half: the best same-item R@1 whose same-category
  R@1 stays at least `CATEGORY_FLOOR`; the fashion tune half's type P@10 must stay within
  `TYPE_DROP` of the CNN's.
- ``same_colour`` is chosen on the fashion tune half: the best colour P@10.

``--gated`` prints instead what the scorer cannot express (its candidates come from the
heaviest aspect): the CNN's top N re-ranked by colour alone, and colour alone, to show
the ceiling of the colour vector on fashion's colour labels.
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

CANDIDATES = 100
CATEGORY_FLOOR = 0.88
TYPE_DROP = 0.01
WEIGHTS = [0.2, 0.3, 0.4, 0.6, 0.8, 0.99, 1.5, 2.0, 3.0, 5.0]
SHARPNESS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]


def spec(weight: float, sharpness: float, shape: float = 1.0) -> dict:
    """A blend spec of shape and colour."""
    return {"shape": shape, "colour": {"weight": weight, "sharpness": sharpness}}


def name_of(blend_spec: dict) -> str:
    """A short name: ``w=0.4 s=16`` (shape weight 1) or with the shape weight first."""
    colour = blend_spec.get("colour")
    if colour is None:
        return "shape only"
    shape = blend_spec["shape"]
    head = "" if shape == 1.0 else f"shape {shape:g}, "
    return f"{head}w={colour['weight']:g} s={colour['sharpness']:g}"


def colour_vectors(photos: research.Photos) -> np.ndarray:
    """The worker's colour vectors of ``photos``' model inputs (cached)."""
    from visual_reco.aspects import compute_aspects

    path = research.CACHE / f"{photos.name}-{len(photos.paths)}-worker-colour.npy"
    if path.exists():
        return np.load(path)
    vectors = np.concatenate([compute_aspects(np.asarray(photos.pixels[i:i + 256]),
                                              ["colour"])["colour"]
                              for i in range(0, len(photos.paths), 256)])
    np.save(path, vectors)
    return vectors


def ranked(blend_spec: dict, vectors: dict[str, np.ndarray], rows: np.ndarray,
           groups: np.ndarray | None = None) -> np.ndarray:
    """Each query row's gallery order (itself last) under the blend, as the query ranks."""
    from visual_reco.modes import parse_blend

    blend = parse_blend(blend_spec)
    itself = rows[:, None] == np.arange(len(vectors["shape"]))[None, :]
    same = None if groups is None else groups[rows][:, None] == groups[None, :]
    scores = blend.scores({k: v[rows] for k, v in vectors.items()}, vectors,
                          candidates=CANDIDATES, exclude=itself, same_variant=same)
    return np.argsort(-np.where(itself, -np.inf, scores), axis=1, kind="stable")


def luma_numbers(order: np.ndarray, luma: research.Photos, rows: np.ndarray) -> dict:
    """Same-item R@1 (queries with another photo of their item), same-category R@1 and the
    other-colour-variants R@5 of `visual_reco.evaluation.metrics.other_variant_metrics`."""
    from visual_reco.evaluation.metrics import other_variant_metrics

    item, style, category = (luma.labels[k] for k in ("item", "style", "category"))
    first = order[:, 0]
    counts = {i: c for i, c in zip(*np.unique(item, return_counts=True), strict=True)}
    with_item = np.array([counts[item[r]] >= 2 for r in rows])
    valid = np.ones(order[:, :5].shape, dtype=bool)
    variants = other_variant_metrics(order[:, :5], valid, item[rows], style[rows], item, style)
    return {"item R@1": float((item[first] == item[rows])[with_item].mean()),
            "category R@1": float((category[first] == category[rows]).mean()),
            "other colours R@5": variants["recall@5"]}


def fashion_numbers(order: np.ndarray, fashion: research.Photos, rows: np.ndarray) -> dict:
    """Precision@10 of article type and base colour (queries with another of their label)."""
    out = {}
    for key, labels in (("type P@10", fashion.labels["articleType"]),
                        ("colour P@10", fashion.labels["baseColour"])):
        counts = {v: c for v, c in zip(*np.unique(labels, return_counts=True), strict=True)}
        evaluable = np.array([counts[labels[r]] >= 2 for r in rows])
        hits = (labels[order[:, :10]] == labels[rows][:, None]).mean(axis=1)
        out[key] = float(hits[evaluable].mean())
    return out


def gated_table(luma: research.Photos, fashion: research.Photos, luma_half: np.ndarray,
                fashion_half: np.ndarray) -> str:
    """Fashion colour, basic colour and type P@10 per half, and Luma report-half item and
    category R@1, of the CNN's top N re-ranked by colour alone, and of colour alone."""
    fashion_colour = colour_vectors(fashion)
    luma_colour = colour_vectors(luma)
    cnn = {"fashion": fashion.cnn @ fashion.cnn.T, "luma": luma.cnn @ luma.cnn.T}
    col = {"fashion": fashion_colour @ fashion_colour.T, "luma": luma_colour @ luma_colour.T}
    rows = []
    for top in (20, 50, 100, None):
        name, function = research.gated(top) if top else research.colour_only()
        cells = [name]
        for h in ("tune", "report"):
            found = research.fashion_metrics(function(cnn["fashion"], col["fashion"]), fashion,
                                             np.flatnonzero(fashion_half == h))
            cells += [research.fmt(found[k])
                      for k in ("colour P@10", "basic colour P@10", "type P@10")]
        found = research.luma_metrics(function(cnn["luma"], col["luma"]), luma,
                                      np.flatnonzero(luma_half == "report"))
        cells += [research.fmt(found["item R@1"]), research.fmt(found["category R@1"])]
        rows.append(cells)
    return research.table(["ranking", *(f"fashion {h} {k}" for h in ("tune", "report")
                                        for k in ("colour P@10", "basic colour P@10",
                                                  "type P@10")),
                           "Luma report item R@1", "Luma report category R@1"], rows)


def main(argv: list[str] | None = None) -> None:
    """Measure the grid on both halves, choose on the tune halves, print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--gated", action="store_true",
                        help="only the CNN-top-N-by-colour forms and colour alone")
    args = parser.parse_args(argv)
    research.setup_django()
    started = time.perf_counter()
    luma, fashion = research.load_photos(args.datasets)
    luma_vectors = {"shape": luma.cnn, "colour": colour_vectors(luma)}
    fashion_vectors = {"shape": fashion.cnn, "colour": colour_vectors(fashion)}
    luma_half = np.array([research.half(s) for s in luma.labels["style"]])
    fashion_half = np.array([research.half(p.stem) for p in fashion.paths])
    halves = ("tune", "report")
    if args.gated:
        print(gated_table(luma, fashion, luma_half, fashion_half))
        return

    def measure(blend_spec: dict) -> dict[str, dict]:
        result = {}
        for h in halves:
            lrows = np.flatnonzero(luma_half == h)
            frows = np.flatnonzero(fashion_half == h)
            result[h] = {**luma_numbers(ranked(blend_spec, luma_vectors, lrows), luma, lrows),
                         **fashion_numbers(ranked(blend_spec, fashion_vectors, frows),
                                           fashion, frows)}
        return result

    grid = [{"shape": 1.0}] + [spec(w, s) for s in SHARPNESS for w in WEIGHTS]
    results = {name_of(g): measure(g) for g in grid}
    cnn = results["shape only"]["tune"]
    allowed = [n for n, r in results.items()
               if r["tune"]["category R@1"] >= CATEGORY_FLOOR
               and r["tune"]["type P@10"] >= cnn["type P@10"] - TYPE_DROP]
    default = max(allowed, key=lambda n: results[n]["tune"]["item R@1"]) if allowed else None
    same_colour = max(results, key=lambda n: results[n]["tune"]["colour P@10"])
    columns = ["item R@1", "category R@1", "other colours R@5", "type P@10", "colour P@10"]
    rows = [[n + (" **(similar)**" if n == default else "")
             + (" **(same_colour)**" if n == same_colour else ""),
             *(research.fmt(r[h][c]) for h in halves for c in columns)]
            for n, r in results.items()]
    print(research.table(["blend (score = cos_shape + w * max(cos_colour, 0)^s)",
                          *(f"{h} {c}" for h in halves for c in columns)], rows))
    print(f"\nsimilar (Luma tune half, category R@1 >= {CATEGORY_FLOOR}, fashion tune type "
          f"P@10 within {TYPE_DROP} of the CNN's): {default}; same_colour (fashion tune "
          f"colour P@10): {same_colour}; {CANDIDATES} candidates by the heavier aspect; "
          f"{research.cpu_model()}, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
