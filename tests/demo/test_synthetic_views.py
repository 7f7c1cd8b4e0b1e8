"""The synthetic shopper's-eye views and the gallery arithmetic of the photo-accuracy study
(demo_shop/bench/synthetic_views.py, demo_shop/bench/photo_accuracy.py)."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from demo_shop.bench import photo_accuracy as study
from demo_shop.bench import synthetic_views as synthetic


def studio_photo(colour=(200, 30, 30)) -> Image.Image:
    """A ring-shaped product with a white label inside it, on white, off centre."""
    photo = Image.new("RGB", (200, 160), (255, 255, 255))
    draw = ImageDraw.Draw(photo)
    draw.ellipse([40, 30, 140, 130], fill=colour)
    draw.ellipse([75, 65, 105, 95], fill=(255, 255, 255))
    return photo


def test_cutout_keeps_the_product_and_the_white_inside_it():
    part = synthetic.cutout(studio_photo())
    alpha = np.asarray(part.alpha)
    # Cropped to the product (the 101 px disc, give or take the softened edge).
    assert abs(part.image.width - 101) <= 4 and abs(part.image.height - 101) <= 4
    centre = alpha.shape[0] // 2, alpha.shape[1] // 2
    assert alpha[centre] == 255  # the white label is enclosed: part of the product
    assert alpha[0, 0] == 0 and alpha[-1, -1] == 0  # the corners are background


@pytest.mark.parametrize("family", synthetic.FAMILIES)
def test_views_are_reproducible_and_differ_from_each_other(family):
    products = [synthetic.cutout(studio_photo()), synthetic.cutout(studio_photo((20, 90, 200)))]
    backgrounds = [Image.new("RGB", (300, 300), (90, 120, 60))]
    first = list(synthetic.views(products, family, 2, backgrounds))
    again = list(synthetic.views(products, family, 3, backgrounds))
    assert len(first) == 4 and len(again) == 6
    assert all(image.size == (synthetic.SIDE, synthetic.SIDE) for image in first)
    # View v of product p is the same whatever the count asked for.
    assert np.array_equal(np.asarray(first[2]), np.asarray(again[3]))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))


def test_shop_views_need_backgrounds():
    with pytest.raises(ValueError, match="backgrounds"):
        list(synthetic.views([synthetic.cutout(studio_photo())], "shop", 1))


def test_a_product_scores_by_its_best_image_and_views_are_taken_per_product(monkeypatch):
    monkeypatch.setattr(study, "MAX_VIEWS", 2)
    vectors = study.Vectors(np.eye(4, dtype=np.float32), np.ones((4, 3), dtype=np.float32))
    gallery = study.Gallery(vectors.take(np.array([0, 1])), np.array([0, 1]))
    # Two views per product, product-major: product 0 owns rows 0-1, product 1 rows 2-3.
    views = vectors.take(np.array([2, 3, 3, 1]))
    grown = study.with_views(gallery, views, 1)
    assert grown.owners.tolist() == [0, 1, 0, 1]
    assert np.array_equal(grown.vectors.cnn[2:], vectors.cnn[[2, 3]])
    # A query like dimension 2 matches product 0's first view only.
    query, colour = np.eye(4, dtype=np.float32)[[2]], np.ones((1, 3))
    assert study.rank(query, colour, gallery, study.Setting(), 2).tolist() == [[0.0, 0.0]]
    scores = study.rank(query, colour, grown, study.Setting(), 2)
    assert scores.tolist() == [[1.0, 0.0]]
    assert study.recall(scores, np.array([0])) == (1.0, 1.0)
    assert study.recall(scores, np.array([1])) == (0.0, 1.0)
