"""The interface every embedder implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
from PIL import Image


class Embedder(ABC):
    """Turns images into L2-normalised float32 vectors.

    ``fingerprint`` identifies architecture, weights and preprocessing: vectors with
    different fingerprints are not comparable. ``dimensions`` and ``fingerprint`` must be
    cheap (no model load) because system checks and the admin read them.
    """

    fingerprint: str
    dimensions: int

    @abstractmethod
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Return an ``(len(images), dimensions)`` float32 array of unit vectors."""

    def load(self) -> None:  # noqa: B027 - optional hook
        """Load the model now (workers call it once per process, after fork)."""


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Scale each row to unit length (rows of zeros stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
