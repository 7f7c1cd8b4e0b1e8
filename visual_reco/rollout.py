"""Which embedder serves each embedding field: the live alias and the shadow one.

A field's column holds the vectors of one embedder, its *live* alias: the field's declared
``embedder`` until `visual_reco.model_switch` switches it to another, as recorded in
`visual_reco.models.EmbedderRollout`. While an embedder is rolled out, workers also write
the vectors of a *shadow* alias into `visual_reco.models.EmbeddingShadow`.

Whatever embeds for a field asks `live_embedder` (search photos, the workers, the sweep),
reading the row each time: one primary-key lookup, so that every process follows a switch
at once and a search photo is never embedded by another model than the column's.
The models are looked up in the app registry because `visual_reco.jobs` imports this
module while the app loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connections, models
from django.db.models import OuterRef, QuerySet
from django.db.models.functions import Cast

if TYPE_CHECKING:
    from visual_reco.fields import ImageEmbeddingField


@dataclass(frozen=True)
class Aliases:
    """The embedder aliases of one field: ``live`` fills the column, ``shadow`` (``""``
    for none) the shadow table."""

    live: str
    shadow: str = ""


def rollout_model() -> type[models.Model]:
    """`visual_reco.models.EmbedderRollout`."""
    return apps.get_model("visual_reco", "EmbedderRollout")


def shadow_model() -> type[models.Model]:
    """`visual_reco.models.EmbeddingShadow`."""
    return apps.get_model("visual_reco", "EmbeddingShadow")


def field_key(field: ImageEmbeddingField) -> dict[str, str]:
    """How the rollout and shadow tables name ``field``: its model's label and its name."""
    return {"model": field.model._meta.label_lower, "field": field.name}


def shadow_of(field: ImageEmbeddingField, fingerprint: str) -> QuerySet:
    """The shadow vector of ``fingerprint`` of the outer row's current image (a subquery
    for ``Exists``): shadow rows of deleted products or of a replaced image never match."""
    return shadow_model()._base_manager.filter(
        **field_key(field), fingerprint=fingerprint, source=OuterRef(field.source),
        object_id=Cast(OuterRef("pk"), output_field=models.CharField()))


def aliases(field: ImageEmbeddingField, *, lock: bool = False,
            using: str | None = None) -> Aliases:
    """The live and shadow aliases of ``field``, read now. ``lock`` (inside a transaction)
    holds a share lock on the rollout row until it ends, so a switch waits for what is
    written under it: a worker's vectors go where the aliases said when they are stored."""
    table = rollout_model()
    if lock:  # FOR SHARE: workers do not wait for each other, a switch (FOR UPDATE) waits
        connection = connections[using or DEFAULT_DB_ALIAS]
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT live, shadow FROM "
                           f"{connection.ops.quote_name(table._meta.db_table)} "
                           "WHERE model = %s AND field = %s FOR SHARE",
                           [field.model._meta.label_lower, field.name])
            found = cursor.fetchone()
    else:
        found = (table._base_manager.using(using).filter(**field_key(field))
                 .values_list("live", "shadow").first())
    return Aliases(*found) if found else Aliases(field.embedder)


def live_embedder(field: ImageEmbeddingField, using: str | None = None) -> str:
    """The alias whose vectors ``field``'s column holds: what new uploads and search photos
    are embedded with."""
    return aliases(field, using=using).live
