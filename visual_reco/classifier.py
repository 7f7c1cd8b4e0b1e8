"""An optional trained category head: a small Keras classifier on the frozen embeddings.

``manage.py visual_reco_train_classifier`` trains it on the catalog's ready embeddings and
saves it next to a JSON file naming its labels and the embedder fingerprint; the search uses
it instead of the neighbour vote while that fingerprint matches the configured embedder.
Its layers' weights are saved beside it too (``.npz``), and searches run them in numpy
(`DenseHead`), so a web process that embeds search photos in a worker never imports
TensorFlow; a head saved without them is loaded with Keras.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.db import models
from django.utils import timezone

from visual_reco.categories import CategoryPrediction, category_field
from visual_reco.choices import EmbeddingStatus
from visual_reco.conf import reco_settings
from visual_reco.embedders import get_embedder
from visual_reco.query import to_array
from visual_reco.registry import get_embedding_field, is_gallery
from visual_reco.rollout import live_embedder

_lock = threading.Lock()
_loaded: dict[Path, tuple[float, CategoryClassifier]] = {}


@dataclass
class CategoryClassifier:
    """A trained head: Keras model plus the label of each output."""

    network: Any
    labels: list[str]
    fingerprint: str

    def predict(self, vector: np.ndarray) -> CategoryPrediction:
        """Class probabilities for one embedding."""
        probabilities = np.asarray(self.network(np.asarray(vector, np.float32)[None],
                                                training=False))[0]
        order = np.argsort(-probabilities)
        scores = {self.labels[i]: float(probabilities[i]) for i in order}
        best = self.labels[order[0]]
        return CategoryPrediction(best, scores[best], "classifier", scores)


@dataclass
class TrainingReport:
    """What `train_classifier` produced."""

    path: Path
    classes: int
    examples: int
    validation_accuracy: float


def classifier_path(model: type[models.Model], field: str | None = None) -> Path:
    """Where the classifier for ``model``'s embedding ``field`` is saved (``CLASSIFIER_PATH``,
    or ``<cache dir>/classifiers/<app>.<model>.<field>.keras``)."""
    if reco_settings.CLASSIFIER_PATH:
        return Path(reco_settings.CLASSIFIER_PATH)
    name = get_embedding_field(model, field).name
    return reco_settings.cache_dir / "classifiers" / f"{model._meta.label_lower}.{name}.keras"


def _metadata_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _weights_path(path: Path) -> Path:
    return path.with_suffix(".npz")


@dataclass(frozen=True)
class DenseHead:
    """The trained head in numpy: ``Dense(relu)``, (dropout: nothing at inference),
    ``Dense(softmax)``, called as the Keras model is."""

    hidden_kernel: np.ndarray
    hidden_bias: np.ndarray
    output_kernel: np.ndarray
    output_bias: np.ndarray

    def __call__(self, batch: np.ndarray, training: bool = False) -> np.ndarray:
        """Class probabilities of each row of ``batch``."""
        hidden = np.maximum(batch @ self.hidden_kernel + self.hidden_bias, 0.0)
        logits = hidden @ self.output_kernel + self.output_bias
        exponents = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exponents / exponents.sum(axis=1, keepdims=True)

    @classmethod
    def load(cls, path: Path) -> DenseHead:
        """From the ``.npz`` `train_classifier` wrote (the network's weights, in order)."""
        with np.load(path) as arrays:
            return cls(*(arrays[f"arr_{i}"].astype(np.float32) for i in range(4)))


def training_data(model: type[models.Model],
                  field: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ready embeddings of ``field`` (default: the model's first) made by its live embedder
    (`visual_reco.rollout`), and their categories (for a gallery field, every photo's
    vector with its product's category)."""
    embedding = get_embedding_field(model, field)
    name = category_field(model)
    if name is None:
        raise ValueError(f"{model._meta.label} has no field {reco_settings.CATEGORY_FIELD!r}")
    rows = model._base_manager
    if is_gallery(embedding, model):  # each photo of a gallery, labelled by its product
        rows = embedding.model._base_manager
        name = f"{embedding.product_key().name}__{name}"
    live = get_embedder(live_embedder(embedding))
    rows = rows.filter(**{
        embedding.status_name: EmbeddingStatus.READY,
        embedding.fingerprint_name: embedding.fingerprint_for(live),
    }).exclude(**{name: ""}).values_list(embedding.attname, name)
    vectors, labels = [], []
    for vector, label in rows.iterator(chunk_size=1000):
        vectors.append(to_array(vector))
        labels.append(label)
    return np.asarray(vectors, dtype=np.float32), np.asarray(labels)


def train_classifier(model: type[models.Model], *, field: str | None = None, epochs: int = 60,
                     hidden: int = 256, validation: float = 0.2, seed: int = 0) -> TrainingReport:
    """Train on ``field``'s vectors, evaluate on a held-out split, then fit on everything
    and save."""
    import keras

    embedding = get_embedding_field(model, field)
    vectors, labels = training_data(model, embedding.name)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError("Need at least two categories with ready embeddings to train.")
    targets = np.searchsorted(classes, labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(vectors))
    cut = int(len(order) * (1 - validation))
    keras.utils.set_random_seed(seed)

    def build():
        network = keras.Sequential([
            keras.Input((vectors.shape[1],)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(len(classes), activation="softmax"),
        ])
        network.compile(optimizer=keras.optimizers.Adam(1e-3),
                        loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return network

    held_out = build()
    held_out.fit(vectors[order[:cut]], targets[order[:cut]], epochs=epochs, batch_size=32,
                 verbose=0)
    _, accuracy = held_out.evaluate(vectors[order[cut:]], targets[order[cut:]], verbose=0)
    network = build()
    network.fit(vectors, targets, epochs=epochs, batch_size=32, verbose=0)
    path = classifier_path(model, embedding.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The weights first: a loader that sees the new model file finds its weights current.
    with open(_weights_path(path), "wb") as handle:
        np.savez(handle, *network.get_weights())
    network.save(path)
    _metadata_path(path).write_text(json.dumps({
        "labels": classes, "fingerprint": get_embedder(live_embedder(embedding)).fingerprint,
        "examples": len(vectors), "validation_accuracy": float(accuracy),
        "trained_at": timezone.now().isoformat(),
    }, indent=2))
    return TrainingReport(path, len(classes), len(vectors), float(accuracy))


def _load_network(path: Path) -> Any:
    """The head saved at ``path``: in numpy from its weights when they were saved with it
    (no TensorFlow), else the Keras model."""
    weights = _weights_path(path)
    if weights.exists() and weights.stat().st_mtime <= path.stat().st_mtime:
        return DenseHead.load(weights)
    import keras

    return keras.saving.load_model(path)


def load_classifier(model: type[models.Model],
                    field: str | None = None) -> CategoryClassifier | None:
    """The saved classifier for ``model``'s embedding ``field`` if it exists and matches the
    field's current embedder."""
    embedding = get_embedding_field(model, field)
    path = classifier_path(model, embedding.name)
    meta_path = _metadata_path(path)
    if not path.exists() or not meta_path.exists():
        return None
    mtime = path.stat().st_mtime
    with _lock:
        cached = _loaded.get(path)
        if cached is None or cached[0] != mtime:
            meta = json.loads(meta_path.read_text())
            classifier = CategoryClassifier(_load_network(path), meta["labels"],
                                            meta["fingerprint"])
            _loaded[path] = cached = (mtime, classifier)
    classifier = cached[1]
    if classifier.fingerprint != get_embedder(live_embedder(embedding)).fingerprint:
        return None
    return classifier
