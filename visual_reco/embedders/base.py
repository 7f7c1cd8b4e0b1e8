"""The interface every embedder implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import IO

import numpy as np
from PIL import Image

from visual_reco.aspects import compute_aspects
from visual_reco.images import open_image
from visual_reco.preprocessing import fit_square

# The side of the square the default `Embedder.prepare` fits images into, for the aspects of
# an embedder that does not say what its model sees (Xception's input size).
PREPARE_SIZE = 299


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

    def prepare(self, image: Image.Image) -> np.ndarray:
        """The square RGB array (HxWx3 uint8) the model sees for ``image``, which the aspects
        (`visual_reco.aspects`) are computed from. Default: the image padded with white into
        `PREPARE_SIZE` pixels; an embedder whose model sees something else overrides it."""
        return fit_square(image, PREPARE_SIZE)

    def embed_with_aspects(self, images: Sequence[Image.Image], aspects: Sequence[str],
                           ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """`embed` plus the aspect vectors ``aspects`` of each image: the vectors and
        ``{name: (len(images), aspect dimensions) float32}``, rows in the order of ``images``.

        This default prepares each image a second time for the aspects; an embedder that
        prepares images itself overrides it to compute them from the same arrays.
        """
        vectors = self.embed(images)
        if not aspects:
            return vectors, {}
        return vectors, compute_aspects([self.prepare(image) for image in images], aspects)

    def load(self) -> None:  # noqa: B027 - optional hook
        """Load the model now (workers call it once per process, after fork)."""


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Scale each row to unit length (rows of zeros stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
