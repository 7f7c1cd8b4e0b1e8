"""``manage.py import_catalog [FOLDER]``: load products, their photos and their galleries
(idempotent: a product imported before gets the gallery photos it lacks)."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.core.files import File
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from tqdm import tqdm

from demo_shop.catalog import CatalogItem, folder_items, kitchenware_items
from demo_shop.shop.models import Product, ProductImage
from visual_reco.result_cache import invalidate


def _price(sku: str) -> Decimal:
    cents = int(hashlib.md5(sku.encode()).hexdigest()[:6], 16) % 9000 + 999
    return Decimal(cents) / 100


class Command(BaseCommand):
    """Create a product per catalog item not imported yet, and the gallery images (every
    view) of every item that lacks them; saving queues their embeddings."""

    help = "Import a catalog folder (default: the kitchenware wheel's photos)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder", nargs="?", help="folder of images (optionally labels.csv)")

    def handle(self, *args: Any, folder: str | None = None, **options: Any) -> None:
        items = folder_items(Path(folder)) if folder else kitchenware_items()
        existing = dict(Product.objects.values_list("sku", "style"))
        new = [item for item in items if item.sku not in existing]
        self.stdout.write(f"Catalog: {len(items)} products, {len(new)} new.")
        regrouped = [item for item in items
                     if item.sku in existing and existing[item.sku] != item.style[:120]]
        for item in regrouped:  # a catalog whose variant groups changed (a few rows)
            Product.objects.filter(sku=item.sku).update(style=item.style[:120])
        if regrouped:
            invalidate(Product)  # update() sends no signal to the similar-lists cache
            self.stdout.write(f"Variant group changed for {len(regrouped)} products.")
        # One transaction per chunk: the embeddings are queued in batches when it commits.
        for start in tqdm(range(0, len(new), 64), desc="Importing", unit="x64",
                          disable=not new):
            with transaction.atomic():
                for item in new[start:start + 64]:
                    self._create(item)
        self._add_galleries(items)

    def _add_galleries(self, items: list[CatalogItem]) -> None:
        """Give each product the gallery images of its views that it lacks."""
        products = dict(Product.objects.values_list("sku", "pk"))
        have = set(ProductImage.objects.values_list("product__sku", "view"))
        missing = [(products[item.sku[:64]], position, view, path) for item in items
                   if item.sku[:64] in products
                   for position, (view, path) in enumerate(item.gallery)
                   if (item.sku[:64], view[:40]) not in have]
        self.stdout.write(f"Gallery: {len(missing)} images to add.")
        for start in tqdm(range(0, len(missing), 64), desc="Gallery", unit="x64",
                          disable=not missing):
            with transaction.atomic():
                for product, position, view, path in missing[start:start + 64]:
                    image = ProductImage(product_id=product, view=view[:40], position=position)
                    with open(path, "rb") as handle:
                        image.image.save(path.name, File(handle), save=False)
                    image.save()

    def _create(self, item: CatalogItem) -> Product:
        product = Product(sku=item.sku[:64], name=item.name[:200], category=item.category[:120],
                          style=item.style[:120],
                          price=_price(item.sku), in_stock=int(_price(item.sku)) % 5 != 0)
        with open(item.path, "rb") as handle:
            product.image.save(item.path.name, File(handle), save=False)
        product.save()
        return product
