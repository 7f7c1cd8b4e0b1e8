"""What shoppers' own photos do for photo search when a shop adds them as extra images of its
products (issue 13, point 1): the Grocery Store set, each product's studio ("iconic") photo
alone against the iconic photo plus the ``train`` phone photos of that product as its gallery;
the ``val`` phone photos are the queries.

Run: ``.venv/bin/python demo_shop/bench/gallery_grocery.py [--datasets DIR]``. Embeddings are
computed once and cached as ``demo_shop/bench/colour_research.py`` caches them. A product is a
fine class (81); it ranks by its best image (the gallery's aggregate, chosen on Luma: see
docs/QUALITY.md). Queries are embedded whole (no multi-crop) and ranked by the CNN cosine
alone, so both catalogs are compared on the same query vectors; nothing is chosen here.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo_shop.bench import colour_research as research  # noqa: E402


def recall(queries: np.ndarray, labels: np.ndarray, gallery: np.ndarray,
           owners: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Recall@1 and @5 of ``queries`` (their fine class ``labels``) against products whose
    images are ``gallery`` (each image's class in ``owners``), a product scored by its best
    image."""
    similarity = queries @ gallery.T
    scores = np.stack([similarity[:, owners == name].max(axis=1) for name in classes], axis=1)
    order = np.argsort(-scores, axis=1)
    ranked = np.array(classes)[order]
    hits = ranked == labels[:, None]
    return {"R@1": float(hits[:, 0].mean()), "R@5": float(hits[:, :5].any(axis=1).mean())}


def main() -> None:
    """Print the two rows."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    args = parser.parse_args()
    research.setup_django()
    folder = args.datasets / "grocery_store"
    with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    iconic = {row["fine_name"]: row["iconic"] for row in rows}
    classes = sorted(iconic)
    train = [row for row in rows if row["split"] == "train"]
    val = [row for row in rows if row["split"] == "val"]
    iconic_vectors, _ = research.embedded(
        "grocery-iconic", [folder / iconic[name] for name in classes])
    train_vectors, _ = research.embedded("grocery-train", [folder / r["path"] for r in train])
    val_vectors, _ = research.embedded("grocery-val", [folder / r["path"] for r in val])
    labels = np.array([row["fine_name"] for row in val])
    only = recall(val_vectors, labels, iconic_vectors, np.array(classes), classes)
    gallery = np.concatenate([iconic_vectors, train_vectors])
    owners = np.array(classes + [row["fine_name"] for row in train])
    with_train = recall(val_vectors, labels, gallery, owners, classes)
    print(f"CPU: {research.cpu_model()}; {len(val)} val queries, {len(classes)} products, "
          f"{len(train)} train photos")
    print("| catalog | images per product | fine R@1 | fine R@5 |")
    print("| --- | --- | --- | --- |")
    print(f"| iconic photo only | 1 | {only['R@1']:.3f} | {only['R@5']:.3f} |")
    print(f"| iconic + train phone photos (gallery) | {len(gallery) / len(classes):.1f} | "
          f"{with_train['R@1']:.3f} | {with_train['R@5']:.3f} |")


if __name__ == "__main__":
    main()
