"""Celery tasks: embed a batch of objects, embed a search photo, the periodic sweep, and the
feedback roll-up, purge and learned ranking.

Senders publish them by name (`visual_reco.jobs`, `visual_reco.query_photos`); this module
is imported by workers and the beat (``app.autodiscover_tasks()``). Each task belongs to a
kind of work (``QUEUES``): `QUEUE_KINDS`.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Sequence
from typing import Any

from celery import Celery, Task, current_app, shared_task
from celery.signals import worker_process_init
from django.apps import apps
from django.db import DatabaseError, InterfaceError, OperationalError, connections, router

from visual_reco.conf import reco_settings
from visual_reco.embedders import DEFAULT_EMBEDDER, get_embedder
from visual_reco.embedding import embed_objects
from visual_reco.feedback.learning import LEARN_TASK, learn
from visual_reco.feedback.retention import PURGE_TASK, purge_events
from visual_reco.feedback.rollup import ROLLUP_TASK, rollup
from visual_reco.jobs import EMBED_TASK, SWEEP_TASK, sweep
from visual_reco.query_photos import EMBED_QUERY_TASK, embed_query_bytes
from visual_reco.registry import embedded_models, embedding_fields
from visual_reco.rollout import Aliases, aliases

logger = logging.getLogger("visual_reco")

# Which queue (a key of QUEUES) each task goes to. Learning reads the feedback tables as the
# roll-up does and runs once a day, so it shares their queue.
QUEUE_KINDS = {EMBED_TASK: "index", SWEEP_TASK: "index", EMBED_QUERY_TASK: "query",
               ROLLUP_TASK: "rollup", PURGE_TASK: "rollup", LEARN_TASK: "rollup"}
MODEL_KINDS = ("index", "query")  # the kinds whose tasks run the embedding model


class QueuedTask(Task):
    """A task sent to the queue of its kind (`QUEUE_KINDS`, ``QUEUES``) by every sender that
    names no destination: the beat's schedule, ``delay()``, ``apply_async()``. (`broker`'s
    senders name it themselves: they send by name, without the task.)"""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Send as Celery does, to this task's queue unless ``options`` name a destination
        (a beat entry's ``options``, a retry's delivery info)."""
        if not any(options.get(key) for key in ("queue", "exchange", "routing_key")):
            options.update(reco_settings.task_options(QUEUE_KINDS[self.name]))
        return super().apply_async(args, kwargs, **options)


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None,
               **extra: Any) -> dict[str, str] | None:
    """A Celery router (``CELERY_TASK_ROUTES = ["visual_reco.tasks.route_task"]``) for
    processes that send visual_reco's tasks by name (``send_task``, ``celery call``): the
    queue of the task's kind; None for other tasks and for a kind on the default queue."""
    kind = QUEUE_KINDS.get(name)
    queue = reco_settings.queue(kind) if kind else None
    return {"queue": queue} if queue else None


# Retries wait 1, 2, 4 ... at most 20 s (about 3 minutes in all, enough for a database
# restart): a retry is held by the worker until due, and one held past the broker's
# visibility timeout would be handed out a second time.
@shared_task(name=EMBED_TASK, base=QueuedTask, acks_late=True, reject_on_worker_lost=True,
             autoretry_for=(OperationalError, InterfaceError), retry_backoff=True,
             retry_backoff_max=20, max_retries=12)
def embed_task(model_label: str, field: str, pks: list[Any]) -> dict[str, int]:
    """Embed ``field`` of ``pks`` of ``model_label`` (idempotent: done rows are skipped)."""
    return vars(embed_objects(apps.get_model(model_label), pks, field=field))


@shared_task(name=EMBED_QUERY_TASK, base=QueuedTask, acks_late=False, ignore_result=False)
def embed_query_task(image_base64: str, embedder: str = DEFAULT_EMBEDDER,
                     aspects: Sequence[str] = ()) -> dict[str, Any]:
    """Embed a search photo (base64 bytes) and return its vector and ``aspects``
    (`QueryVectors.to_json`; needs a result backend)."""
    return embed_query_bytes(base64.b64decode(image_base64), embedder=embedder,
                             aspects=tuple(aspects)).to_json()


@shared_task(name=SWEEP_TASK, base=QueuedTask)
def sweep_task() -> dict[str, int]:
    """Queue stale rows and pending rows nobody queued (e.g. the broker was down)."""
    return {label: result.queued for label, result in sweep().items()}


@shared_task(name=ROLLUP_TASK, base=QueuedTask, ignore_result=True)
def rollup_feedback_task() -> dict[str, Any]:
    """Recompute the daily feedback aggregates of the days new events touched."""
    result = rollup()
    return {"skipped": result.skipped, "days": [str(day) for day in result.days or []]}


@shared_task(name=PURGE_TASK, base=QueuedTask, ignore_result=True)
def purge_feedback_task() -> int:
    """Delete raw feedback events older than ``FEEDBACK["RETENTION_DAYS"]``."""
    return purge_events()


@shared_task(name=LEARN_TASK, base=QueuedTask, ignore_result=True)
def learn_ranking_task() -> dict[str, Any]:
    """Learn the ranking of the product model's default field from the feedback so far
    (`visual_reco.feedback.learning.learn`); nothing is trained when no event is new."""
    result = learn()
    return {"version": result.version, "serving": result.serving, "reason": result.reason}


def warm_aliases() -> list[str]:
    """The embedder aliases the registered fields embed with now: each one's live alias
    and, during a rollout, its shadow (`visual_reco.rollout`); a field's declared one when
    the rollout table cannot be read (not migrated yet, database down)."""
    found: set[str] = set()
    for model in embedded_models():
        for field in embedding_fields(model):
            try:
                current = aliases(field, using=router.db_for_write(model))
            except DatabaseError:
                logger.warning("Could not read the live embedder of %s.%s; warming %r",
                               model._meta.label, field.name, field.embedder, exc_info=True)
                current = Aliases(field.embedder)
            found.update(alias for alias in (current.live, current.shadow) if alias)
    return sorted(found)


def warm_models() -> list[str]:
    """Load every embedder the registered fields embed with now (`warm_aliases`) and return
    the aliases loaded (errors are logged, not raised: the tasks load the model again, and
    fail visibly if it still cannot be loaded)."""
    loaded = []
    for alias in warm_aliases():
        try:
            get_embedder(alias).load()
        except Exception:
            logger.exception("Could not load embedding model %r; tasks will retry loading it",
                             alias)
        else:
            loaded.append(alias)
    return loaded


def _warm_up_thread() -> None:
    try:
        warm_models()
    finally:
        connections.close_all()  # this thread's: it read the rollout table, and it ends


def embeds(app: Celery) -> bool:
    """Whether a worker of ``app`` consumes a queue of work that runs the model ("index" or
    "query"), from the queues its ``-Q`` selected (Celery's default queue without one)."""
    consumed = set(app.amqp.queues.consume_from)
    return any((reco_settings.queue(kind) or app.conf.task_default_queue) in consumed
               for kind in MODEL_KINDS)


@worker_process_init.connect
def _warm_models_in_the_background(**kwargs: Any) -> None:
    # TensorFlow must not be initialised before the pool forks; each child loads its own.
    # In a thread: Celery kills a child whose init takes over worker_proc_alive_timeout (4 s),
    # and loading the model takes about that long, so a replaced child would be killed in a
    # loop. A task that arrives first waits for the load (Embedder.load holds a lock).
    # A worker of the roll-up queue alone never embeds: it loads no model.
    if reco_settings.WARM_WORKERS and embeds(current_app._get_current_object()):
        threading.Thread(target=_warm_up_thread, name="visual_reco-warm-up", daemon=True).start()
