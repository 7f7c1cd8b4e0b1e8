"""Computing, queueing and tracking embeddings: the functions behind the Celery tasks,
the admin action and the management commands."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import models
from django.db.models import Q, QuerySet
from django.utils import timezone

from visual_reco.conf import reco_settings
from visual_reco.embedders import get_embedder
from visual_reco.fields import ImageEmbeddingField, embedded_models, get_embedding_field
from visual_reco.images import ImageError, open_image
from visual_reco.models import EmbeddingStatus
from visual_reco.result_cache import invalidate_on_commit

logger = logging.getLogger("visual_reco")

WAITING = (EmbeddingStatus.PENDING, EmbeddingStatus.STALE)
DECODE_THREADS = max(os.cpu_count() or 1, 1)


@dataclass
class QueueResult:
    """What `queue_embeddings` sent: objects and tasks, or the broker error that stopped it."""

    queued: int = 0
    tasks: int = 0
    error: str = ""


@dataclass
class EmbedResult:
    """What `embed_objects` did with the rows it was given."""

    embedded: int = 0
    failed: int = 0
    skipped: int = 0


def _chunks(items: Sequence[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _has_image(field: ImageEmbeddingField) -> Q:
    return ~Q(**{field.source: ""}) & Q(**{f"{field.source}__isnull": False})


def queue_embeddings(model: type[models.Model], pks: Iterable[Any], *, field: str | None = None,
                     using: str | None = None) -> QueueResult:
    """Send embedding tasks for ``pks`` to the broker, `BATCH_SIZE` objects per task.

    Never raises for a broker that is down: the rows stay pending, the error is logged and
    returned, and the periodic sweep or ``visual_reco_reindex --pending`` queues them later.
    """
    from visual_reco.tasks import embed_task

    embedding = get_embedding_field(model, field)
    pks = list(pks)
    result = QueueResult()
    options = {"queue": reco_settings.TASK_QUEUE} if reco_settings.TASK_QUEUE else {}
    for chunk in _chunks(pks, reco_settings.BATCH_SIZE):
        try:
            embed_task.apply_async(args=(model._meta.label, embedding.name, chunk),
                                   retry=False, **options)
        except Exception as exc:  # any broker failure must leave the save intact
            result.error = f"{type(exc).__name__}: {exc}"
            logger.warning("Could not queue embeddings for %s %s: %s; they stay pending",
                           model._meta.label, chunk, result.error)
            break
        result.queued += len(chunk)
        result.tasks += 1
        # Remember when the rows were queued so the sweep leaves in-flight work alone.
        model._base_manager.using(using).filter(
            pk__in=chunk, **{embedding.status_name: EmbeddingStatus.PENDING}
        ).update(**{embedding.updated_at_name: timezone.now()})
    return result


def embed_objects(model: type[models.Model], pks: Sequence[Any], *, field: str | None = None,
                  force: bool = False) -> EmbedResult:
    """Embed the images of ``pks`` in one model call and store vectors or failures.

    Rows already embedded by the current embedder are skipped unless ``force``. A row whose
    image changed since it was read is not overwritten (its own task will handle it). A bad
    image marks only its own row failed, with a message for shop staff.
    """
    embedding = get_embedding_field(model, field)
    source_field = embedding.source_field()
    embedder = get_embedder()
    fingerprint = embedder.fingerprint
    manager = model._base_manager
    rows = manager.filter(pk__in=list(pks)).values_list(
        "pk", embedding.source, embedding.status_name, embedding.fingerprint_name)
    todo = [(pk, name) for pk, name, status, fp in rows
            if name and (force or status != EmbeddingStatus.READY or fp != fingerprint)]
    images, loaded, failures = [], [], []
    # Decoding is parallel across cores (Pillow releases the GIL while decoding).
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        decoded = pool.map(lambda row: _decode(source_field.storage, row[1]), todo)
        for (pk, name), outcome in zip(todo, decoded, strict=True):
            if isinstance(outcome, str):
                failures.append((pk, name, outcome))
            else:
                images.append(outcome)
                loaded.append((pk, name))
    vectors = embedder.embed(images) if images else []
    now = timezone.now()
    for (pk, name), vector in zip(loaded, vectors, strict=True):
        manager.filter(pk=pk, **{embedding.source: name}).update(**{
            embedding.attname: vector, embedding.status_name: EmbeddingStatus.READY,
            embedding.error_name: "", embedding.fingerprint_name: fingerprint,
            embedding.updated_at_name: now,
        })
    for pk, name, message in failures:
        logger.info("Embedding %s %s failed: %s", model._meta.label, pk, message)
        manager.filter(pk=pk, **{embedding.source: name}).update(**{
            embedding.attname: None, embedding.status_name: EmbeddingStatus.FAILED,
            embedding.error_name: message, embedding.fingerprint_name: fingerprint,
            embedding.updated_at_name: now,
        })
    if loaded or failures:
        invalidate_on_commit(model)
    return EmbedResult(embedded=len(loaded), failed=len(failures), skipped=len(pks) - len(todo))


def _decode(storage: Any, name: str) -> Any:
    """The decoded image, or the message saying why it cannot be used."""
    try:
        with storage.open(name, "rb") as handle:
            return open_image(handle)
    except ImageError as exc:
        return str(exc)
    except FileNotFoundError:
        return f"The image file {name!r} is missing from storage."


def mark_stale(model: type[models.Model], *, field: str | None = None) -> int:
    """Mark ready vectors made by another embedder than the configured one as stale."""
    embedding = get_embedding_field(model, field)
    return model._base_manager.filter(**{embedding.status_name: EmbeddingStatus.READY}).exclude(
        **{embedding.fingerprint_name: get_embedder().fingerprint}
    ).update(**{embedding.status_name: EmbeddingStatus.STALE})


def reindex(queryset: QuerySet, *, field: str | None = None) -> QueueResult:
    """Mark every row of ``queryset`` with an image pending and queue it.

    Existing vectors stay in place (and keep being recommended) until replaced.
    """
    model = queryset.model
    embedding = get_embedding_field(model, field)
    queryset.filter(~_has_image(embedding)).update(**{
        embedding.attname: None, embedding.status_name: EmbeddingStatus.NO_IMAGE,
        embedding.error_name: ""})
    invalidate_on_commit(model)
    with_image = queryset.filter(_has_image(embedding))
    pks = list(with_image.values_list("pk", flat=True))
    model._base_manager.filter(pk__in=pks).update(**{
        embedding.status_name: EmbeddingStatus.PENDING, embedding.error_name: "",
        embedding.updated_at_name: None})
    return queue_embeddings(model, pks, field=embedding.name)


def select(model: type[models.Model], statuses: Iterable[str], *,
           field: str | None = None) -> QuerySet:
    """Rows of ``model`` whose embedding status is one of ``statuses``."""
    embedding = get_embedding_field(model, field)
    return model._base_manager.filter(**{f"{embedding.status_name}__in": list(statuses)})


def sweep(grace: timedelta = timedelta(minutes=10)) -> dict[str, QueueResult]:
    """Queue what is waiting in every embedded model: stale rows, and pending rows that were
    never queued (broker down) or were queued more than ``grace`` ago."""
    results = {}
    for model in embedded_models():
        embedding = get_embedding_field(model)
        mark_stale(model)
        cutoff = timezone.now() - grace
        waiting = select(model, WAITING).filter(
            Q(**{f"{embedding.updated_at_name}__isnull": True})
            | Q(**{f"{embedding.updated_at_name}__lt": cutoff})
            | Q(**{embedding.status_name: EmbeddingStatus.STALE}))
        results[model._meta.label] = queue_embeddings(
            model, waiting.values_list("pk", flat=True), field=embedding.name)
    return results


def status_counts(model: type[models.Model], *, field: str | None = None) -> dict[str, int]:
    """How many rows have each embedding status."""
    embedding = get_embedding_field(model, field)
    counts = dict.fromkeys(EmbeddingStatus.values, 0)
    rows = model._base_manager.values_list(embedding.status_name).annotate(n=models.Count("pk"))
    counts.update(dict(rows))
    return counts


def wait_until_done(model: type[models.Model], pks: Sequence[Any], *, field: str | None = None,
                    timeout: float = 600.0, interval: float = 0.5,
                    progress: Callable[[int, int], None] | None = None) -> bool:
    """Poll until none of ``pks`` is pending or stale, or ``timeout`` seconds pass.

    Calls ``progress(done, total)`` after each poll. Returns True when all are done.
    """
    embedding = get_embedding_field(model, field)
    pks = list(pks)
    deadline = time.monotonic() + timeout
    while True:
        waiting = model._base_manager.filter(
            pk__in=pks, **{f"{embedding.status_name}__in": WAITING}).count()
        if progress:
            progress(len(pks) - waiting, len(pks))
        if waiting == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
