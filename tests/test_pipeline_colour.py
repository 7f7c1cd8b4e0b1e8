"""The colour aspect through the real path: save -> Redis -> Celery worker -> Xception and the
colour vector from the same prepared image -> pgvector; and rows embedded before the colour
existed, made whole again by the sweep."""

import numpy as np
import pytest
from django.core.management import call_command
from pgvector.django import CosineDistance

from tests.conftest import DATASETS, upload, wait_for_status
from tests.testapp.models import Item
from visual_reco.colour import DIMENSIONS, colour_similarity, colour_vector, dominant_colours
from visual_reco.embedders import get_embedder
from visual_reco.jobs import mark_stale, sweep
from visual_reco.models import EmbeddingStatus
from visual_reco.query import to_array, vector_of
from visual_reco.registry import get_embedding_field

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]
DONE = {EmbeddingStatus.READY, EmbeddingStatus.FAILED}
LUMA = DATASETS / "magento_luma" / "images"
# halfvec keeps 11 significant bits: entries of a unit vector are within 2**-11 of float32.
HALFVEC_ATOL = 1e-3


def expected_colour(path) -> np.ndarray:
    """The colour vector computed here as the worker computes it: decoded by the embedder,
    prepared for the model, before the model's own input scaling."""
    embedder = get_embedder()
    with open(path, "rb") as handle:
        image = embedder.decode(handle)
    return colour_vector(embedder.prepare(image))


def stored_colour(item) -> np.ndarray:
    item.refresh_from_db()
    return to_array(item.embedding_colour)


def test_the_worker_stores_the_colour_of_the_prepared_image(celery_worker, photos):
    item = wait_for_status(Item.objects.create(name="cup", photo=upload(photos[13].path)), DONE)

    assert item.embedding_status == EmbeddingStatus.READY, item.embedding_error
    fingerprint = get_embedding_field(Item).fingerprint_for(get_embedder())
    assert item.embedding_fingerprint == fingerprint
    assert fingerprint == f"{get_embedder().fingerprint}+colour.1"
    stored = stored_colour(item)
    assert stored.shape == (DIMENSIONS,)
    assert np.linalg.norm(stored) == pytest.approx(1.0, abs=2e-3)
    np.testing.assert_allclose(stored, expected_colour(photos[13].path), atol=HALFVEC_ATOL)


@pytest.mark.dataset
@pytest.mark.skipif(not LUMA.is_dir(), reason="../shared/datasets/magento_luma is absent")
def test_two_colours_of_one_hoodie_look_alike_to_the_cnn_and_differ_in_colour(celery_worker):
    """Luma's Teton Pullover Hoodie in red and in black: the colour column tells them apart."""
    red = Item.objects.create(name="red", photo=upload(LUMA / "mh02-red_main.jpg"))
    black = Item.objects.create(name="black", photo=upload(LUMA / "mh02-black_main.jpg"))
    red, black = wait_for_status(red, DONE), wait_for_status(black, DONE)
    assert red.embedding_status == black.embedding_status == EmbeddingStatus.READY

    red_colour, black_colour = stored_colour(red), stored_colour(black)
    np.testing.assert_allclose(red_colour, expected_colour(LUMA / "mh02-red_main.jpg"),
                               atol=HALFVEC_ATOL)
    assert dominant_colours(red_colour)[0][0] == "red"
    assert dominant_colours(black_colour)[0][0] == "black"
    # Measured: CNN cosine 0.81, colour cosine 0.40 (similarity 5e-7).
    assert float(vector_of(red) @ vector_of(black)) > 0.7
    assert float(red_colour @ black_colour) < 0.55
    assert float(colour_similarity(red_colour, black_colour[None, :])[0]) < 0.01
    # The index answers colour queries: the red hoodie is its own nearest colour.
    nearest = Item.objects.order_by(CosineDistance("embedding_colour", red_colour)).first()
    assert nearest.pk == red.pk


def test_rows_embedded_before_the_colour_are_stale_and_the_sweep_fills_them(celery_worker,
                                                                            photos):
    item = wait_for_status(Item.objects.create(name="old", photo=upload(photos[14].path)), DONE)
    embedder = get_embedder()
    # What a row written before this version looks like: the embedder's fingerprint alone
    # and no colour column value.
    Item.objects.filter(pk=item.pk).update(embedding_fingerprint=embedder.fingerprint,
                                           embedding_colour=None)
    before = vector_of(item)

    assert mark_stale(Item) == 1
    item.refresh_from_db()
    assert item.embedding_status == EmbeddingStatus.STALE
    assert item.embedding is not None  # keeps serving its vector meanwhile

    assert sweep()["testapp.Item"].queued == 1
    item = wait_for_status(item, DONE)
    assert item.embedding_status == EmbeddingStatus.READY
    assert item.embedding_fingerprint == get_embedding_field(Item).fingerprint_for(embedder)
    np.testing.assert_allclose(stored_colour(item), expected_colour(photos[14].path),
                               atol=HALFVEC_ATOL)
    assert float(vector_of(item) @ before) > 0.999


def test_the_reindex_command_fills_the_colour_of_old_rows_too(celery_worker, photos):
    item = wait_for_status(Item.objects.create(name="old", photo=upload(photos[15].path)), DONE)
    Item.objects.filter(pk=item.pk).update(embedding_fingerprint=get_embedder().fingerprint,
                                           embedding_colour=None)
    call_command("visual_reco_reindex", "--model", "testapp.Item", "--wait",
                 "--timeout", "180")
    item.refresh_from_db()
    assert item.embedding_status == EmbeddingStatus.READY
    assert item.embedding_fingerprint.endswith("+colour.1")
    assert stored_colour(item).shape == (DIMENSIONS,)
