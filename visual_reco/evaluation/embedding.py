"""Decoding and embedding the images of an evaluation the way production uploads are, a
chunk at a time; bad images are recorded, never raised."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from visual_reco.aspects import compute_aspects
from visual_reco.embedders import get_embedder
from visual_reco.images import ImageError

CHUNK_SIZE = 32

# A chunk's vectors and its aspect vectors by name (`Embedder.embed_with_aspects`).
EmbedWithAspects = Callable[[list[Image.Image]], tuple[Any, dict[str, np.ndarray]]]


@dataclass
class Embeddings:
    """Vectors of the images that loaded (and their ``aspects`` vectors by name, rows as in
    ``vectors``), and the ones that did not."""

    paths: list[Path]
    vectors: np.ndarray
    errors: dict[Path, str] = field(default_factory=dict)
    seconds: float = 0.0
    model_load_seconds: float = 0.0
    aspects: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def index(self) -> dict[Path, int]:
        """Row of ``vectors`` for each embedded path."""
        return {path: i for i, path in enumerate(self.paths)}


def load_image(path: Path) -> Image.Image | ImageError:
    """The decoded image at ``path``, or the `ImageError` that says why it cannot be used."""
    try:
        with open(path, "rb") as handle:
            return get_embedder().decode(handle)
    except FileNotFoundError:
        return ImageError("The file does not exist.")
    except OSError as exc:
        return ImageError(f"The file cannot be read ({exc.strerror or exc}).")
    except ImageError as exc:
        return exc


def embed_paths(paths: Sequence[Path], *, chunk_size: int = CHUNK_SIZE,
                progress: bool = True, embed: EmbedWithAspects | None = None,
                aspects: Sequence[str] = ()) -> Embeddings:
    """Decode and embed ``paths`` with the configured embedder, ``chunk_size`` at a time.

    Only one chunk of decoded images is in memory at once. Images that cannot be read or
    embedded are skipped and their messages returned in ``errors``; nothing raises for a bad
    image. ``seconds`` covers decoding and embedding, not loading the model. ``aspects`` are
    computed as a worker does (`Embedder.embed_with_aspects`, from the same prepared
    arrays); ``embed`` replaces that (e.g. with the photo search's query embedding,
    `visual_reco.query_photos.embed_query_images_with_aspects`), returning both.
    """
    embedder = get_embedder()
    started = time.perf_counter()
    embedder.load()
    load_seconds = time.perf_counter() - started
    done: list[Path] = []
    parts: list[np.ndarray] = []
    aspect_parts: dict[str, list[np.ndarray]] = {name: [] for name in aspects}
    errors: dict[Path, str] = {}

    def embed_chunk(images: list[Image.Image]) -> tuple[Any, dict[str, np.ndarray]]:
        if embed is None:
            return embedder.embed_with_aspects(images, aspects)
        return embed(images)

    started = time.perf_counter()
    with tqdm(total=len(paths), desc="Embedding", unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), chunk_size):
            chunk = paths[start:start + chunk_size]
            images, names = [], []
            for path in chunk:
                image = load_image(path)
                if isinstance(image, ImageError):
                    errors[path] = str(image)
                else:
                    images.append(image)
                    names.append(path)
            vectors, found, failed = _embed_chunk(embed_chunk, images)
            for position, path in enumerate(names):
                if position in failed:
                    errors[path] = failed[position]
                else:
                    done.append(path)
                    parts.append(np.asarray(vectors[position], dtype=np.float32))
                    for name in aspects:
                        aspect_parts[name].append(found[position][name])
            bar.update(len(chunk))
            del images
    seconds = time.perf_counter() - started
    matrix = (np.stack(parts) if parts
              else np.zeros((0, embedder.dimensions), dtype=np.float32))
    found = {name: np.stack(rows).astype(np.float32) if rows
             else compute_aspects([], [name])[name] for name, rows in aspect_parts.items()}
    return Embeddings(done, matrix, errors, seconds, load_seconds, found)


def _embed_chunk(embed: EmbedWithAspects, images: list,
                 ) -> tuple[list, list[dict[str, np.ndarray]], dict[int, str]]:
    """Vectors for ``images`` (None where one failed), their aspect vectors by name (one
    dict per image) and the failures' messages by position."""
    if not images:
        return [], [], {}

    def split(vectors: Any, found: dict[str, np.ndarray]) -> tuple[list, list]:
        return list(vectors), [{name: rows[i] for name, rows in found.items()}
                               for i in range(len(images))]

    try:
        return *split(*embed(images)), {}
    except (ImageError, ValueError, OSError):
        pass
    # One image broke the batch: embed one by one to find it.
    vectors: list = []
    aspects: list[dict[str, np.ndarray]] = []
    failed: dict[int, str] = {}
    for position, image in enumerate(images):
        try:
            one, found = embed([image])
            vectors.append(one[0])
            aspects.append({name: rows[0] for name, rows in found.items()})
        except (ImageError, ValueError, OSError) as exc:
            vectors.append(None)
            aspects.append({})
            failed[position] = f"The image could not be embedded ({exc})."
    return vectors, aspects, failed
