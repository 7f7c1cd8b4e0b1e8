"""Keep embeddings in step with their source images.

`connect_receivers` (called from ``AppConfig.ready``) gives every installed model with an
embedding field these receivers: ``post_init`` remembers the source file names,
``pre_save`` notices a new or changed image and marks that field pending, ``post_save``
queues the changed fields' embeddings once the transaction commits, and ``post_save`` /
``post_delete`` drop the model's cached similar-products lists, and ``post_delete`` drops the
object's shadow vectors of a rollout (`visual_reco.model_switch`). Raw saves (fixture loads) and
saves that leave the images alone queue nothing. The product models' words are indexed for
search by text on ``post_save`` and dropped on ``post_delete`` (`visual_reco.text_search`).
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.files import File
from django.db.models.fields.files import FieldFile
from django.db.models.signals import post_delete, post_init, post_save, pre_save
from django.utils import timezone

from visual_reco import text_search
from visual_reco.choices import EmbeddingStatus
from visual_reco.commit_hooks import OnCommit, add_on_commit
from visual_reco.fields import ImageEmbeddingField
from visual_reco.jobs import queue_embeddings
from visual_reco.registry import embedded_models, embedding_fields
from visual_reco.result_cache import invalidate_on_commit
from visual_reco.rollout import field_key, shadow_model

SOURCES = "_visual_reco_sources"
CHANGED = "_visual_reco_changed"
BATCH = "_visual_reco_commit_batch"
UNKNOWN = object()


def _file_name(value: Any) -> str:
    if isinstance(value, File):
        return value.name or ""
    return value or ""


def _is_new_upload(value: Any) -> bool:
    if isinstance(value, FieldFile):
        return bool(value) and not value._committed
    return isinstance(value, File)


def _source_attname(instance: Any, field: ImageEmbeddingField) -> str:
    return instance._meta.get_field(field.source).attname


def _reset(field: ImageEmbeddingField, has_image: bool) -> dict[str, Any]:
    if has_image:
        return field.state(EmbeddingStatus.PENDING)
    return field.state(EmbeddingStatus.NO_IMAGE, at=timezone.now())


def remember_sources(sender: type, instance: Any, **kwargs: Any) -> None:
    """Record the source file names an instance was loaded with."""
    sources = {}
    for field in embedding_fields(sender):
        attname = _source_attname(instance, field)
        loaded = attname in instance.__dict__
        sources[field.name] = _file_name(instance.__dict__[attname]) if loaded else UNKNOWN
    instance.__dict__[SOURCES] = sources


def detect_source_change(sender: type, instance: Any, raw: bool = False,
                         update_fields: frozenset[str] | None = None, **kwargs: Any) -> None:
    """Mark embeddings whose source image is new or changed as pending (no vector)."""
    if raw:
        return
    remembered = instance.__dict__.get(SOURCES, {})
    changed = []
    for field in embedding_fields(sender):
        attname = _source_attname(instance, field)
        if update_fields is not None and field.source not in update_fields:
            continue
        if attname not in instance.__dict__:
            continue  # deferred and never touched
        value = instance.__dict__[attname]
        name = _file_name(value)
        before = remembered.get(field.name, UNKNOWN)
        if not (instance._state.adding or _is_new_upload(value) or name != before):
            continue
        changed.append(field)
        for attr, new in _reset(field, bool(name)).items():
            setattr(instance, attr, new)
    instance.__dict__[CHANGED] = changed


def schedule_embedding(sender: type, instance: Any, raw: bool = False, using: str = "default",
                       update_fields: frozenset[str] | None = None, **kwargs: Any) -> None:
    """After a save that changed an image, queue its embedding once the transaction commits."""
    changed = instance.__dict__.pop(CHANGED, [])
    if raw or not changed:
        return
    sources = instance.__dict__.setdefault(SOURCES, {})
    for field in changed:
        name = getattr(instance, field.source).name or ""
        sources[field.name] = name
        if update_fields is not None:
            # The companion columns were not in update_fields: write them now.
            values = {attr: getattr(instance, attr) for attr in _reset(field, bool(name))}
            sender._base_manager.using(using).filter(pk=instance.pk).update(**values)
        if name:
            _add_to_commit_batch(using, sender, field.name, instance.pk)


class CommitBatch(OnCommit):
    """The objects whose images changed in one transaction; queued together on commit.

    One batch is registered with ``on_commit`` per transaction, so saving many products in
    one transaction sends ``len / BATCH_SIZE`` tasks, not one per product. When the
    transaction rolls back, Django drops the callback and the batch with it. Objects saved in
    a rolled-back savepoint stay in the batch; their task finds nothing to do.
    """

    def __init__(self, using: str) -> None:
        self.using = using
        self.items: dict[tuple[type, str], list[Any]] = {}

    def add(self, model: type, field: str, pk: Any) -> None:
        """Add one object's field to the batch."""
        self.items.setdefault((model, field), []).append(pk)

    def run(self) -> None:
        """Queue the batch's objects, ``BATCH_SIZE`` per task and field."""
        for (model, field), pks in self.items.items():
            queue_embeddings(model, list(dict.fromkeys(pks)), field=field, using=self.using)


def _add_to_commit_batch(using: str, model: type, field: str, pk: Any) -> None:
    add_on_commit(using, BATCH, lambda: CommitBatch(using),
                  lambda batch: batch.add(model, field, pk))


def forget_similar(sender: type, using: str = "default", **kwargs: Any) -> None:
    """``post_save``/``post_delete``: cached similar-products lists of the model are stale."""
    invalidate_on_commit(sender, using)


def forget_shadow(sender: type, instance: Any, using: str = "default", **kwargs: Any) -> None:
    """``post_delete``: delete the object's shadow vectors (any embedder), in the deleting
    transaction, so that a rollout neither keeps nor switches in vectors of deleted rows."""
    for field in embedding_fields(sender):
        shadow_model()._base_manager.using(using).filter(
            **field_key(field), object_id=str(instance.pk)).delete()


def index_words(sender: type, instance: Any, raw: bool = False, using: str = "default",
                update_fields: frozenset[str] | None = None, **kwargs: Any) -> None:
    """``post_save``: write the object's text document in the saving transaction (so it is
    rolled back with the save), unless the save named only fields that are not indexed."""
    if raw:
        return
    if update_fields is not None and not {path.split("__")[0] for path, _ in
                                          text_search.fields_of(sender)} & set(update_fields):
        return
    text_search.index([instance], using)


def unindex_words(sender: type, instance: Any, using: str = "default", **kwargs: Any) -> None:
    """``post_delete``: drop the object's text document."""
    text_search.unindex(sender, [instance.pk], using)


def connect_receivers() -> None:
    """Connect the receivers for every installed model with an embedding field (proxies and
    multi-table children included: their saves send signals under their own class), and
    the text index's for every model whose words are indexed (`visual_reco.text_search`)."""
    indexed = set(text_search.indexed_models())
    for model in apps.get_models():
        if model._meta.concrete_model in indexed:
            uid = f"visual_reco:{model._meta.label_lower}:text"
            post_save.connect(index_words, sender=model, dispatch_uid=uid)
            post_delete.connect(unindex_words, sender=model, dispatch_uid=uid)
    for model in embedded_models(include_proxies=True):
        uid = f"visual_reco:{model._meta.label_lower}"
        post_init.connect(remember_sources, sender=model, dispatch_uid=uid)
        pre_save.connect(detect_source_change, sender=model, dispatch_uid=uid)
        post_save.connect(schedule_embedding, sender=model, dispatch_uid=uid)
        post_save.connect(forget_similar, sender=model, dispatch_uid=f"{uid}:cache")
        post_delete.connect(forget_similar, sender=model, dispatch_uid=f"{uid}:cache")
        post_delete.connect(forget_shadow, sender=model, dispatch_uid=f"{uid}:shadow")
