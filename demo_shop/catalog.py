"""Catalog sources for the demo: the kitchenware wheel's photos, or any folder of images.

A folder may hold a ``labels.csv``. Two layouts are understood:

- Magento Luma (``path, style, colour, view, category, name``): one product per
  (style, colour), its ``main`` view the product's photo and every view (``main``, ``back``,
  ``alt1``, ...) an image of its gallery;
- generic (``path`` and optional ``name``, ``category``, ``sku``).

Without ``labels.csv`` every image below the folder is a product, named after its file and
categorised by its parent folder.
"""

from __future__ import annotations

import csv
import html
from dataclasses import dataclass
from pathlib import Path

from demo_shop.bench.samples import kitchenware_photos

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}


@dataclass(frozen=True)
class CatalogItem:
    """One product to import."""

    sku: str
    name: str
    category: str
    path: Path
    style: str = ""
    # Every photo of the product as (view, path), its own photo first: its gallery.
    views: tuple[tuple[str, Path], ...] = ()

    @property
    def gallery(self) -> tuple[tuple[str, Path], ...]:
        """The gallery's photos: ``views``, or the product's photo alone as ``main``."""
        return self.views or (("main", self.path),)


def kitchenware_items() -> list[CatalogItem]:
    """The 18 labelled photos shipped in the kitchenware wheel (cups, plates, forks, ...)."""
    return [CatalogItem(f"kw-{p.ident}", f"{p.label.title()} No. {p.ident}", p.label, p.path)
            for p in kitchenware_photos()]


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
    # The views of each (sku, parent product): WB01-black names a bag and a bra.
    views: dict[tuple[str, str], dict[str, Path]] = {}
    for row in rows:
        sku = "-".join(filter(None, [row["style"], row["colour"]]))
        key = (sku, row.get("product_id") or "")
        views.setdefault(key, {}).setdefault(row["view"], folder / row["path"])
    for row in rows:
        if row["view"] != "main":
            continue
        sku = "-".join(filter(None, [row["style"], row["colour"]]))
        # Luma's names hold HTML entities ("LumaTech&trade;") and doubled spaces.
        name = " ".join(html.unescape(row["name"]).split()) or row["style"].replace(
            "-", " ").title()
        if row["colour"]:
            name = f"{name} ({row['colour']})"
        # The variant group is the parent product: Luma's style codes WB01-WB05 each name a
        # bag (product_id 24-WB0n) and a bra (WB0n), which are no colours of one design.
        group = row.get("product_id") or row["style"]
        # The main view first, the others in the file's order (the first of each name).
        gallery = sorted(views[(sku, row.get("product_id") or "")].items(),
                         key=lambda view: view[0] != "main")
        items.setdefault(sku, CatalogItem(sku, name, row["category"] or "Gift cards",
                                          folder / row["path"], group, tuple(gallery)))
    return list(items.values())
