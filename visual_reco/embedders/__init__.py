"""Embedders by alias: ``"default"`` is ``VISUAL_RECO["EMBEDDER"]``, others are entries of
``VISUAL_RECO["EMBEDDERS"]``. Each process builds an alias once and keeps it until the
settings change."""

from __future__ import annotations

import threading
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from visual_reco.conf import reco_settings
from visual_reco.embedders.base import Embedder

__all__ = ["DEFAULT_EMBEDDER", "Embedder", "build_embedder", "embedder_config", "get_embedder",
           "reset_embedders"]

DEFAULT_EMBEDDER = "default"

_lock = threading.Lock()
_embedders: dict[str, Embedder] = {}


def embedder_config(alias: str = DEFAULT_EMBEDDER) -> dict[str, Any]:
    """The ``{"BACKEND": ..., "OPTIONS": ...}`` configuration of ``alias``."""
    if alias == DEFAULT_EMBEDDER:
        return reco_settings.EMBEDDER
    try:
        return reco_settings.EMBEDDERS[alias]
    except KeyError:
        raise ImproperlyConfigured(
            f"No embedder {alias!r}: add it to VISUAL_RECO['EMBEDDERS'] (known: "
            f"{', '.join([DEFAULT_EMBEDDER, *reco_settings.EMBEDDERS])}).") from None


def build_embedder(config: dict[str, Any] | None = None, *,
                   alias: str = DEFAULT_EMBEDDER) -> Embedder:
    """Instantiate the embedder described by ``config`` (default: the one of ``alias``)."""
    config = config or embedder_config(alias)
    backend = import_string(config["BACKEND"])
    return backend(**config.get("OPTIONS", {}))


def get_embedder(alias: str = DEFAULT_EMBEDDER) -> Embedder:
    """The embedder ``alias`` of this process, built once from the settings."""
    embedder = _embedders.get(alias)
    if embedder is None:
        with _lock:
            embedder = _embedders.get(alias)
            if embedder is None:
                embedder = _embedders[alias] = build_embedder(alias=alias)
    return embedder


def reset_embedders() -> None:
    """Drop every built embedder (the settings changed)."""
    with _lock:
        _embedders.clear()


def _reset_on_change(*, setting: str, **kwargs: Any) -> None:
    if setting == "VISUAL_RECO":
        reset_embedders()


setting_changed.connect(_reset_on_change, dispatch_uid="visual_reco.embedders.reset")
