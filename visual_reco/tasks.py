"""Celery tasks: embed a batch of objects, and the periodic sweep of waiting rows."""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

from celery import shared_task
from celery.signals import worker_process_init
from django.apps import apps
from django.db import InterfaceError, OperationalError

from visual_reco import indexing
from visual_reco.conf import reco_settings
from visual_reco.embedders import get_embedder
from visual_reco.images import open_image

logger = logging.getLogger("visual_reco")


@shared_task(name="visual_reco.embed", acks_late=True, reject_on_worker_lost=True,
             autoretry_for=(OperationalError, InterfaceError), retry_backoff=True,
             retry_backoff_max=300, max_retries=8)
def embed_task(model_label: str, field: str, pks: list[Any]) -> dict[str, int]:
    """Embed ``pks`` of ``model_label`` (idempotent: done rows are skipped)."""
    result = indexing.embed_objects(apps.get_model(model_label), pks, field=field)
    return vars(result)


@shared_task(name="visual_reco.embed_query", acks_late=False)
def embed_query_task(image_base64: str) -> list[float]:
    """Embed a search photo (base64 bytes) and return its vector (needs a result backend)."""
    from visual_reco.search import embed_query_images

    image = open_image(io.BytesIO(base64.b64decode(image_base64)))
    return embed_query_images([image])[0].tolist()


@shared_task(name="visual_reco.sweep")
def sweep_task() -> dict[str, int]:
    """Queue stale rows and pending rows nobody queued (e.g. the broker was down)."""
    return {label: r.queued for label, r in indexing.sweep().items()}


@worker_process_init.connect
def _warm_model(**kwargs: Any) -> None:
    # TensorFlow must not be initialised before the pool forks; each child loads its own.
    if not reco_settings.WARM_WORKERS:
        return
    try:
        get_embedder().load()
    except Exception:
        # A child that dies here is restarted in a loop; fail the tasks instead, visibly.
        logger.exception("Could not load the embedding model; tasks will retry loading it")
