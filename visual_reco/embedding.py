"""Computing embeddings: decode the source images of some rows, embed them in one model call,
and store the vectors or the failures. What the Celery task and ``visual_reco_reindex --sync``
run."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.db import models, router, transaction
from django.utils import timezone
from pgvector import HalfVector

from visual_reco.choices import EmbeddingStatus
from visual_reco.embedders import Embedder, get_embedder
from visual_reco.fields import ImageEmbeddingField
from visual_reco.images import ImageError
from visual_reco.registry import selected_fields
from visual_reco.result_cache import invalidate_on_commit
from visual_reco.rollout import aliases, field_key, shadow_model

logger = logging.getLogger("visual_reco")

DECODE_THREADS = max(os.cpu_count() or 1, 1)


@dataclass
class EmbedResult:
    """What `embed_objects` did with the rows it was given."""

    embedded: int = 0
    failed: int = 0
    skipped: int = 0

    def add(self, other: EmbedResult) -> None:
        """Count ``other``'s rows too."""
        self.embedded += other.embedded
        self.failed += other.failed
        self.skipped += other.skipped


def embed_objects(model: type[models.Model], pks: Sequence[Any], *, field: str | None = None,
                  force: bool = False) -> EmbedResult:
    """Embed the images of ``pks`` for ``field`` (None: every embedding field of ``model``)
    and store vectors with their aspects, or failures, one model call per field.

    Rows already embedded by the field's live embedder (`visual_reco.rollout`) and aspect
    versions (`ImageEmbeddingField.fingerprint_for`) are skipped unless ``force``. A
    row whose image changed since it was read is not overwritten (its own task will handle
    it). A bad image marks only its own row failed, with a message for shop staff. While an
    embedder is rolled out, the rows' vectors by the shadow embedder are stored too, in
    `visual_reco.models.EmbeddingShadow` (skipped when there for the same image).
    """
    result = EmbedResult()
    for embedding in selected_fields(model, field):
        result.add(_embed_field(model, embedding, list(pks), force))
    return result


def _embed_field(model: type[models.Model], embedding: ImageEmbeddingField, pks: list[Any],
                 force: bool) -> EmbedResult:
    # Which embedder is live is read where the switch writes it, as the rows below are.
    current = aliases(embedding, using=router.db_for_write(model))
    result = _embed_live(model, embedding, current.live, pks, force)
    if current.shadow:
        _embed_shadow(model, embedding, current.shadow, pks, force)
    return result


def _embed_live(model: type[models.Model], embedding: ImageEmbeddingField, alias: str,
                pks: list[Any], force: bool) -> EmbedResult:
    """Embed the rows of ``pks`` whose column lacks a vector of ``alias`` (the live one)."""
    embedder = get_embedder(alias)
    fingerprint = embedding.fingerprint_for(embedder)
    # The rows are read where they are written: on a replica a row saved a moment ago may be
    # missing, or still show its old image as embedded, and would be skipped.
    manager = model._base_manager.db_manager(router.db_for_write(model))
    rows = manager.filter(pk__in=pks).values_list(
        "pk", embedding.source, embedding.status_name, embedding.fingerprint_name)
    todo = [(pk, name) for pk, name, status, fp in rows
            if name and (force or status != EmbeddingStatus.READY or fp != fingerprint)]
    if todo:
        _load_or_report(model, embedding, embedder, [pk for pk, _ in todo])
    computed = _compute(embedding, embedder, todo)
    _store(model, embedding, alias, fingerprint, computed)
    return EmbedResult(embedded=len(computed.loaded), failed=len(computed.failures),
                       skipped=len(pks) - len(todo))


def _embed_shadow(model: type[models.Model], embedding: ImageEmbeddingField, alias: str,
                  pks: list[Any], force: bool) -> None:
    """Embed the rows of ``pks`` without a shadow vector of ``alias`` for their image."""
    embedder = get_embedder(alias)
    fingerprint = embedding.fingerprint_for(embedder)
    primary = router.db_for_write(model)
    rows = model._base_manager.using(primary).filter(pk__in=pks).values_list(
        "pk", embedding.source)
    done = set(shadow_model()._base_manager.using(primary).filter(
        **field_key(embedding), fingerprint=fingerprint,
        object_id__in=[str(pk) for pk in pks]).values_list("object_id", "source"))
    todo = [(pk, name) for pk, name in rows if name and (force or (str(pk), name) not in done)]
    if todo:
        embedder.load()  # a candidate that cannot load fails the task, not the live rows
    _store(model, embedding, alias, fingerprint, _compute(embedding, embedder, todo))


@dataclass
class _Computed:
    """Vectors (with aspects) of the rows ``loaded``, and the ``failures`` with why."""

    loaded: list[tuple[Any, str]]
    vectors: Any
    aspects: dict[str, Any]
    failures: list[tuple[Any, str, str]]


def _compute(embedding: ImageEmbeddingField, embedder: Embedder,
             todo: list[tuple[Any, str]]) -> _Computed:
    storage = embedding.source_field().storage
    images, loaded, failures = [], [], []
    # Decoding is parallel across cores (Pillow releases the GIL while decoding).
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        decoded = pool.map(lambda row: _decode(embedder, storage, row[1]), todo)
        for (pk, name), outcome in zip(todo, decoded, strict=True):
            if isinstance(outcome, str):
                failures.append((pk, name, outcome))
            else:
                images.append(outcome)
                loaded.append((pk, name))
    # One prepared array per image gives both the vector and the aspects.
    vectors, aspects = (embedder.embed_with_aspects(images, embedding.aspects) if images
                        else ([], {}))
    return _Computed(loaded, vectors, aspects, failures)


def _store(model: type[models.Model], embedding: ImageEmbeddingField, alias: str,
           fingerprint: str, computed: _Computed) -> None:
    """Write ``alias``'s vectors where that alias belongs now: the column when it is live,
    the shadow table when it is the shadow, nowhere when a finished rollout retired it
    since the task began (a live row left pending is queued again by the sweep).
    The rollout row is share-locked meanwhile, so a switch never runs between the check
    and the writes."""
    if not computed.loaded and not computed.failures:
        return
    primary = router.db_for_write(model)
    with transaction.atomic(using=primary):
        current = aliases(embedding, lock=True, using=primary)
        if alias == current.live:
            _store_live(model, embedding, fingerprint, computed)
        elif alias == current.shadow:
            _store_shadow(embedding, fingerprint, computed, primary)


def _store_live(model: type[models.Model], embedding: ImageEmbeddingField, fingerprint: str,
                computed: _Computed) -> None:
    manager = model._base_manager.db_manager(router.db_for_write(model))
    now = timezone.now()
    for row, ((pk, name), vector) in enumerate(zip(computed.loaded, computed.vectors,
                                                   strict=True)):
        manager.filter(pk=pk, **{embedding.source: name}).update(**embedding.state(
            EmbeddingStatus.READY, vector=vector, fingerprint=fingerprint, at=now,
            aspect_vectors={aspect: values[row] for aspect, values in computed.aspects.items()}))
    for pk, name, message in computed.failures:
        logger.info("Embedding %s %s (%s) failed: %s", model._meta.label, pk, embedding.name,
                    message)
        manager.filter(pk=pk, **{embedding.source: name}).update(**embedding.state(
            EmbeddingStatus.FAILED, fingerprint=fingerprint, error=message, at=now))
    invalidate_on_commit(model)


def _store_shadow(embedding: ImageEmbeddingField, fingerprint: str, computed: _Computed,
                  using: str) -> None:
    shadow = shadow_model()
    rows = [shadow(**field_key(embedding), fingerprint=fingerprint, object_id=str(pk),
                   source=name, vector=vector,
                   aspects={aspect: HalfVector(values[row]).to_text()
                            for aspect, values in computed.aspects.items()})
            for row, ((pk, name), vector) in enumerate(zip(computed.loaded, computed.vectors,
                                                           strict=True))]
    rows += [shadow(**field_key(embedding), fingerprint=fingerprint, object_id=str(pk),
                    source=name, error=message) for pk, name, message in computed.failures]
    shadow._base_manager.using(using).bulk_create(
        rows, update_conflicts=True, unique_fields=["model", "field", "fingerprint", "object_id"],
        update_fields=["source", "vector", "aspects", "error", "updated_at"])


def _load_or_report(model: type[models.Model], embedding: ImageEmbeddingField,
                    embedder: Embedder, pks: list[Any]) -> None:
    """Load the model; when it cannot be loaded (a damaged weights file or wheel), say so
    in the rows' error, where the admin shows it, and raise. The rows stay pending (it is
    not their images' fault) and the sweep queues them again after ``SWEEP_GRACE``."""
    try:
        embedder.load()
    except Exception as exc:
        message = (f"The embedding model could not be loaded ({type(exc).__name__}: {exc}); "
                   "the sweep will try again.")
        model._base_manager.db_manager(router.db_for_write(model)).filter(
            pk__in=pks).update(**embedding.state(
            EmbeddingStatus.PENDING, keep_vector=True, error=message, at=timezone.now()))
        raise


def _decode(embedder: Embedder, storage: Any, name: str) -> Any:
    """The decoded image, or the message saying why it cannot be used."""
    try:
        with storage.open(name, "rb") as handle:
            return embedder.decode(handle)
    except ImageError as exc:
        return str(exc)
    except FileNotFoundError:
        return f"The image file {name!r} is missing from storage."
