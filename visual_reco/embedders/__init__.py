"""Embedder backends and the process-wide instance built from settings."""

from __future__ import annotations

import threading

from django.utils.module_loading import import_string

from visual_reco.conf import reco_settings
from visual_reco.embedders.base import Embedder

__all__ = ["Embedder", "get_embedder", "reset_embedder"]

_lock = threading.Lock()
_embedder: Embedder | None = None


def build_embedder(config: dict | None = None) -> Embedder:
    """Instantiate the embedder described by ``config`` (default: the EMBEDDER setting)."""
    config = config or reco_settings.EMBEDDER
    backend = import_string(config["BACKEND"])
    return backend(**config.get("OPTIONS", {}))


def get_embedder() -> Embedder:
    """The embedder for this process, built once from the EMBEDDER setting."""
    global _embedder
    if _embedder is None:
        with _lock:
            if _embedder is None:
                _embedder = build_embedder()
    return _embedder


def reset_embedder() -> None:
    """Drop the cached embedder (called when ``VISUAL_RECO`` changes)."""
    global _embedder
    with _lock:
        _embedder = None
