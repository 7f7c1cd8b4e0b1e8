"""How a product with several photos is compared with another (issue 13, point 1): the
aggregate over image pairs that ranks products, measured on Magento Luma.

Run: ``.venv/bin/python demo_shop/bench/gallery_aggregates.py [--datasets DIR]``. Reuses the
Luma embeddings cached by ``demo_shop/bench/colour_research.py`` (computed once otherwise).

A product is a (style, colour) item, its photos are its views (``main``, ``back``,
``alt1``, ...), gift cards left out. Styles are split in two halves by the MD5 of the style,
as in docs/QUALITY.md; the aggregate is chosen on the tune half and reported on the other.
Aggregates of the cosine similarities of every (query image, candidate image) pair:

- ``max``: the best pair;
- ``mean top-2``: the mean of the two best pairs (the best alone when there is one);
- ``mean of best``: each query image's best match, averaged over the query's images;
- ``main only``: the ``main`` views alone (one image per product, as before galleries).

Metrics, all at product level (each product once in a ranking):

- **split item R@1**: each product with 2+ photos is split in two (alternate views) and the
  one half queries the catalog in which the other half stands as a product; 1 when that
  half ranks first. What "the same thing, photographed otherwise" asks of an aggregate.
- **photo R@1**: each photo of a product with 2+ photos queries the catalog in which its
  product keeps its other photos: the photo search's case (one query image).
- **category P@5** and **other colours R@5** of every product with all its photos: the
  share of the 5 nearest products in its category; for products whose style has other
  colours, whether one of them is among the 5 nearest.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo_shop.bench import colour_research as research  # noqa: E402

Aggregate = Callable[[np.ndarray], float]


def best(pairs: np.ndarray) -> float:
    """The best pair's similarity."""
    return float(pairs.max())


def mean_top2(pairs: np.ndarray) -> float:
    """The mean of the two best pairs (the best alone when there is one pair)."""
    flat = np.sort(pairs.ravel())[::-1]
    return float(flat[:2].mean())


def mean_of_best(pairs: np.ndarray) -> float:
    """Each query image's best match (rows), averaged."""
    return float(pairs.max(axis=1).mean())


AGGREGATES: dict[str, Aggregate] = {"max": best, "mean top-2": mean_top2,
                                    "mean of best": mean_of_best}


def rank(query: list[int], catalog: dict[str, list[int]], sim: np.ndarray,
         aggregate: Aggregate) -> list[str]:
    """The catalog's product names, best first, by ``aggregate`` of their pairs with
    ``query`` (photo indices)."""
    scores = {name: aggregate(sim[np.ix_(query, images)]) for name, images in catalog.items()}
    return sorted(scores, key=lambda name: -scores[name])


def measure(luma: research.Photos, half: str, aggregate: Aggregate | None) -> dict[str, float]:
    """The four metrics on the products of the styles of ``half`` (queries); the catalog is
    every product. ``aggregate`` None: the ``main`` views alone, by cosine."""
    item, style, category, view = (luma.labels[k] for k in ("item", "style", "category", "view"))
    sim = luma.cnn @ luma.cnn.T
    products: dict[str, list[int]] = defaultdict(list)
    for index, name in enumerate(item):
        products[name].append(index)
    if aggregate is None:  # one image per product: its main view (else its first)
        products = {name: sorted(rows, key=lambda r: view[r] != "main")[:1]
                    for name, rows in products.items()}
        aggregate = best
    first = {name: rows[0] for name, rows in products.items()}
    queries = [name for name in products if research.half(style[first[name]]) == half]
    split, photo, category_p5, other_r5 = [], [], [], []
    for name in queries:
        rows = products[name]
        others = {n: r for n, r in products.items() if n != name}
        if len(rows) >= 2:
            ordered = sorted(rows, key=lambda r: (view[r] != "main", view[r]))
            one, two = ordered[0::2], ordered[1::2]
            split.append(rank(one, {**others, "other half": two}, sim, aggregate)[0]
                         == "other half")
            for row in rows:
                rest = [r for r in rows if r != row]
                photo.append(rank([row], {**others, name: rest}, sim, aggregate)[0] == name)
        top = rank(rows, others, sim, aggregate)[:5]
        category_p5.append(np.mean([category[first[n]] == category[first[name]] for n in top]))
        if any(style[first[n]] == style[first[name]] for n in others):
            other_r5.append(any(style[first[n]] == style[first[name]] for n in top))
    return {"split item R@1": float(np.mean(split)) if split else float("nan"),
            "photo R@1": float(np.mean(photo)) if photo else float("nan"),
            "category P@5": float(np.mean(category_p5)),
            "other colours R@5": float(np.mean(other_r5)),
            "split queries": len(split), "photo queries": len(photo),
            "products": len(queries)}


def main() -> None:
    """Print the table of every aggregate on both halves."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    args = parser.parse_args()
    research.setup_django()
    folder = args.datasets / "magento_luma"
    rows = research.luma_rows(folder)
    paths = [folder / r["path"] for r in rows]
    cnn, _ = research.embedded("luma", paths)
    luma = research.Photos("luma", paths, {key: np.array([r[key] for r in rows])
                                           for key in ("item", "style", "category", "view")},
                           cnn, np.empty(0))
    columns = ["split item R@1", "photo R@1", "category P@5", "other colours R@5"]
    print(f"CPU: {research.cpu_model()}")
    print("| aggregate | half | " + " | ".join(columns) + " | queries (split / photo / "
          "products) |")
    print("| --- | --- |" + " --- |" * (len(columns) + 1))
    for half in ("tune", "report"):
        for label, aggregate in [("main only", None), *AGGREGATES.items()]:
            found = measure(luma, half, aggregate)
            cells = " | ".join(f"{found[c]:.3f}" for c in columns)
            print(f"| {label} | {half} | {cells} | {found['split queries']} / "
                  f"{found['photo queries']} / {found['products']} |", flush=True)


if __name__ == "__main__":
    main()
