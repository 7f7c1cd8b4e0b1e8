"""The demo's catalog sources give each product its gallery: every Luma view of the item.

Skips the Luma part when ../shared/datasets/magento_luma is absent.
"""

import csv

import pytest

from demo_shop.catalog import folder_items
from tests.conftest import DATASETS

LUMA = DATASETS / "magento_luma"


@pytest.mark.skipif(not (LUMA / "labels.csv").exists(), reason="magento_luma dataset absent")
def test_each_luma_item_has_every_view_in_its_gallery_main_first():
    items = {item.sku: item for item in folder_items(LUMA)}
    with open(LUMA / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    views = {}
    for row in rows:
        sku = "-".join(filter(None, [row["style"], row["colour"]]))
        views.setdefault((sku, row["product_id"]), set()).add(row["view"])
    assert set(items) == {sku for sku, _ in views}
    for sku, item in items.items():
        assert item.gallery[0] == ("main", item.path)  # the product's own photo first
        # WB01-black is a bag and a bra: the product is the first, and so are its views.
        assert {view for view, _ in item.gallery} == views[(sku, item.style)]
        assert all(path.exists() for _, path in item.gallery)
    several = [item for item in items.values() if len(item.gallery) > 1]
    assert len(several) >= 150  # 152 (style, colour) groups have two or more photos
    assert sum(len(item.gallery) for item in items.values()) > len(items) + 250


@pytest.mark.skipif(not (LUMA / "labels.csv").exists(), reason="magento_luma dataset absent")
def test_luma_names_are_shown_as_text_not_html():
    """labels.csv writes "LumaTech&trade;" and doubled spaces; a shopper reads the name."""
    names = [item.name for item in folder_items(LUMA)]
    assert "Ryker LumaTech\u2122 Tee (V-neck) (black)" in names
    assert not [name for name in names if "&" in name and ";" in name or "  " in name]


def test_a_folder_without_views_has_the_product_photo_as_its_gallery(tmp_path):
    (tmp_path / "cups").mkdir()
    photo = tmp_path / "cups" / "blue_cup.jpg"
    photo.write_bytes(b"not decoded here")
    (item,) = folder_items(tmp_path)
    assert item.gallery == (("main", photo),)
