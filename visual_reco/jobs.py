"""Queueing embedding work: send tasks to the broker, mark rows pending or stale, sweep up
what nobody queued, and watch rows until the workers are done. Used by the signal receivers,
the admin action, the management commands and the periodic sweep task.

Tasks are sent by name (``visual_reco.embed``) with the model's label, the field's name and
primary keys, never instances, so the sender needs neither the task code nor TensorFlow.
``field=None`` means every embedding field of the model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import models, router
from django.db.models import Exists, Q, QuerySet
from django.utils import timezone

from visual_reco.broker import publish
from visual_reco.choices import EmbeddingStatus
from visual_reco.conf import reco_settings
from visual_reco.embedders import get_embedder
from visual_reco.fields import ImageEmbeddingField
from visual_reco.registry import embedded_models, selected_fields
from visual_reco.result_cache import invalidate_on_commit
from visual_reco.rollout import aliases, field_key, live_embedder, rollout_model, shadow_of

logger = logging.getLogger("visual_reco")

EMBED_TASK = "visual_reco.embed"
SWEEP_TASK = "visual_reco.sweep"
WAITING = (EmbeddingStatus.PENDING, EmbeddingStatus.STALE)


@dataclass
class QueueResult:
    """What was sent: embeddings (one per object and field) and tasks, or the broker error
    that stopped it."""

    queued: int = 0
    tasks: int = 0
    error: str = ""

    def add(self, other: QueueResult) -> None:
        """Count ``other``'s work too (the first error wins)."""
        self.queued += other.queued
        self.tasks += other.tasks
        self.error = self.error or other.error


def _chunks(items: Sequence[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def queue_embeddings(model: type[models.Model], pks: Iterable[Any], *, field: str | None = None,
                     using: str | None = None) -> QueueResult:
    """Send embedding tasks for ``pks``, `BATCH_SIZE` objects per task and field.

    Never raises for a broker that is down: the rows stay pending, the error is logged and
    returned, and the periodic sweep or ``visual_reco_reindex --pending`` queues them later.
    """
    pks = list(pks)
    result = QueueResult()
    for embedding in selected_fields(model, field):
        result.add(_queue_field(model, embedding, pks, using))
        if result.error:
            break
    return result


def _queue_field(model: type[models.Model], embedding: ImageEmbeddingField, pks: list[Any],
                 using: str | None) -> QueueResult:
    result = QueueResult()
    options = reco_settings.task_options("index")
    for chunk in _chunks(pks, reco_settings.BATCH_SIZE):
        try:
            publish(EMBED_TASK, (model._meta.label, embedding.name, chunk), **options)
        except Exception as exc:  # any broker failure must leave the save intact
            result.error = f"{type(exc).__name__}: {exc}"
            logger.warning("Could not queue %s embeddings for %s %s: %s; they stay pending",
                           embedding.name, model._meta.label, chunk, result.error)
            break
        result.queued += len(chunk)
        result.tasks += 1
        # Remember when the rows were queued so the sweep leaves in-flight work alone.
        model._base_manager.using(using).filter(
            pk__in=chunk, **{embedding.status_name: EmbeddingStatus.PENDING}
        ).update(**embedding.state(EmbeddingStatus.PENDING, keep_vector=True, at=timezone.now()))
    return result


def mark_stale(model: type[models.Model], *, field: str | None = None) -> int:
    """Mark ready vectors made by another embedder than the field's live one
    (`visual_reco.rollout`), or with other aspect versions
    (`ImageEmbeddingField.fingerprint_for`), as stale; return how many.
    """
    changed = 0
    for embedding in selected_fields(model, field):
        changed += model._base_manager.filter(
            **{embedding.status_name: EmbeddingStatus.READY}
        ).exclude(
            **{embedding.fingerprint_name:
               embedding.fingerprint_for(get_embedder(live_embedder(embedding)))}
        ).update(**embedding.state(EmbeddingStatus.STALE, keep_vector=True, at=timezone.now()))
    return changed


def reindex(queryset: QuerySet, *, field: str | None = None) -> QueueResult:
    """Mark every row of ``queryset`` with an image pending and queue it.

    Existing vectors stay in place (and keep being recommended) until replaced.
    """
    model = queryset.model
    # Read on the primary unless the caller chose a database: a replica may lag the saves.
    primary = queryset if queryset._db else queryset.using(router.db_for_write(model))
    result = QueueResult()
    for embedding in selected_fields(model, field):
        queryset.filter(~embedding.has_image()).update(
            **embedding.state(EmbeddingStatus.NO_IMAGE, at=timezone.now()))
        pks = list(primary.filter(embedding.has_image()).values_list("pk", flat=True))
        model._base_manager.filter(pk__in=pks).update(
            **embedding.state(EmbeddingStatus.PENDING, keep_vector=True))
        result.add(queue_embeddings(model, pks, field=embedding.name))
    invalidate_on_commit(model)
    return result


def fill_shadow(field: ImageEmbeddingField, *, grace: timedelta | None = None) -> QueueResult:
    """Queue ``field``'s rows with an image that lack a vector of its shadow alias
    (`visual_reco.rollout`) for their current image; nothing without a rollout.

    With ``grace`` (the sweep), only when the last fill was longer ago than that, and not
    the rows waiting for their live vector: their own task embeds both. A lost task or a
    killed worker leaves a row without its shadow vector; this queues it again.
    """
    primary = router.db_for_write(field.model)
    now = timezone.now()
    rollout = rollout_model()._base_manager.using(primary).filter(**field_key(field)).exclude(
        shadow="")
    if grace is not None:
        rollout = rollout.filter(Q(filled_at__isnull=True) | Q(filled_at__lt=now - grace))
    # Claiming the fill by its time: of two sweeps at once, one queues.
    if not rollout.update(filled_at=now):
        return QueueResult()
    shadow = aliases(field, using=primary).shadow
    if not shadow:
        return QueueResult()
    try:
        fingerprint = field.fingerprint_for(get_embedder(shadow))
    except ImproperlyConfigured as exc:  # check E011 says so; the other fields still sweep
        logger.warning("Not filling the shadow of %s.%s: %s", field.model._meta.label,
                       field.name, exc)
        return QueueResult(error=str(exc))
    rows = field.model._base_manager.using(primary).filter(field.has_image())
    if grace is not None:
        rows = rows.exclude(**{f"{field.status_name}__in": WAITING})
    missing = rows.exclude(Exists(shadow_of(field, fingerprint)))
    return queue_embeddings(field.model, missing.values_list("pk", flat=True), field=field.name)


def select(model: type[models.Model], statuses: Iterable[str], *,
           field: str | None = None) -> QuerySet:
    """Rows of ``model`` whose embedding status (of any field, for None) is in ``statuses``,
    read on the primary (the routers' ``db_for_write``): the sweep and the waits act on them,
    and a replica lags."""
    statuses = list(statuses)
    condition = Q()
    for embedding in selected_fields(model, field):
        condition |= Q(**{f"{embedding.status_name}__in": statuses})
    return model._base_manager.db_manager(router.db_for_write(model)).filter(condition)


def sweep(grace: timedelta | None = None) -> dict[str, QueueResult]:
    """Queue what is waiting in every field of every embedded model, by model label: stale
    rows, pending rows never queued (broker down) or queued more than ``grace`` (default
    ``SWEEP_GRACE`` seconds) ago, and during a rollout the rows still lacking a shadow
    vector ``grace`` after they were last queued (`fill_shadow`)."""
    if grace is None:
        grace = timedelta(seconds=reco_settings.SWEEP_GRACE)
    results = {}
    for model in embedded_models():
        results[model._meta.label] = result = QueueResult()
        for embedding in selected_fields(model):
            mark_stale(model, field=embedding.name)
            cutoff = timezone.now() - grace
            waiting = select(model, WAITING, field=embedding.name).filter(
                Q(**{f"{embedding.updated_at_name}__isnull": True})
                | Q(**{f"{embedding.updated_at_name}__lt": cutoff})
                | Q(**{embedding.status_name: EmbeddingStatus.STALE}))
            result.add(queue_embeddings(model, waiting.values_list("pk", flat=True),
                                        field=embedding.name))
            result.add(fill_shadow(embedding, grace=grace))
    return results


def status_counts(model: type[models.Model], *,
                  field: str | None = None) -> dict[str, dict[str, int]]:
    """How many rows have each embedding status, by field name."""
    counts = {}
    for embedding in selected_fields(model, field):
        found = dict.fromkeys(EmbeddingStatus.values, 0)
        rows = model._base_manager.values_list(embedding.status_name).annotate(
            n=models.Count("pk")).order_by()
        found.update(dict(rows))
        counts[embedding.name] = found
    return counts


def wait_until_done(model: type[models.Model], pks: Sequence[Any], *, field: str | None = None,
                    timeout: float = 600.0, interval: float = 0.5,
                    progress: Callable[[int, int], None] | None = None) -> bool:
    """Poll until none of ``pks`` is pending or stale, or ``timeout`` seconds pass.

    Calls ``progress(done, total)`` after each poll. Returns True when all are done.
    """
    pks = list(pks)
    deadline = time.monotonic() + timeout
    while True:
        waiting = select(model, WAITING, field=field).filter(pk__in=pks).count()
        if progress:
            progress(len(pks) - waiting, len(pks))
        if waiting == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
