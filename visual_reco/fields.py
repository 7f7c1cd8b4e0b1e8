"""`ImageEmbeddingField`: a pgvector ``halfvec`` column computed from an image field."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import models
from django.db.migrations.state import StateApps
from pgvector.django import HalfVectorField, HnswIndex

from visual_reco import registry
from visual_reco.aspects import get_aspect, signature
from visual_reco.choices import EmbeddingStatus
from visual_reco.embedders import DEFAULT_EMBEDDER, Embedder

DEFAULT_ASPECTS = ("colour",)


class ImageEmbeddingField(HalfVectorField):
    """The embedding of the image in ``source``, kept up to date by Celery workers.

    ``embedder`` names the model that computes it: ``"default"`` is
    ``VISUAL_RECO["EMBEDDER"]``, other names are keys of ``VISUAL_RECO["EMBEDDERS"]``.
    Adding it to a model also adds, next to it:

    - ``<name>_status``: `EmbeddingStatus` (pending, ready, failed, stale, no_image),
    - ``<name>_error``: why the last attempt failed, for shop staff,
    - ``<name>_fingerprint``: the embedder (and aspect versions) that produced the vector,
    - ``<name>_updated_at``: when the vector was written (or the row was last queued),
    - ``<name>_<aspect>`` for each of ``aspects`` (`visual_reco.aspects`; default
      ``("colour",)``, ``()`` for none): a small ``halfvec`` computed by the same task from
      the same prepared image, written and cleared with the vector,

    and an HNSW cosine index on the vector and on each aspect. The column is ``halfvec``
    because HNSW indexes ``vector`` only up to 2,000 dimensions and CNN features are often
    2,048. A model may have several; each registers itself in `visual_reco.registry`.

    ``product`` names a foreign key of the model to the product it shows, for a gallery
    (``ProductImage(product=ForeignKey(Product), image=ImageField)``): the field is then
    also one of the product model's, whose searches return products, each once, ranked by
    its best image (`visual_reco.gallery`). The rows are embedded like any others.
    """

    description = "Image embedding (pgvector halfvec) computed from an image field"

    def __init__(self, *args: Any, source: str, embedder: str = DEFAULT_EMBEDDER,
                 dimensions: int = 2048, hnsw_m: int = 16, hnsw_ef_construction: int = 64,
                 aspects: Sequence[str] = DEFAULT_ASPECTS, with_companions: bool = True,
                 product: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("null", True)
        kwargs.setdefault("blank", True)
        kwargs.setdefault("editable", False)
        if isinstance(aspects, str):
            raise ValueError(f"aspects must be a sequence of names, e.g. ({aspects!r},)")
        self.source = source
        self.product = product
        self.embedder = embedder
        self.aspects: tuple[str, ...] = tuple(dict.fromkeys(aspects))
        for aspect in self.aspects:
            get_aspect(aspect)  # an unknown name fails here, where the model is defined
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        # Migrations list the companion fields and the index themselves, so the field
        # rebuilt from a migration must not add them a second time.
        self.with_companions = with_companions
        super().__init__(*args, dimensions=dimensions, **kwargs)

    def deconstruct(self) -> tuple[Any, Any, Any, Any]:
        name, _, args, kwargs = super().deconstruct()
        kwargs["source"] = self.source
        if self.embedder != DEFAULT_EMBEDDER:
            kwargs["embedder"] = self.embedder
        if self.aspects != DEFAULT_ASPECTS:
            kwargs["aspects"] = self.aspects
        if self.product is not None:
            kwargs["product"] = self.product
        kwargs["with_companions"] = False
        return name, "visual_reco.fields.ImageEmbeddingField", args, kwargs

    def companion_name(self, suffix: str) -> str:
        """The attribute name of a companion field, e.g. ``image_embedding_status``."""
        return f"{self.name}_{suffix}"

    @property
    def status_name(self) -> str:
        """Name of the status field."""
        return self.companion_name("status")

    @property
    def error_name(self) -> str:
        """Name of the error-message field."""
        return self.companion_name("error")

    @property
    def fingerprint_name(self) -> str:
        """Name of the embedder-fingerprint field."""
        return self.companion_name("fingerprint")

    @property
    def updated_at_name(self) -> str:
        """Name of the timestamp field."""
        return self.companion_name("updated_at")

    def aspect_name(self, aspect: str) -> str:
        """Name of the field holding one of this field's ``aspects``, e.g.
        ``image_embedding_colour``."""
        if aspect not in self.aspects:
            raise ValueError(f"{self.name} has no aspect {aspect!r}; its aspects are "
                             f"{self.aspects}")
        return self.companion_name(aspect)

    @property
    def colour_name(self) -> str:
        """Name of the colour-vector field (`ValueError` when the field has no colour)."""
        return self.aspect_name("colour")

    @property
    def colour_attname(self) -> str | None:
        """The attribute holding a row's colour vector, None when the field has no colour
        aspect (what shows colour names and scores colour, or leaves them out)."""
        if "colour" not in self.aspects:
            return None
        return self.model._meta.get_field(self.colour_name).attname

    def fingerprint_for(self, embedder: Embedder) -> str:
        """What ``<name>_fingerprint`` holds for vectors (and aspects) computed now by
        ``embedder``: its fingerprint plus the versions of this field's aspects, e.g.
        ``xception-299-avg:0123456789ab+colour.1``. A row holding anything else is stale."""
        return embedder.fingerprint + signature(self.aspects)

    def state(self, status: str, *, vector: Any = None,
              aspect_vectors: Mapping[str, Any] | None = None, fingerprint: str = "",
              error: str = "", at: datetime | None = None,
              keep_vector: bool = False) -> dict[str, Any]:
        """The column values of one embedding state, for ``update(**...)`` or ``setattr``.

        The only place that spells out the status columns. ``aspect_vectors`` are the
        values of the field's aspects by name (missing ones are cleared with the vector).
        ``keep_vector`` leaves the vector, its aspects and its fingerprint as they are (a
        row queued again keeps being recommended until its new vector replaces the old one).
        """
        values: dict[str, Any] = {self.status_name: status, self.error_name: error,
                                  self.updated_at_name: at}
        if not keep_vector:
            values[self.attname] = vector
            values[self.fingerprint_name] = fingerprint
            for aspect in self.aspects:
                values[self.aspect_name(aspect)] = (aspect_vectors or {}).get(aspect)
        return values

    def source_field(self) -> models.FileField:
        """The image field this embedding is computed from."""
        try:
            return self.model._meta.get_field(self.source)
        except FieldDoesNotExist:
            raise ImproperlyConfigured(
                f"{self.model.__name__}.{self.name}: source field {self.source!r} does not exist"
            ) from None

    def product_key(self) -> models.ForeignKey | None:
        """The foreign key to the product, for a gallery field (``product=``); else None."""
        if self.product is None:
            return None
        try:
            key = self.model._meta.get_field(self.product)
        except FieldDoesNotExist:
            key = None
        if not isinstance(key, models.ForeignKey):
            raise ImproperlyConfigured(
                f"{self.model.__name__}.{self.name}: product={self.product!r} is not a "
                "ForeignKey of the model.")
        return key

    def product_model(self) -> type[models.Model] | None:
        """The product model a gallery field's rows belong to (None for a field on the
        product itself)."""
        key = self.product_key()
        return None if key is None else key.related_model

    def has_image(self) -> models.Q:
        """Rows whose source field names a file."""
        return ~models.Q(**{self.source: ""}) & models.Q(**{f"{self.source}__isnull": False})

    def contribute_to_class(self, cls: type[models.Model], name: str,
                            private_only: bool = False) -> None:
        super().contribute_to_class(cls, name, private_only=private_only)
        if cls._meta.abstract:
            return
        if self.with_companions:
            self._add_companions(cls, name)
        # Not a migration's historical model (a model of another registry, such as the
        # benchmarks' unmanaged ones, is searched like the shop's).
        if not isinstance(cls._meta.apps, StateApps):
            registry.register(self)

    def _add_companions(self, cls: type[models.Model], name: str) -> None:
        verbose = name.replace("_", " ")
        companions = {
            "status": models.CharField(
                f"{verbose} status", max_length=16, choices=EmbeddingStatus.choices,
                default=EmbeddingStatus.NO_IMAGE, db_index=True, editable=False),
            "error": models.TextField(f"{verbose} error", blank=True, default="", editable=False),
            "fingerprint": models.CharField(
                f"{verbose} fingerprint", max_length=128, blank=True, default="", editable=False),
            "updated_at": models.DateTimeField(f"{verbose} updated at", null=True, blank=True,
                                               editable=False),
        }
        for aspect in self.aspects:
            companions[aspect] = HalfVectorField(
                f"{verbose} {aspect}", dimensions=get_aspect(aspect).dimensions, null=True,
                blank=True, editable=False)
        for suffix, field in companions.items():
            cls.add_to_class(self.companion_name(suffix), field)
        indexes = [self.hnsw_index(cls, name),
                   *(self.hnsw_index(cls, self.aspect_name(a)) for a in self.aspects)]
        # A new list: Meta.indexes may be shared with a parent. Migrations read original_attrs.
        cls._meta.indexes = [*cls._meta.indexes, *indexes]
        cls._meta.original_attrs["indexes"] = cls._meta.indexes

    def hnsw_index(self, cls: type[models.Model], name: str) -> HnswIndex:
        """The HNSW cosine index for the column of field ``name`` (this one or an aspect's),
        named from the model and field, with this field's build parameters."""
        digest = hashlib.sha1(f"{cls._meta.label_lower}.{name}".encode()).hexdigest()[:10]
        return HnswIndex(name=f"vr_{digest}_hnsw", fields=[name], m=self.hnsw_m,
                         ef_construction=self.hnsw_ef_construction,
                         opclasses=["halfvec_cosine_ops"])
