"""Read replicas against a real streaming standby: a second embedded Postgres, started for
this module only as a hot standby of the test database's server (pg_basebackup -R, streaming
over the primary's socket), listening on 127.0.0.1. Serving reads (similar products, photo
search, picked for you) go to it through the routers or ``READ_DATABASE``, with the HNSW
settings set on its connection; writes, and the reads that decide them, stay on the primary
even while the standby stops replaying; a product the worker embeds on the primary becomes
recommendable on the standby."""

import copy
import os
import re
import time

import pytest
from django.core.checks import run_checks
from django.db import connections
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext

from tests.conftest import ROOT, upload, wait_for_status
from tests.testapp.models import Item
from visual_reco.choices import EmbeddingStatus
from visual_reco.dev_services import embedded_standby
from visual_reco.embedding import embed_objects
from visual_reco.feedback import record
from visual_reco.feedback.picks import forget_best_sellers, picks_for
from visual_reco.feedback.rollup import rollup
from visual_reco.models import FeedbackEvent, FeedbackProductStats
from visual_reco.result_cache import similar_products
from visual_reco.search import search_by_photo

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])

REPLICA = "replica"
STANDBY_TIMEOUT = 60.0
REPLAY_TIMEOUT = 30.0
VISITOR = "replica-visitor-0123456789abcdef"
WRITES = re.compile(r"^\s*(INSERT|UPDATE|DELETE|TRUNCATE|CREATE|ALTER|DROP)\b", re.I)
# The cosine distance operator: the statement is a vector search.
SEARCH = "<=>"


class ReplicaRouter:
    """A shop's replica router: every read to the standby, every write to the primary."""

    def db_for_read(self, model, **hints):
        return REPLICA

    def db_for_write(self, model, **hints):
        return "default"

    def allow_relation(self, obj1, obj2, **hints):
        return True

    def allow_migrate(self, db, app_label, **hints):
        return db == "default"


ROUTERS = [f"{__name__}.ReplicaRouter"]


@pytest.fixture(scope="module")
def standby(django_db_setup, django_db_blocker):
    """The ``replica`` alias: a hot standby of the test database's server, started after
    the test database was created (so it holds it), stopped and deleted after the module.
    A mirror of ``default`` for Django's test cases, so they never flush it (it is read-only;
    it follows the primary's flush)."""
    primary = connections["default"].settings_dict
    folder = ROOT / ".cache" / f"standby-{os.getpid()}"
    started = time.monotonic()
    with embedded_standby(primary["HOST"], folder, timeout=STANDBY_TIMEOUT) as (host, port):
        replica = copy.deepcopy(primary)
        replica.update(HOST=host, PORT=str(port))
        replica["TEST"]["MIRROR"] = "default"
        connections.settings[REPLICA] = replica
        try:
            with django_db_blocker.unblock():
                with connections[REPLICA].cursor() as cursor:
                    cursor.execute("SELECT pg_is_in_recovery(), current_database()")
                    assert cursor.fetchone() == (True, primary["NAME"])
                print(f"\nstandby up in {time.monotonic() - started:.1f} s")
                yield REPLICA
        finally:
            connections[REPLICA].close()
            del connections[REPLICA]
            del connections.settings[REPLICA]


@pytest.fixture(autouse=True)
def fresh_rankings():
    forget_best_sellers()
    yield
    forget_best_sellers()


def caught_up(timeout: float = REPLAY_TIMEOUT) -> float:
    """Wait until the standby has replayed all the primary wrote so far; the seconds it took."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_lsn()")
        written = cursor.fetchone()[0]
    started = time.monotonic()
    while True:
        with connections[REPLICA].cursor() as cursor:
            cursor.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [written])
            if cursor.fetchone()[0]:
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"the standby did not replay {written} within {timeout} s")
        time.sleep(0.02)


def request_for(visitor: str = VISITOR):
    request = RequestFactory().get("/")
    request.COOKIES["vr_vid"] = visitor
    return request


def searches(queries: list[dict]) -> list[str]:
    return [query["sql"] for query in queries if SEARCH in query["sql"]]


def serve_every_list(source: Item, photo_path, request) -> dict[str, list]:
    """Similar products, a photo search and picks for ``request``'s visitor, by primary key."""
    similar = similar_products(source, limit=5)
    with open(photo_path, "rb") as handle:
        found = search_by_photo(handle, Item.objects.all(), limit=5)
    picks = picks_for(request, limit=4)
    return {"similar": [row.pk for row in similar], "search": [row.pk for row in found.results],
            "picks": [row.pk for row in picks.products], "source": [picks.source]}


def test_reads_follow_the_shop_s_router_to_the_standby(standby, catalog, photos, settings):
    record(request_for(), "click", catalog[1])
    caught_up()
    expected = serve_every_list(Item.objects.get(pk=catalog[0].pk), photos[0].path,
                                request_for())
    assert expected["source"] == ["taste"] and all(expected.values())
    settings.DATABASE_ROUTERS = ROUTERS
    source = Item.objects.get(pk=catalog[0].pk)
    assert source._state.db == REPLICA
    with (CaptureQueriesContext(connections[REPLICA]) as on_replica,
          CaptureQueriesContext(connections["default"]) as on_primary):
        served = serve_every_list(source, photos[0].path, request_for())
    assert served == expected
    assert [query["sql"] for query in on_primary.captured_queries] == []
    # similar products, the category vote and the photo search, the picks' taste search
    assert len(searches(on_replica.captured_queries)) >= 4


def api_lists(client, source: Item) -> tuple[list[str], list[str]]:
    """The ids of the API's similar products of ``source`` and of its picks for ``VISITOR``."""
    client.cookies["vr_vid"] = VISITOR
    similar = client.get(f"/api/visual-reco/products/{source.pk}/similar/?limit=5")
    picked = client.get("/api/visual-reco/picked-for-you/?limit=4")
    assert similar.status_code == 200 and picked.status_code == 200
    return ([row["id"] for row in similar.json()["results"]],
            [row["id"] for row in picked.json()["results"]])


def test_read_database_sends_only_visual_reco_s_reads_to_the_standby(standby, catalog, photos,
                                                                     settings, client):
    record(request_for(), "click", catalog[1])
    source = Item.objects.get(pk=catalog[0].pk)
    caught_up()
    expected = serve_every_list(source, photos[0].path, request_for())
    expected_api = api_lists(client, source)
    assert all(expected_api)
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "READ_DATABASE": REPLICA,
                            "HNSW_EF_SEARCH": 57}
    assert Item.objects.all().db == "default"  # the shop's own reads are left alone
    with (CaptureQueriesContext(connections[REPLICA]) as on_replica,
          CaptureQueriesContext(connections["default"]) as on_primary):
        served = serve_every_list(source, photos[0].path, request_for())
        served_api = api_lists(client, source)
    assert served == expected
    assert served_api == expected_api
    assert [query["sql"] for query in on_primary.captured_queries] == []
    assert len(searches(on_replica.captured_queries)) >= 6
    # The HNSW settings were set on the standby's own connection, for its session.
    with connections[REPLICA].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery(), current_setting('hnsw.ef_search'),"
                       " current_setting('hnsw.iterative_scan')")
        assert cursor.fetchone() == (True, "57", "relaxed_order")
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT current_setting('hnsw.ef_search', true)")
        assert cursor.fetchone()[0] != "57"


def test_writes_and_the_reads_behind_them_stay_on_the_primary_while_the_standby_lags(
        standby, photos, settings):
    """With the standby stopped replaying, the routers sending every read there: the worker's
    code still finds and embeds a row just saved, the roll-up counts just-stored events,
    and no statement tries to write on the standby (it would raise)."""
    settings.DATABASE_ROUTERS = ROUTERS
    with connections[REPLICA].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_pause()")
    try:
        with CaptureQueriesContext(connections[REPLICA]) as on_replica:
            item = Item.objects.create(name="new", category="cups", photo=upload(photos[2].path))
            assert not Item.objects.filter(pk=item.pk).exists()  # the standby lags
            result = embed_objects(Item, [item.pk])
            assert (result.embedded, result.skipped) == (1, 0)
            assert Item.objects.using("default").get(pk=item.pk).embedding_status == (
                EmbeddingStatus.READY)
            request = request_for()
            for kind in ("impression", "click", "add_to_cart"):
                assert record(request, kind, item) is not None
            assert FeedbackEvent.objects.using("default").count() == 3
            assert not rollup().skipped
            stats = FeedbackProductStats.objects.using("default").get(product=str(item.pk))
            assert (stats.clicks, stats.add_to_carts) == (1, 1)
    finally:
        with connections[REPLICA].cursor() as cursor:
            cursor.execute("SELECT pg_wal_replay_resume()")
    assert [query["sql"] for query in on_replica.captured_queries
            if WRITES.match(query["sql"])] == []
    print(f"\nbacklog replayed after the pause in {caught_up():.3f} s")
    assert Item.objects.get(pk=item.pk).embedding_status == EmbeddingStatus.READY


@pytest.mark.worker
def test_a_product_the_worker_embeds_on_the_primary_becomes_recommendable_on_the_standby(
        standby, celery_worker, catalog, photos, settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "READ_DATABASE": REPLICA}
    source = Item.objects.get(pk=catalog[0].pk)
    # A copy of the source's photo: it can only be the nearest product once embedded.
    item = Item.objects.create(name="twin", category=source.category,
                               photo=upload(photos[0].path, "twin.jpg"))
    wait_for_status(item, {EmbeddingStatus.READY})  # read on the primary
    ready = time.monotonic()
    while True:
        nearest = [row.pk for row in similar_products(source, limit=3)]
        if nearest[:1] == [item.pk]:
            break
        if time.monotonic() - ready > REPLAY_TIMEOUT:
            pytest.fail(f"{item.pk} not recommended on the standby: {nearest}")
        time.sleep(0.02)
    print(f"\nembedded on the primary -> first on the standby's list: "
          f"{time.monotonic() - ready:.3f} s")
    with connections[REPLICA].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        assert cursor.fetchone()[0]


def test_read_database_must_name_a_database(settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "READ_DATABASE": "nowhere"}
    assert "visual_reco.E012" in [message.id for message in run_checks()]
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "READ_DATABASE": "default"}
    assert "visual_reco.E012" not in [message.id for message in run_checks()]
