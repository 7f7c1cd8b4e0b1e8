"""Which embedding fields exist.

Every `visual_reco.fields.ImageEmbeddingField` registers itself here when Django adds it to a
concrete model class (one copy per subclass of an abstract base; never the historical models
that migrations build). Everything that needs to know which fields exist asks this module:
the signal receivers, the pipeline, the checks, the queries and every surface.

A model may have several embedding fields; the first one declared is its default, used when
a caller names no ``field``. A field declared with ``product=`` (on a gallery image model with
a foreign key to the product) is also one of the product model's: after its own fields, so
that a product model without fields of its own has the gallery's as its default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import models

from visual_reco.conf import reco_settings

if TYPE_CHECKING:
    from visual_reco.fields import ImageEmbeddingField

_by_model: dict[type[models.Model], list[ImageEmbeddingField]] = {}


def register(field: ImageEmbeddingField) -> None:
    """Record ``field`` (already contributed to ``field.model``); a field of the same name
    registered earlier for a class of the same label is replaced."""
    model = field.model
    for known in list(_by_model):
        if known is not model and known._meta.label_lower == model._meta.label_lower:
            del _by_model[known]  # the same model defined again (tests, reloads)
    fields = [f for f in _by_model.get(model, []) if f.name != field.name]
    # Declaration order, which is not registration order: Django adds a model's own fields
    # before the copies of its abstract bases' fields.
    _by_model[model] = sorted([*fields, field], key=lambda f: f.creation_counter)


def embedding_fields(model: type[models.Model]) -> list[ImageEmbeddingField]:
    """The embedding fields of ``model``: its own and those of its multi-table parents
    (proxies have their concrete model's), in declaration order, the default first."""
    concrete = model._meta.concrete_model
    owners = [*reversed(concrete._meta.get_parent_list()), concrete]
    return [field for owner in owners for field in _by_model.get(owner, [])]


def gallery_fields(model: type[models.Model]) -> list[ImageEmbeddingField]:
    """The embedding fields of image models whose ``product=`` foreign key points to
    ``model`` (or to one of its multi-table parents), in declaration order."""
    concrete = model._meta.concrete_model
    owners = {concrete, *concrete._meta.get_parent_list()}
    found = [field for fields in _by_model.values() for field in fields
             if field.product is not None and field.model is field.model._meta.concrete_model
             and _product_of(field) in owners]
    return sorted(found, key=lambda f: f.creation_counter)


def _product_of(field: ImageEmbeddingField) -> type[models.Model] | None:
    """``field.product_model()``, None when ``product=`` names no foreign key (check
    ``visual_reco.E010`` reports it)."""
    try:
        return field.product_model()
    except ImproperlyConfigured:
        return None


def searchable_fields(model: type[models.Model]) -> list[ImageEmbeddingField]:
    """What searches of ``model`` may compare: its `embedding_fields`, then its
    `gallery_fields`."""
    return [*embedding_fields(model), *gallery_fields(model)]


def is_gallery(field: ImageEmbeddingField, model: type[models.Model]) -> bool:
    """Whether ``field`` serves ``model`` through a gallery: its vectors are on image rows
    (a search of the image model itself compares its rows as any other model's)."""
    return field.product is not None and field not in embedding_fields(model)


def gallery_products(model: type[models.Model]) -> list[type[models.Model]]:
    """The product models whose galleries ``model``'s rows are (its fields' ``product=``)."""
    found = [_product_of(field) for field in embedding_fields(model)
             if field.product is not None]
    return list(dict.fromkeys(m._meta.concrete_model for m in found if m is not None))


def get_embedding_field(model: type[models.Model],
                        name: str | None = None) -> ImageEmbeddingField:
    """The embedding field ``name`` of ``model``, or its default (first) one for None, among
    `searchable_fields` (its own fields come first: one of them shadows a gallery field of
    the same name).

    Raises `ImproperlyConfigured` naming the fields that exist when there is no such field.
    """
    fields = searchable_fields(model)
    if not fields:
        raise ImproperlyConfigured(f"{model._meta.label} has no ImageEmbeddingField.")
    if name is None:
        return fields[0]
    for field in fields:
        if field.name == name:
            return field
    raise ImproperlyConfigured(
        f"{model._meta.label} has no ImageEmbeddingField {name!r}; its embedding fields are "
        f"{', '.join(f.name for f in fields)}.")


def selected_fields(model: type[models.Model],
                    name: str | None = None) -> list[ImageEmbeddingField]:
    """The field ``name`` of ``model``'s own `embedding_fields` as a list, or all of them for
    None: what the pipeline works on (reindexing a model means all of its fields; a gallery
    field is reindexed on its image model). Raises `ImproperlyConfigured` for another name.
    """
    fields = embedding_fields(model)
    if name is None:
        return fields
    found = [field for field in fields if field.name == name]
    if not found:
        names = ", ".join(f.name for f in fields) or "none"
        raise ImproperlyConfigured(
            f"{model._meta.label} has no ImageEmbeddingField {name!r} of its own; its "
            f"embedding fields are {names}.")
    return found


def embedded_models(*, include_proxies: bool = False) -> list[type[models.Model]]:
    """Every installed model with an embedding field (proxies only when asked)."""
    return [model for model in apps.get_models()
            if (include_proxies or not model._meta.proxy) and embedding_fields(model)]


def product_models() -> list[type[models.Model]]:
    """The models a search could serve: those with an embedding field that is not a
    gallery's, and those with a gallery."""
    return [model for model in apps.get_models()
            if not model._meta.proxy and (
                any(field.product is None for field in embedding_fields(model))
                or gallery_fields(model))]


def product_model() -> type[models.Model]:
    """The model the API and photo search serve: ``PRODUCT_MODEL``, or the only embedded one.

    Raises `ImproperlyConfigured` (also reported by check ``visual_reco.E005``) when the
    setting names no embedded model, or when it is unset and several models are embedded.
    """
    label = reco_settings.PRODUCT_MODEL
    if label:
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):
            raise ImproperlyConfigured(
                f"VISUAL_RECO['PRODUCT_MODEL'] = {label!r} is not an installed model "
                "('app_label.ModelName').") from None
        if not searchable_fields(model):
            raise ImproperlyConfigured(
                f"VISUAL_RECO['PRODUCT_MODEL'] = {label!r} has no ImageEmbeddingField.")
        return model
    candidates = product_models()
    if len(candidates) != 1:
        names = ", ".join(m._meta.label for m in candidates) or "none"
        raise ImproperlyConfigured(
            f"Set VISUAL_RECO['PRODUCT_MODEL'] to the model the API serves: {len(candidates)} "
            f"models have an ImageEmbeddingField or a gallery of them ({names}).")
    return candidates[0]
