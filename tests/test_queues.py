"""Queues by kind of work (``QUEUES``): two real workers, one on the index queue and one on
the query queue; a web process that searches through the query worker without TensorFlow.

The tests run in file order: the last one stops the query worker.
"""

import json
import os
import subprocess
import sys
import time

import pytest
import redis
from celery.app.routes import Router, prepare
from celery.beat import ScheduleEntry, Scheduler
from django.conf import settings
from django.core.management import call_command
from django.test import Client

from tests.celery_app import app as celery_app
from tests.conftest import ROOT, start_worker, stop_worker, upload, wait_for_status
from tests.testapp.models import Item
from visual_reco.checks import check_queues
from visual_reco.conf import reco_settings
from visual_reco.models import EmbeddingStatus
from visual_reco.tasks import QUEUE_KINDS, embeds, rollup_feedback_task, sweep_task

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]
DONE = {EmbeddingStatus.READY, EmbeddingStatus.FAILED}
PREFIX = settings.CELERY_TASK_DEFAULT_QUEUE
QUEUES = {"index": f"{PREFIX}-index", "query": f"{PREFIX}-query",
          "rollup": f"{PREFIX}-rollup"}
SEARCH = "/api/visual-reco/search/"
QUERY_TIMEOUT = 3.0
ANSWER_TIMEOUT = 30.0
STATS_TIMEOUT = 30.0


def node(kind: str) -> str:
    """The name of the worker consuming ``kind``'s queue."""
    return f"{QUEUES[kind]}@localhost"


@pytest.fixture(scope="module")
def workers(django_db_setup, django_db_blocker):
    """A worker consuming only the index queue and one consuming only the query queue."""
    env = {"VISUAL_RECO_TEST_QUEUES": json.dumps(QUEUES)}
    started = {kind: start_worker(QUEUES[kind], f"test-worker-{kind}.log", env)
               for kind in ("index", "query")}
    yield started
    for process in started.values():
        if process.poll() is None:
            stop_worker(process)


@pytest.fixture
def routed(settings):
    """This process sends by ``QUEUES``, and searches through a worker."""
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "QUEUES": QUEUES,
                            "QUERY_EMBEDDING": "worker", "QUERY_TIMEOUT": QUERY_TIMEOUT}


def done_by(kind: str, task: str) -> int:
    """How many ``task`` the worker of ``kind`` has run (its own count, `inspect stats`)."""
    stats = celery_app.control.inspect(destination=[node(kind)], timeout=5.0).stats() or {}
    return stats.get(node(kind), {}).get("total", {}).get(task, 0)


def wait_until_done(kind: str, task: str, count: int) -> None:
    """Wait until the worker of ``kind`` has run ``count`` ``task`` (at most STATS_TIMEOUT)."""
    deadline = time.monotonic() + STATS_TIMEOUT
    while done_by(kind, task) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{node(kind)} ran {done_by(kind, task)} {task}, not {count}")
        time.sleep(0.25)


def post_photo(client, path):
    return client.post(SEARCH, {"image": upload(path)})


def test_an_upload_is_embedded_by_the_index_worker_only(workers, routed, photos):
    item = Item.objects.create(name="cup", photo=upload(photos[0].path))

    assert wait_for_status(item, DONE).embedding_status == EmbeddingStatus.READY
    assert done_by("index", "visual_reco.embed") >= 1
    assert done_by("query", "visual_reco.embed") == 0


def test_a_photo_search_is_answered_by_the_query_worker(workers, routed, catalog, photos, client,
                                                        settings):
    # The 503 test needs the short timeout; an answer may take longer on loaded cores.
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "QUERY_TIMEOUT": ANSWER_TIMEOUT}
    before = done_by("query", "visual_reco.embed_query")

    response = post_photo(client, photos[5].path)

    assert response.status_code == 200, response.content
    assert response.json()["results"][0]["id"] == str(catalog[5].pk)
    assert done_by("query", "visual_reco.embed_query") == before + 1
    assert done_by("index", "visual_reco.embed_query") == 0


def test_periodic_tasks_go_to_their_queues(workers, routed):
    """The beat's own code path (`Scheduler.apply_async`), ``delay()`` and a router for
    senders by name all use the kind's queue."""
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete(QUEUES["rollup"])
    swept = done_by("index", "visual_reco.sweep")
    try:
        sweep_task.delay()
        entry = ScheduleEntry(name="rollup", task=rollup_feedback_task.name, schedule=60.0,
                              app=celery_app)
        Scheduler(app=celery_app, lazy=True).apply_async(entry)

        wait_until_done("index", "visual_reco.sweep", swept + 1)
        assert broker.llen(QUEUES["rollup"]) == 1  # nobody consumes it: still there
    finally:
        broker.delete(QUEUES["rollup"])
    router = Router(prepare(["visual_reco.tasks.route_task"]), celery_app.amqp.queues,
                    app=celery_app)
    assert router.route({}, "visual_reco.rollup_feedback")["queue"].name == QUEUES["rollup"]
    assert router.route({}, "shop.something_else")["queue"].name == PREFIX
    assert done_by("query", "visual_reco.sweep") == 0


def test_every_task_of_visual_reco_has_a_kind():
    registered = {name for name in celery_app.tasks if name.startswith("visual_reco.")}
    assert registered == set(QUEUE_KINDS)
    assert set(QUEUE_KINDS.values()) == set(reco_settings.defaults["QUEUES"])


def test_task_queue_is_the_fallback_of_every_kind(settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "TASK_QUEUE": "images",
                            "QUEUES": {"query": "search"}}
    assert [reco_settings.queue(kind) for kind in ("index", "query", "rollup")] == [
        "images", "search", "images"]
    assert reco_settings.task_options("query") == {"queue": "search"}
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "TASK_QUEUE": None, "QUEUES": {}}
    assert reco_settings.task_options("index") == {}


def test_a_misspelt_queue_kind_is_a_check_error(settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "QUEUES": {"indexing": "images"}}
    assert [error.id for error in check_queues()] == ["visual_reco.E013"]
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "QUEUES": QUEUES}
    assert check_queues() == []


def test_only_workers_that_embed_load_the_model(settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "QUEUES": QUEUES}
    for consumed, loads in (([QUEUES["rollup"]], False), ([QUEUES["query"]], True),
                            ([QUEUES["rollup"], QUEUES["index"]], True), ([PREFIX], False)):
        celery_app.amqp.queues.select(consumed)
        try:
            assert embeds(celery_app) is loads, consumed
        finally:
            celery_app.amqp.queues._consume_from = None


def test_a_web_process_searching_through_the_worker_never_imports_tensorflow(
        workers, routed, catalog, photos, settings, tmp_path):
    """Not even to run a trained category head (numpy: `classifier.DenseHead`)."""
    head = tmp_path / "head.keras"
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "CLASSIFIER_PATH": str(head)}
    call_command("visual_reco_train_classifier", "--epochs", "30")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VISUAL_RECO_TEST_WORKER": "1",
           "VISUAL_RECO_TEST_QUERY_EMBEDDING": "worker",
           "VISUAL_RECO_TEST_QUEUES": json.dumps(QUEUES),
           "VISUAL_RECO_TEST_CLASSIFIER_PATH": str(head)}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "web_search.py"),
                          str(photos[9].path)], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])

    assert found["status"] == 200, found["body"]
    assert found["body"]["results"][0]["id"] == str(catalog[9].pk)
    assert found["body"]["predicted_category"]["method"] == "classifier"
    assert found["heavy_modules"] == []


def test_without_a_query_worker_search_is_503_in_time_and_uploads_still_embed(
        workers, routed, photos, catalog):
    stop_worker(workers["query"])
    item = Item.objects.create(name="while search is down", photo=upload(photos[3].path))

    started = time.monotonic()
    response = post_photo(Client(), photos[5].path)
    waited = time.monotonic() - started

    assert response.status_code == 503
    assert "unavailable" in response.json()["detail"]
    assert QUERY_TIMEOUT <= waited < QUERY_TIMEOUT + 2.0
    assert wait_for_status(item, DONE).embedding_status == EmbeddingStatus.READY
