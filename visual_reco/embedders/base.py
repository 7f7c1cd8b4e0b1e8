"""The interface every embedder implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import IO

import numpy as np
from PIL import Image

from visual_reco.images import open_image


class Embedder(ABC):
    """Turns images into L2-normalised float32 vectors.

    ``fingerprint`` identifies architecture, weights and preprocessing: vectors with
    different fingerprints are not comparable. ``dimensions`` and ``fingerprint`` must be
    cheap (no model load) because system checks and the admin read them.
    """

    fingerprint: str
    dimensions: int
    # Whether uploads are turned upright by their EXIF tag before `embed` sees them.
    exif_orientation: bool = True

    def decode(self, fileobj: IO[bytes], *,
               full_decode_limits: Mapping[str, int | None] | None = None) -> Image.Image:
        """Decode an upload for this embedder (`visual_reco.images.open_image` with its
        EXIF rule); raises `visual_reco.images.ImageError` for a file it cannot use."""
        return open_image(fileobj, exif_orientation=self.exif_orientation,
                          full_decode_limits=full_decode_limits)

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
