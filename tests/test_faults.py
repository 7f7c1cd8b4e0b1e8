"""Faults on real processes: a worker's pool child killed mid-batch (what the OOM killer
does) is replaced and the batch done again; a whole worker killed loses nothing."""

import os
import signal
import time

import psutil
import pytest
from django.db import transaction

from tests import reliability
from tests.conftest import EMBED_TIMEOUT, start_worker, stop_worker, upload
from tests.testapp.models import Item
from visual_reco.models import EmbeddingStatus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def _not_ready(pks: list[int]) -> int:
    """Of ``pks``, the products lost (deleted) or never embedded."""
    return len(pks) - Item.objects.filter(pk__in=pks, embedding_status=EmbeddingStatus.READY
                                          ).count()


def _pool_children(worker) -> list[psutil.Process]:
    return psutil.Process(worker.pid).children()


def test_a_pool_child_killed_mid_batch_is_replaced_and_the_batch_redone(celery_worker, photos):
    (child,) = _pool_children(celery_worker)
    with transaction.atomic():
        items = [Item.objects.create(name=f"oom {i}", photo=upload(photos[i % 18].path))
                 for i in range(20)]
    pks = [item.pk for item in items]
    deadline = time.monotonic() + 30
    while child.cpu_percent(interval=0.2) < 20 and time.monotonic() < deadline:
        pass  # the child is working on the first batch
    os.kill(child.pid, signal.SIGKILL)
    killed_at = time.time()
    deadline = time.monotonic() + EMBED_TIMEOUT
    while Item.objects.filter(pk__in=pks, embedding_status=EmbeddingStatus.READY).count() < 20:
        assert time.monotonic() < deadline, Item.objects.filter(pk__in=pks).values_list(
            "embedding_status", flat=True)
        time.sleep(0.5)
    recovered = time.time() - killed_at
    # One replacement did it all: a child is no longer killed for loading the model slowly.
    (replacement,) = _pool_children(celery_worker)
    assert replacement.pid != child.pid
    assert replacement.create_time() < killed_at + 5
    reliability.record(
        reliability.FAULTS[4],
        "one new pool process, loading the model in the background, did the batch again "
        "(tasks are acknowledged late and idempotent)", recovered, _not_ready(pks))


def test_a_killed_worker_loses_nothing_and_a_new_one_resumes(settings, photos):
    """SIGKILL the whole worker mid-batch: the batch it held returns to the queue after the
    broker's visibility timeout, and a new worker finishes every row."""
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}_faults"
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "TASK_QUEUE": queue}
    worker_env = {"VISUAL_RECO_TEST_TASK_QUEUE": queue}  # so it warms the model as it starts
    first = start_worker(queue, "test-worker-killed.log", worker_env)
    try:
        (child,) = _pool_children(first)
        with transaction.atomic():
            items = [Item.objects.create(name=f"crash {i}", photo=upload(photos[i % 18].path))
                     for i in range(20)]
        deadline = time.monotonic() + 30
        while child.cpu_percent(interval=0.2) < 20 and time.monotonic() < deadline:
            pass  # the worker is embedding the first batch
        for process in [child, psutil.Process(first.pid)]:
            process.kill()
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    pks = [item.pk for item in items]
    assert Item.objects.filter(pk__in=pks).exclude(
        embedding_status=EmbeddingStatus.READY).exists()  # killed before it finished
    second = start_worker(queue, "test-worker-resumed.log", worker_env)
    try:
        restarted = time.monotonic()
        deadline = restarted + 30 + EMBED_TIMEOUT  # visibility timeout, then the work
        while Item.objects.filter(pk__in=pks, embedding_status=EmbeddingStatus.READY
                                  ).count() < 20:
            assert time.monotonic() < deadline, list(Item.objects.filter(pk__in=pks)
                                                     .values_list("embedding_status", flat=True))
            time.sleep(0.5)
        # Visibility timeout (30 s) + one restore scan (10 s) + the work itself.
        recovered = time.monotonic() - restarted
        assert recovered < 90
        reliability.record(
            reliability.FAULTS[5],
            "the batch the dead worker held went back to the queue after the visibility "
            "timeout (30 s here, 45 s in the README's settings); a new worker did it",
            recovered, _not_ready(pks))
    finally:
        stop_worker(second)
