"""The similar-products cache (``SIMILAR_CACHE``) against the live query, on a real Redis
cache and real Postgres transactions.

Vectors are synthetic: what is under test is which rows come back, not the CNN.
"""

import socket
import time

import numpy as np
import pytest
from django.core.cache import caches
from django.core.checks import run_checks
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from pgvector import HalfVector

from tests.conftest import upload
from tests.testapp.models import Item
from visual_reco.embedding import embed_objects
from visual_reco.result_cache import invalidate, similar_products

pytestmark = pytest.mark.django_db(transaction=True)
DIMS = 2048


def _vector(rng, centre):
    return HalfVector(np.maximum(centre + rng.normal(0, 0.3, DIMS), 0))


@pytest.fixture
def items():
    # Earlier tests' rows are deleted but may still sit in the HNSW graph: a walk that meets
    # them comes back short and the search ranks exactly as well (two searches, not one).
    with connection.cursor() as cursor:
        cursor.execute("VACUUM testapp_item")
    rng = np.random.default_rng(3)
    centres = np.abs(rng.normal(0, 1, (3, DIMS)))
    # bulk_create: a save() of an Item without a photo would clear its vector.
    return Item.objects.bulk_create([
        Item(name=f"i{i}", category=f"c{i % 3}", in_stock=True,
             embedding=_vector(rng, centres[i % 3]), embedding_status="ready")
        for i in range(30)])


def _twin(source):
    """A new row with ``source``'s vector, saved the way an edit in the admin saves it."""
    twin = Item.objects.bulk_create([Item(name="twin", category=source.category,
                                          embedding=source.embedding,
                                          embedding_status="ready")])[0]
    Item.objects.get(pk=twin.pk).save()
    return twin


@pytest.fixture
def cached(settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "SIMILAR_CACHE": "shared"}
    caches["shared"].clear()
    yield caches["shared"]
    caches["shared"].clear()


def _searches(queries) -> int:
    return sum("<=>" in q["sql"] for q in queries.captured_queries)


def _live(source, candidates=None, limit=8):
    candidates = Item.objects.all() if candidates is None else candidates
    return [(r.pk, round(r.visual_distance, 6)) for r in
            candidates.visually_similar(source, limit=limit)]


def _pairs(rows):
    return [(r.pk, round(r.visual_distance, 6)) for r in rows]


def test_a_hit_returns_the_live_results_without_a_vector_search(items, cached):
    source = items[0]
    with CaptureQueriesContext(connection) as first:
        miss = similar_products(source, limit=8)
    with CaptureQueriesContext(connection) as second:
        hit = similar_products(source, limit=8)
    assert _searches(first) == 1 and _searches(second) == 0
    assert _pairs(miss) == _pairs(hit) == _live(source)
    assert all(abs(r.visual_score - (1 - r.visual_distance)) < 1e-9 for r in hit)
    assert all(r.category == source.category for r in hit[:5])


def test_entries_depend_on_candidates_and_limit(items, cached):
    source = items[0]
    assert len(similar_products(source, limit=8)) == 8
    assert len(similar_products(source, limit=3)) == 3
    other = Item.objects.exclude(category=source.category)
    found = similar_products(source, other, limit=5)
    assert _pairs(found) == _live(source, other, 5)
    assert all(r.category != source.category for r in found)


def test_a_save_invalidates_after_commit(items, cached):
    source, in_stock = items[0], Item.objects.filter(in_stock=True)
    first = similar_products(source, in_stock, limit=5)
    gone = Item.objects.get(pk=first[0].pk)
    with transaction.atomic():
        gone.in_stock = False
        gone.save()
        # The transaction sees its own change: the cached list no longer matches the rows.
        assert first[0].pk not in [r.pk for r in similar_products(source, in_stock, limit=5)]
    with CaptureQueriesContext(connection) as after:
        found = similar_products(source, in_stock, limit=5)
    assert _searches(after) == 1
    assert gone.pk not in [r.pk for r in found]
    assert _pairs(found) == _live(source, in_stock, 5)


def test_a_rolled_back_save_does_not_stop_later_invalidations(items, cached):
    source = items[0]
    similar_products(source, limit=5)
    with pytest.raises(RuntimeError), transaction.atomic():
        Item.objects.filter(pk=items[1].pk).get().save()
        raise RuntimeError
    twin = _twin(source)
    assert similar_products(source, limit=5)[0].pk == twin.pk


def test_new_and_deleted_rows_show_at_once(items, cached):
    source = items[0]
    similar_products(source, limit=5)
    twin = _twin(source)
    assert similar_products(source, limit=5)[0].pk == twin.pk
    twin.delete()
    assert _pairs(similar_products(source, limit=5)) == _live(source, limit=5)


def test_embeddings_written_by_the_indexer_invalidate(items, cached, photos):
    source = items[0]
    similar_products(source, limit=5)
    new = Item.objects.create(name="new", photo=upload(photos[0].path))
    similar_products(source, limit=5)
    # force: the suite's worker (when running) may embed the new row first, without this
    # process's SIMILAR_CACHE setting; without force this call would then skip the row.
    embed_objects(Item, [new.pk], force=True)
    with CaptureQueriesContext(connection) as after:
        found = similar_products(source, limit=5)
    assert _searches(after) == 1
    assert _pairs(found) == _live(source, limit=5)


def test_rows_changed_without_signals_are_not_served(items, cached):
    source, in_stock = items[0], Item.objects.filter(in_stock=True)
    first = similar_products(source, in_stock, limit=5)
    Item.objects.filter(pk=first[0].pk).update(in_stock=False)  # no post_save
    found = similar_products(source, in_stock, limit=5)
    assert first[0].pk not in [r.pk for r in found]
    assert len(found) == 5


def test_invalidate_drops_entries(items, cached):
    source = items[0]
    similar_products(source, limit=5)
    invalidate(Item)
    with CaptureQueriesContext(connection) as after:
        similar_products(source, limit=5)
    assert _searches(after) == 1


def test_without_a_cache_nothing_is_stored(items, settings):
    caches["shared"].clear()
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "SIMILAR_CACHE": None}
    expected = _live(items[0], limit=5)
    for _ in range(2):
        with CaptureQueriesContext(connection) as queries:
            assert _pairs(similar_products(items[0], limit=5)) == expected
        assert _searches(queries) == 1
    assert caches["shared"]._cache.get_client().dbsize() == 0


def test_checks_flag_a_missing_or_per_process_cache(settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "SIMILAR_CACHE": "nope"}
    assert "visual_reco.E004" in [m.id for m in run_checks()]
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "SIMILAR_CACHE": "default"}
    assert "visual_reco.W001" in [m.id for m in run_checks()]
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "SIMILAR_CACHE": "shared"}
    ids = [m.id for m in run_checks()]
    assert "visual_reco.W001" not in ids and "visual_reco.E004" not in ids


@pytest.fixture
def unreachable_caches(settings):
    """Two Redis caches that fail: nothing listening ("down"), and a socket that accepts
    connections but never answers ("frozen"), both with the short timeouts a shop should set."""
    frozen = socket.socket()
    frozen.bind(("127.0.0.1", 0))
    frozen.listen(16)
    options = {"socket_connect_timeout": 0.2, "socket_timeout": 0.2}
    port = frozen.getsockname()[1]
    settings.CACHES = {**settings.CACHES,
                       "down": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                "LOCATION": "redis://127.0.0.1:9/0", "OPTIONS": options},
                       "frozen": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                  "LOCATION": f"redis://127.0.0.1:{port}/0", "OPTIONS": options}}
    yield ["down", "frozen"]
    frozen.close()


def test_a_cache_that_is_down_or_frozen_is_skipped(items, settings, unreachable_caches):
    expected = _live(items[0], limit=5)
    for alias in unreachable_caches:
        settings.VISUAL_RECO = {**settings.VISUAL_RECO, "SIMILAR_CACHE": alias}
        started = time.monotonic()
        assert _pairs(similar_products(items[0], limit=5)) == expected
        assert time.monotonic() - started < 1.0, alias
        started = time.monotonic()
        items[1].name = f"renamed with {alias} failing"
        items[1].save()  # the invalidation after commit fails, the save does not
        assert time.monotonic() - started < 1.0, alias
        assert Item.objects.get(pk=items[1].pk).name == items[1].name
