"""The Keras backbone run by the LiteRT (TFLite) interpreter: no TensorFlow in the process.

A process that only embeds (a Celery worker, or a web process that embeds search photos)
loads in a fraction of a second and holds a fraction of the memory of the same model in
TensorFlow (docs/BENCHMARKS.md "Lighter embedding processes"). The model file is converted
from the Keras backbone once (`KerasApplicationEmbedder.export_litert`, which needs
TensorFlow): by ``manage.py visual_reco_export_litert`` on a build server, or by the first
process that loads the embedder where TensorFlow is installed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from visual_reco.conf import reco_settings
from visual_reco.embedders.keras import LITERT_QUANTIZATIONS, KerasApplicationEmbedder
from visual_reco.embedders.weights import WeightsError, file_lock


class LiteRTEmbedder(KerasApplicationEmbedder):
    """`KerasApplicationEmbedder`'s backbone, options and vectors, run by ``ai-edge-litert``
    (the extra ``visual-reco[litert]``) with XNNPACK on ``threads`` threads (None: every
    core).

    ``quantization="none"`` runs the float32 model: its vectors are the Keras ones to
    float32 rounding (cosine >= 0.999 with them), so it shares their fingerprint and one
    index serves processes of both kinds. ``"dynamic_int8"`` stores the weights as int8
    (smaller, faster, cosine about 0.998 with the float32 vectors), which makes other vectors:
    it has a fingerprint of its own. ``model_file`` is the converted model (default: in
    ``CACHE_DIR``, named by the fingerprint). ``precision`` is accepted for options shared
    with the Keras embedder, but only float32 (or "auto") runs here.
    """

    def __init__(self, *args, quantization: str = "none", threads: int | None = None,
                 model_file: str | Path | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.precision == "bfloat16":
            raise ValueError("LiteRTEmbedder runs float32; use quantization='dynamic_int8' "
                             "for a smaller, faster model")
        if quantization not in LITERT_QUANTIZATIONS:
            raise ValueError(
                f"quantization must be one of {LITERT_QUANTIZATIONS}, not {quantization!r}")
        self.quantization = quantization
        self.threads = threads
        self._model_file = Path(model_file).expanduser() if model_file else None

    def __repr__(self) -> str:
        return f"<LiteRTEmbedder {self.fingerprint}>"

    @property
    def fingerprint(self) -> str:
        """The Keras embedder's fingerprint, with ``+int8`` for int8 weights."""
        keras_fingerprint = super().fingerprint
        return keras_fingerprint if self.quantization == "none" else f"{keras_fingerprint}+int8"

    @property
    def compute_precision(self) -> str:
        """Always float32 (int8 weights dequantised on the fly)."""
        return "float32"

    @property
    def model_file(self) -> Path:
        """Where the converted model is (or will be) kept."""
        if self._model_file is not None:
            return self._model_file
        name = self.fingerprint.replace(":", "-").replace("+", "-")
        return reco_settings.cache_dir / "litert" / f"{name}.tflite"

    def export(self) -> Path:
        """Convert the Keras backbone into `model_file` (needs TensorFlow); returns it."""
        return self.export_litert(self.model_file, self.quantization)

    def _build(self):
        path = self.model_file
        if not path.exists():
            with file_lock(path.with_suffix(".lock")):
                if not path.exists():
                    self._export_or_explain(path)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as error:
            raise WeightsError("LiteRTEmbedder needs the ai-edge-litert package: "
                               "pip install 'visual-reco[litert]'") from error
        interpreter = Interpreter(model_path=str(path),
                                  num_threads=self.threads or os.cpu_count() or 1)
        return _Runner(interpreter, self.input_size), _unchanged

    def _export_or_explain(self, path: Path) -> None:
        try:
            import tensorflow  # noqa: F401 - only to tell which message applies
        except ImportError:
            raise WeightsError(
                f"No LiteRT model at {path}, and no TensorFlow here to convert one: run "
                "`manage.py visual_reco_export_litert` where TensorFlow is installed, with "
                "the same VISUAL_RECO settings, and copy its CACHE_DIR/litert here.") from None
        self.export()


def _unchanged(pixels: np.ndarray) -> np.ndarray:
    # The exported model scales its input itself.
    return pixels


class _Runner:
    """One interpreter, one image per call: memory stays that of a single image's
    activations, and batching gains nothing measurable on XNNPACK here."""

    def __init__(self, interpreter, input_size: int) -> None:
        self._interpreter = interpreter
        self._input = interpreter.get_input_details()[0]["index"]
        self._output = interpreter.get_output_details()[0]["index"]
        interpreter.resize_tensor_input(self._input, (1, input_size, input_size, 3))
        interpreter.allocate_tensors()
        # An interpreter is not thread-safe; web processes serve searches from threads.
        self._lock = threading.Lock()

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        """The pooled features of each image of ``batch`` (float32, input scale 0-255)."""
        rows = []
        with self._lock:
            for image in np.asarray(batch, dtype=np.float32):
                self._interpreter.set_tensor(self._input, image[None])
                self._interpreter.invoke()
                rows.append(self._interpreter.get_tensor(self._output)[0].copy())
        return np.stack(rows)
