"""Changing a field's embedder without downtime: fill a shadow, switch, roll back.

`start` names a candidate alias: workers embed every row with it into
`visual_reco.models.EmbeddingShadow` (queued as any embedding, ``BATCH_SIZE`` rows per
task; running it again queues only what is missing, and so does the periodic sweep
``SWEEP_GRACE`` after the last fill: `visual_reco.jobs.fill_shadow`), while the field's
column keeps serving the live embedder's vectors. `coverage` says how many rows with an image have a
shadow vector of the candidate for their current image. `switch`, once every row has one,
swaps in one transaction: the live vectors go to the shadow table, the candidate's to the
column, and the rollout row names the candidate live, so every process embeds new uploads
and search photos with it from the next read (`visual_reco.rollout`). The previous embedder
becomes the shadow, so uploads keep getting both vectors and `rollback` is the same swap
back. `finish` drops the shadow. A switch rewrites every row with an image, so the column
holds one fingerprint after it, and an embedder of another size is refused: the column's
size and its HNSW index are fixed. The rewrite is one ``UPDATE ... FROM`` the shadow table;
nearly all its time is the rows' inserts into the HNSW indexes (docs/BENCHMARKS.md
"Changing the embedder").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router, transaction
from django.db.models import Count, Exists, Q
from django.utils import timezone

from visual_reco.choices import EmbeddingStatus
from visual_reco.embedders import Embedder, get_embedder
from visual_reco.fields import ImageEmbeddingField
from visual_reco.jobs import QueueResult, fill_shadow
from visual_reco.models import EmbedderRollout, EmbeddingShadow
from visual_reco.result_cache import invalidate_on_commit
from visual_reco.rollout import field_key, shadow_of


class SwitchRefused(Exception):
    """A rollout step that cannot be taken now; the message says why and what to do."""


@dataclass(frozen=True)
class Coverage:
    """Rows with an image (``total``) and those with a vector (or a failure) of
    ``fingerprint`` in the shadow table for their current image (``done``)."""

    fingerprint: str
    done: int
    total: int

    @property
    def complete(self) -> bool:
        """Whether every row with an image is covered."""
        return self.done == self.total

    def __str__(self) -> str:
        share = 100.0 * self.done / self.total if self.total else 100.0
        return f"{self.done}/{self.total} rows ({share:.1f}%)"


@dataclass(frozen=True)
class RolloutState:
    """What `describe` reports of one field."""

    label: str
    live: str
    live_fingerprint: str
    shadow: str
    coverage: Coverage | None
    switched_at: datetime | None

    def __str__(self) -> str:
        text = f"{self.label}: live {self.live} ({self.live_fingerprint})"
        if self.shadow and self.coverage is not None:
            text += (f"; shadow {self.shadow} ({self.coverage.fingerprint}): "
                     f"{self.coverage} embedded")
        if self.switched_at:
            text += f"; switched {self.switched_at:%Y-%m-%d %H:%M:%S} UTC (rollback possible)"
        return text


def _embedder(alias: str) -> Embedder:
    try:
        return get_embedder(alias)
    except ImproperlyConfigured as exc:
        raise SwitchRefused(str(exc)) from exc


def fingerprint(field: ImageEmbeddingField, alias: str) -> str:
    """What ``field``'s rows embedded by ``alias`` carry as fingerprint."""
    return field.fingerprint_for(_embedder(alias))


def size_problem(field: ImageEmbeddingField, alias: str) -> str:
    """Why ``alias`` cannot replace ``field``'s embedder without a migration ("" when it
    can): its vectors have another number of dimensions than the column."""
    produced = _embedder(alias).dimensions
    if produced == field.dimensions:
        return ""
    app = field.model._meta.app_label
    return (f"{alias!r} makes {produced}-dimension vectors; "
            f"{field.model._meta.label}.{field.name} stores {field.dimensions}. A column's "
            f"size and its HNSW index are fixed, so this needs a migration of {app!r}: set "
            f"ImageEmbeddingField(dimensions={produced}) and clear the vectors before the "
            "column is altered, then reindex; searches find nothing until it is done. To "
            f"switch without downtime, roll out an embedder of {field.dimensions} dimensions.")


def _primary(field: ImageEmbeddingField) -> str:
    # A rollout is read and written where its rows are written: a replica lags, and the
    # switch writes.
    return router.db_for_write(field.model)


def coverage(field: ImageEmbeddingField, alias: str) -> Coverage:
    """How many of ``field``'s rows with an image have a shadow vector of ``alias``."""
    found = fingerprint(field, alias)
    counts = field.model._base_manager.using(_primary(field)).filter(field.has_image()).aggregate(
        total=Count("pk"), done=Count("pk", filter=Q(Exists(shadow_of(field, found)))))
    return Coverage(found, counts["done"], counts["total"])


def describe(field: ImageEmbeddingField) -> RolloutState:
    """The live and shadow embedders of ``field``, with the shadow's coverage."""
    row = EmbedderRollout.objects.using(_primary(field)).filter(**field_key(field)).first()
    live = row.live if row else field.embedder
    shadow = row.shadow if row else ""
    return RolloutState(f"{field.model._meta.label}.{field.name}", live,
                        fingerprint(field, live), shadow,
                        coverage(field, shadow) if shadow else None,
                        row.switched_at if row else None)


def start(field: ImageEmbeddingField, alias: str) -> QueueResult:
    """Begin (or resume) filling ``field``'s shadow with ``alias``: queue every row with an
    image that has no shadow vector of it yet.

    Raises `SwitchRefused` for an unknown alias, one of another size (`size_problem`), the
    live one, or while another candidate is rolled out.
    """
    problem = size_problem(field, alias)
    if problem:
        raise SwitchRefused(problem)
    primary = _primary(field)
    with transaction.atomic(using=primary):
        row, _ = EmbedderRollout.objects.db_manager(primary).select_for_update().get_or_create(
            **field_key(field), defaults={"live": field.embedder, "started_at": timezone.now()})
        if row.shadow and row.shadow != alias:
            role = "kept for a rollback" if row.switched_at else "being rolled out"
            raise SwitchRefused(f"{row.shadow!r} is {role}: finish it first.")
        if fingerprint(field, row.live) == fingerprint(field, alias):
            raise SwitchRefused(f"{alias!r} makes the vectors the column holds already "
                                f"(live: {row.live!r}).")
        if row.shadow != alias:
            row.shadow, row.started_at, row.switched_at = alias, timezone.now(), None
            row.save()
    return fill(field)


def fill(field: ImageEmbeddingField) -> QueueResult:
    """Queue ``field``'s rows with an image that lack a vector of the shadow alias."""
    return fill_shadow(field)


def switch(field: ImageEmbeddingField, *, back: bool = False) -> Coverage:
    """Make the shadow alias live, in one transaction: the column's vectors go to the shadow
    table, the shadow's to the column, and the aliases swap; then queue what the new shadow
    lacks (rows whose vectors had another fingerprint). ``back``: a `rollback`.

    Raises `SwitchRefused` unless every row with an image has a shadow vector for its
    current image, and for an embedder of another size.
    """
    with transaction.atomic(using=_primary(field)):
        row = (EmbedderRollout.objects.using(_primary(field)).select_for_update()
               .filter(**field_key(field)).first())
        if row is None or not row.shadow:
            raise SwitchRefused("No embedder is being rolled out: start one with "
                                "`start --embedder ALIAS`.")
        if back and row.switched_at is None:
            raise SwitchRefused(f"Nothing to roll back: {row.live!r} was not switched to. "
                                "`finish` abandons the candidate.")
        problem = size_problem(field, row.shadow)
        if problem:
            raise SwitchRefused(problem)
        found = coverage(field, row.shadow)
        if not found.complete:
            raise SwitchRefused(
                f"{field.model._meta.label}.{field.name}: {row.shadow!r} covers {found}; "
                "every row with an image needs its vector first (wait for the workers, or run "
                "`start` again to queue what is missing).")
        _swap(field, fingerprint(field, row.live), found.fingerprint)
        row.live, row.shadow = row.shadow, row.live
        row.switched_at = None if back else timezone.now()
        row.save()
        invalidate_on_commit(field.model)
    fill(field)
    return found


def rollback(field: ImageEmbeddingField) -> Coverage:
    """Switch back to the embedder live before the last `switch` (its vectors were kept)."""
    return switch(field, back=True)


def finish(field: ImageEmbeddingField) -> None:
    """End the rollout: delete ``field``'s shadow vectors and stop filling them. After a
    switch the previous embedder cannot be rolled back to any more; before one the
    candidate is abandoned. The rollout row goes once the live alias makes the vectors of
    the field's declared ``embedder`` (point the declared alias at the new model, then
    finish)."""
    with transaction.atomic(using=_primary(field)):
        row = (EmbedderRollout.objects.using(_primary(field)).select_for_update()
               .filter(**field_key(field)).first())
        if row is None:
            raise SwitchRefused("No embedder is being rolled out.")
        EmbeddingShadow.objects.using(_primary(field)).filter(**field_key(field)).delete()
        if fingerprint(field, row.live) == fingerprint(field, field.embedder):
            row.delete()
        else:
            row.shadow, row.switched_at = "", None
            row.save()


def _swap(field: ImageEmbeddingField, old: str, new: str) -> None:
    """Copy the column's vectors of fingerprint ``old`` (and failures) to the shadow table,
    then the shadow's vectors of ``new`` into the column, for each row's current image."""
    model = field.model
    connection = connections[_primary(field)]
    quote = connection.ops.quote_name
    table, pk = quote(model._meta.db_table), quote(model._meta.pk.column)
    column = {name: quote(model._meta.get_field(name).column) for name in (
        field.name, field.source, field.status_name, field.error_name, field.fingerprint_name,
        field.updated_at_name, *(field.aspect_name(a) for a in field.aspects))}
    shadow = quote(EmbeddingShadow._meta.db_table)
    source, vector = column[field.source], column[field.name]
    aspects_json = "jsonb_build_object({})".format(", ".join(
        f"%s, t.{column[field.aspect_name(a)]}::text" for a in field.aspects))
    key = field_key(field)
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {shadow} (model, field, object_id, fingerprint, source, vector, "
            f"aspects, error, updated_at) SELECT %s, %s, t.{pk}::text, %s, t.{source}, "
            f"t.{vector}, {aspects_json}, t.{column[field.error_name]}, %s FROM {table} t "
            f"WHERE t.{column[field.fingerprint_name]} = %s AND t.{source} <> '' "
            f"AND (t.{vector} IS NOT NULL OR t.{column[field.status_name]} = %s) "
            "ON CONFLICT (model, field, fingerprint, object_id) DO UPDATE SET "
            "source = EXCLUDED.source, vector = EXCLUDED.vector, aspects = EXCLUDED.aspects, "
            "error = EXCLUDED.error, updated_at = EXCLUDED.updated_at",
            [key["model"], key["field"], old, *field.aspects, now, old,
             EmbeddingStatus.FAILED])
        aspect_sets = "".join(
            f", {column[field.aspect_name(a)]} = (s.aspects ->> %s)::halfvec"
            for a in field.aspects)
        cursor.execute(
            f"UPDATE {table} t SET {vector} = s.vector, {column[field.fingerprint_name]} = %s, "
            f"{column[field.status_name]} = CASE WHEN s.vector IS NULL THEN %s ELSE %s END, "
            f"{column[field.error_name]} = s.error, {column[field.updated_at_name]} = %s"
            f"{aspect_sets} FROM {shadow} s WHERE s.model = %s AND s.field = %s "
            f"AND s.fingerprint = %s AND s.object_id = t.{pk}::text AND s.source = t.{source}",
            [new, EmbeddingStatus.FAILED, EmbeddingStatus.READY, now, *field.aspects,
             key["model"], key["field"], new])
