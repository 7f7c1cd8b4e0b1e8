"""The real path: save -> on_commit -> Redis -> Celery worker -> TensorFlow -> pgvector."""

import io
import socket
import time

import numpy as np
import pytest
from celery import current_app
from django.core.management import call_command
from django.db import transaction
from kombu import pools
from PIL import Image

from tests.celery_app import app as celery_app
from tests.conftest import EMBED_TIMEOUT, corrupt_jpeg, upload, wait_for_status
from tests.testapp.models import Item, ItemImage, Look
from visual_reco.embedders import get_embedder
from visual_reco.embedding import embed_objects
from visual_reco.images import ImageError
from visual_reco.jobs import sweep
from visual_reco.models import EmbeddingStatus
from visual_reco.query import vector_of
from visual_reco.query_photos import SearchUnavailable, embed_query

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]
DONE = {EmbeddingStatus.READY, EmbeddingStatus.FAILED}


def test_saved_photo_is_embedded_by_the_worker(celery_worker, photos):
    item = Item.objects.create(name="cup", photo=upload(photos[0].path))
    assert item.embedding_status == EmbeddingStatus.PENDING

    item = wait_for_status(item, DONE)

    assert item.embedding_status == EmbeddingStatus.READY, item.embedding_error
    embedder = get_embedder()
    assert item.embedding_fingerprint == f"{embedder.fingerprint}+colour.1"
    assert item.embedding_updated_at is not None
    stored = vector_of(item)
    assert stored.shape == (2048,)
    assert np.linalg.norm(stored) == pytest.approx(1.0, abs=1e-2)
    # The worker's vector is what this process computes for the same photo (halfvec rounding).
    with Image.open(photos[0].path) as image:
        here = embedder.embed([image.convert("RGB")])[0]
    assert float(stored @ here) > 0.999


def test_corrupt_photo_fails_alone_in_its_batch(celery_worker, photos):
    with transaction.atomic():  # one commit -> one task holding all three
        good1 = Item.objects.create(name="good 1", photo=upload(photos[1].path))
        bad = Item.objects.create(name="bad", photo=corrupt_jpeg(photos[2].path))
        good2 = Item.objects.create(name="good 2", photo=upload(photos[3].path))

    for item in (good1, bad, good2):
        wait_for_status(item, DONE)

    assert bad.embedding_status == EmbeddingStatus.FAILED
    assert "truncated or corrupt" in bad.embedding_error
    assert bad.embedding is None and bad.embedding_colour is None
    assert good1.embedding_colour is not None and good2.embedding_colour is not None
    assert good1.embedding_status == good2.embedding_status == EmbeddingStatus.READY


def test_changed_photo_is_embedded_again(celery_worker, photos):
    item = wait_for_status(Item.objects.create(name="x", photo=upload(photos[4].path)), DONE)
    first = vector_of(item)

    item.photo = upload(photos[5].path)
    item.save()
    assert item.embedding_status == EmbeddingStatus.PENDING
    item = wait_for_status(item, DONE)

    assert item.embedding_status == EmbeddingStatus.READY
    assert float(vector_of(item) @ first) < 0.99


def _use_broker(url: str) -> None:
    """Make this process publish to ``url``."""
    # Tasks are sent through the current app; it must be the one reconfigured here.
    assert current_app._get_current_object() is celery_app
    pools.reset()  # kombu keeps producer pools per connection, process-wide
    celery_app.conf.broker_write_url = url  # what publishing connects to
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture
def broker_down():
    """Point the publishing side at a closed port, as if Redis were down.

    Yields a function that brings the broker back; it is also called at teardown.
    """
    original = celery_app.conf.broker_write_url
    _use_broker("redis://127.0.0.1:9/0")  # the discard port: nothing listens there
    yield lambda: _use_broker(original)
    _use_broker(original)


@pytest.fixture
def frozen_broker():
    """Point the publishing side at a socket that accepts connections and never answers, as
    a hung Redis does. Yields a function that brings the broker back (also at teardown)."""
    original = celery_app.conf.broker_write_url
    frozen = socket.socket()
    frozen.bind(("127.0.0.1", 0))
    frozen.listen(16)
    _use_broker(f"redis://127.0.0.1:{frozen.getsockname()[1]}/0")

    def thaw() -> None:
        frozen.close()  # resets the connections it held, which unblocks the publisher
        _use_broker(original)

    yield thaw
    thaw()


def test_broker_down_keeps_the_save_and_reindex_recovers(celery_worker, photos, broker_down):
    started = time.monotonic()
    item = Item.objects.create(name="while down", photo=upload(photos[6].path))
    assert time.monotonic() - started < 1.0  # kombu's reconnecting does not hold the save

    item.refresh_from_db()
    assert item.embedding_status == EmbeddingStatus.PENDING
    assert item.embedding_updated_at is None  # never queued: the sweep will pick it up

    broker_down()  # the broker is back
    call_command("visual_reco_reindex", "--pending", "--wait", "--timeout", "180")

    item.refresh_from_db()
    assert item.embedding_status == EmbeddingStatus.READY


def test_a_frozen_broker_holds_a_save_no_longer_than_the_publish_timeout(celery_worker, photos,
                                                                         frozen_broker):
    started = time.monotonic()
    item = Item.objects.create(name="while frozen", photo=upload(photos[12].path))
    assert time.monotonic() - started < 1.0
    item.refresh_from_db()
    assert item.embedding_status == EmbeddingStatus.PENDING
    assert item.embedding_updated_at is None  # never queued: the sweep will pick it up

    frozen_broker()
    call_command("visual_reco_reindex", "--pending", "--wait", "--timeout", "180")
    item.refresh_from_db()
    assert item.embedding_status == EmbeddingStatus.READY


@pytest.mark.parametrize("broker", ["broker_down", "frozen_broker"])
def test_photo_search_through_a_worker_answers_within_its_timeout_when_the_broker_fails(
        broker, request, photos, settings):
    request.getfixturevalue(broker)
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "QUERY_EMBEDDING": "worker",
                            "QUERY_TIMEOUT": 1.5}
    started = time.monotonic()
    with pytest.raises(SearchUnavailable):
        embed_query(io.BytesIO(photos[2].path.read_bytes()))
    assert time.monotonic() - started < 2.0


def test_sweep_queues_rows_nobody_queued(celery_worker, photos):
    item = Item.objects.create(name="x", photo=upload(photos[7].path))
    item = wait_for_status(item, DONE)
    # Simulate a row left pending by a broker outage.
    Item.objects.filter(pk=item.pk).update(embedding=None, embedding_status="pending",
                                           embedding_updated_at=None)
    results = sweep()
    assert results["testapp.Item"].queued == 1
    assert wait_for_status(item, DONE).embedding_status == EmbeddingStatus.READY


def test_embed_objects_decodes_in_parallel_without_mixing_rows(photos):
    """Rows decoded on several threads still get their own photo's vector."""
    items = [Item.objects.create(name=f"p{i}", photo=upload(photos[i].path)) for i in range(6)]
    embed_objects(Item, [i.pk for i in items])
    embedder = get_embedder()
    for item, photo in zip(items, photos, strict=False):
        item.refresh_from_db()
        with Image.open(photo.path) as image:
            expected = embedder.embed([image.convert("RGB")])[0]
        assert float(vector_of(item) @ expected) > 0.999


def test_every_field_and_every_embedded_model_goes_through_the_worker(celery_worker, photos):
    """Two embedding fields on one model and a child image model, embedded by the real worker
    with the tasks sent by name."""
    with transaction.atomic():
        look = Look.objects.create(name="two photos", photo=upload(photos[8].path),
                                   detail=upload(photos[9].path))
        item = Item.objects.create(name="parent")
        image = ItemImage.objects.create(item=item, image=upload(photos[10].path))
    deadline = time.monotonic() + EMBED_TIMEOUT
    while True:
        look.refresh_from_db()
        image.refresh_from_db()
        statuses = (look.photo_embedding_status, look.detail_embedding_status,
                    image.embedding_status)
        if all(status in DONE for status in statuses) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert statuses == ("ready", "ready", "ready"), (look.photo_embedding_error,
                                                     look.detail_embedding_error,
                                                     image.embedding_error)
    photo = vector_of(look, "photo_embedding")
    detail = vector_of(look, "detail_embedding")
    assert float(photo @ detail) < 0.99  # each field embedded its own source
    assert float(vector_of(image) @ vector_of(look)) < 0.99
    # The default field stores its colour; detail_embedding has aspects=() and no colour.
    assert look.photo_embedding_colour is not None and image.embedding_colour is not None
    assert look.photo_embedding_fingerprint.endswith("+colour.1")
    assert look.detail_embedding_fingerprint == get_embedder().fingerprint
    assert Look.objects.similar_to_vector(detail, 1, field="detail_embedding")[0].pk == look.pk


def test_photo_search_through_a_worker_embeds_like_this_process(celery_worker, photos, settings):
    """QUERY_EMBEDDING="worker": the worker runs the same query-photo path (decoding,
    multi-crop) as a web process, and bad uploads never leave this process."""
    data = photos[11].path.read_bytes()
    here = embed_query(io.BytesIO(data), aspects=("colour",))
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "QUERY_EMBEDDING": "worker",
                            "QUERY_TIMEOUT": 60.0}
    there = embed_query(io.BytesIO(data), aspects=("colour",))
    assert there.vector.shape == here.vector.shape and float(there.vector @ here.vector) > 0.999
    # The colour of the whole photo comes back from the worker too.
    assert float(there.aspects["colour"] @ here.aspects["colour"]) > 0.999
    assert embed_query(io.BytesIO(data)).aspects == {}
    with pytest.raises(ImageError, match="empty"):
        embed_query(io.BytesIO(b""))
