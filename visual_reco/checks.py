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


PROCESS_LOCAL_CACHES = ("django.core.cache.backends.locmem.LocMemCache",
                        "django.core.cache.backends.dummy.DummyCache")


@checks.register(checks.Tags.caches)
def check_similar_cache(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E004: ``SIMILAR_CACHE`` names no cache; W001: it names a per-process cache."""
    from django.conf import settings

    from visual_reco.conf import reco_settings

    alias = reco_settings.SIMILAR_CACHE
    if not alias:
        return []
    config = settings.CACHES.get(alias)
    if config is None:
        return [checks.Error(f"VISUAL_RECO['SIMILAR_CACHE'] = {alias!r} is not in CACHES.",
                             id="visual_reco.E004")]
    if config.get("BACKEND") in PROCESS_LOCAL_CACHES:
        return [checks.Warning(
            f"VISUAL_RECO['SIMILAR_CACHE'] = {alias!r} is {config['BACKEND']}: each process "
            "keeps its own copy, so new embeddings written by the workers do not reach it and "
            "similar products stay stale for up to SIMILAR_CACHE_TIMEOUT seconds.",
            hint="Use a cache all processes share (Redis, Memcached, the database cache).",
            id="visual_reco.W001")]
    return []
