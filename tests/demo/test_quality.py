"""Retrieval quality of the default embedder on a real shop catalog (Magento Luma).

Skips when ../shared/datasets/magento_luma is absent.
"""

import numpy as np
import pytest

from demo_shop.catalog import folder_items
from tests.conftest import DATASETS
from visual_reco.embedders import get_embedder
from visual_reco.images import open_image

LUMA = DATASETS / "magento_luma"


@pytest.mark.dataset
@pytest.mark.skipif(not (LUMA / "labels.csv").exists(), reason="magento_luma dataset absent")
def test_luma_same_category_precision_at_5():
    items = [i for i in folder_items(LUMA) if i.category != "Gift cards"]
    assert len(items) > 400
    images = []
    for item in items:
        with open(item.path, "rb") as handle:
            images.append(open_image(handle))
    vectors = get_embedder().embed(images)
    categories = np.array([i.category for i in items])

    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    top5 = np.argsort(-similarity, axis=1)[:, :5]
    precision = float((categories[top5] == categories[:, None]).mean())

    print(f"Magento Luma main views: {len(items)} products, "
          f"{len(set(categories))} categories, same-category precision@5 = {precision:.3f}")
    assert precision >= 0.70
