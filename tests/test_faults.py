"""Faults on real processes: a worker's pool child killed mid-batch (what the OOM killer
does) is replaced, and the batch is done again."""

import os
import signal
import time

import psutil
import pytest
from django.db import transaction

from tests.conftest import EMBED_TIMEOUT, upload
from tests.testapp.models import Item
from visual_reco.models import EmbeddingStatus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


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
    # One replacement did it all: a child is no longer killed for loading the model slowly.
    (replacement,) = _pool_children(celery_worker)
    assert replacement.pid != child.pid
    assert replacement.create_time() < killed_at + 5
