"""System checks: embedding columns must match the configured embedder."""

from typing import Any

from django.core import checks
from django.db.models import FileField

from visual_reco.embedders import build_embedder
from visual_reco.fields import embedded_models, embedding_fields


@checks.register(checks.Tags.models)
def check_embedding_fields(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E001: field dimensions differ from the embedder's; E002: bad source field;
    E003: the embedder cannot be built from the settings."""
    errors: list[checks.CheckMessage] = []
    try:
        dimensions = build_embedder().dimensions
    except Exception as exc:
        return [checks.Error(f"VISUAL_RECO['EMBEDDER'] cannot be built: {exc}",
                             id="visual_reco.E003")]
    for model in embedded_models():
        if app_configs is not None and model._meta.app_config not in app_configs:
            continue
        for field in embedding_fields(model):
            source = next((f for f in model._meta.fields if f.name == field.source), None)
            if not isinstance(source, FileField):
                errors.append(checks.Error(
                    f"source={field.source!r} is not an ImageField/FileField of "
                    f"{model.__name__}.", obj=field, id="visual_reco.E002"))
            if field.dimensions != dimensions:
                errors.append(checks.Error(
                    f"{model.__name__}.{field.name} stores {field.dimensions} dimensions but the "
                    f"configured embedder produces {dimensions}.",
                    hint=f"Set ImageEmbeddingField(dimensions={dimensions}), make a migration, "
                         "and reindex; or configure an embedder of the field's size.",
                    obj=field, id="visual_reco.E001"))
    return errors
