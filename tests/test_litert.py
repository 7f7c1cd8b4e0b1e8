"""The LiteRT embedder: the Keras backbone converted once, run without TensorFlow."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.test import override_settings
from PIL import Image

from visual_reco.conf import DEFAULT_WEIGHTS
from visual_reco.embedders.keras import KerasApplicationEmbedder
from visual_reco.embedders.litert import LiteRTEmbedder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Both conversions of the default backbone, written once for the module."""
    folder = tmp_path_factory.mktemp("litert")
    return {quantization: LiteRTEmbedder(weights=DEFAULT_WEIGHTS, quantization=quantization,
                                         model_file=folder / f"{quantization}.tflite").export()
            for quantization in ("none", "dynamic_int8")}


@pytest.fixture(scope="module")
def images(photos) -> list[Image.Image]:
    return [Image.open(p.path).convert("RGB") for p in photos[:6]]


@pytest.fixture(scope="module")
def keras_vectors(images) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    exact = KerasApplicationEmbedder(weights=DEFAULT_WEIGHTS, precision="float32")
    return exact.embed_with_aspects(images, ["colour"])


def test_float32_vectors_are_the_keras_ones_under_the_same_fingerprint(models, images,
                                                                        keras_vectors):
    embedder = LiteRTEmbedder(weights=DEFAULT_WEIGHTS, model_file=models["none"])
    assert embedder.fingerprint == KerasApplicationEmbedder(weights=DEFAULT_WEIGHTS).fingerprint
    vectors, aspects = embedder.embed_with_aspects(images, ["colour"])
    assert vectors.shape == (len(images), 2048) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert (vectors * keras_vectors[0]).sum(axis=1).min() > 0.999
    np.testing.assert_array_equal(aspects["colour"], keras_vectors[1]["colour"])


def test_int8_weights_make_other_vectors_with_their_own_fingerprint(models, images,
                                                                     keras_vectors):
    embedder = LiteRTEmbedder(weights=DEFAULT_WEIGHTS, quantization="dynamic_int8",
                              model_file=models["dynamic_int8"])
    assert embedder.fingerprint == (KerasApplicationEmbedder(weights=DEFAULT_WEIGHTS).fingerprint
                                    + "+int8")
    assert models["dynamic_int8"].stat().st_size < models["none"].stat().st_size / 3
    cosines = (embedder.embed(images) * keras_vectors[0]).sum(axis=1)
    assert 0.98 < cosines.min() and cosines.max() < 0.9999


def test_threads_share_one_interpreter(models, images):
    from concurrent.futures import ThreadPoolExecutor

    embedder = LiteRTEmbedder(weights=DEFAULT_WEIGHTS, model_file=models["none"])
    alone = embedder.embed(images[:2])
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda _: embedder.embed(images[:2]), range(8)))
    for vectors in together:
        np.testing.assert_allclose(vectors, alone, atol=1e-6)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="quantization"):
        LiteRTEmbedder(quantization="int4")
    with pytest.raises(ValueError, match="float32"):
        LiteRTEmbedder(precision="bfloat16")


# A process that has the model file embeds without ever importing TensorFlow; one that has
# neither says what to run.
EMBED_WITHOUT_TENSORFLOW = """
import json, sys
sys.modules["tensorflow"] = None  # any import of it now fails
from PIL import Image
from django.conf import settings
settings.configure(VISUAL_RECO={"CACHE_DIR": sys.argv[2]})
from visual_reco.embedders.litert import LiteRTEmbedder
from visual_reco.embedders.weights import WeightsError
embedder = LiteRTEmbedder(weights=sys.argv[3], model_file=sys.argv[1])
try:
    vectors = embedder.embed([Image.open(path).convert("RGB") for path in sys.argv[4:]])
except WeightsError as error:
    print(json.dumps({"error": str(error)}))
else:
    print(json.dumps({"vectors": vectors.tolist(),
                      "keras": sorted(name for name in sys.modules if name.startswith("keras"))}))
"""


def run_without_tensorflow(model_file: Path, cache_dir: Path, paths: list[str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", EMBED_WITHOUT_TENSORFLOW, str(model_file), str(cache_dir),
         DEFAULT_WEIGHTS, *paths], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_process_without_tensorflow_embeds_from_the_converted_file(models, photos, tmp_path,
                                                                     keras_vectors):
    paths = [str(p.path) for p in photos[:2]]
    found = run_without_tensorflow(models["none"], tmp_path, paths)
    assert found["keras"] == []
    vectors = np.array(found["vectors"], dtype=np.float32)
    assert (vectors * keras_vectors[0][:2]).sum(axis=1).min() > 0.999

    missing = run_without_tensorflow(tmp_path / "nowhere.tflite", tmp_path, paths)
    assert "visual_reco_export_litert" in missing["error"]


def test_the_command_converts_each_litert_embedder_once(tmp_path, capsys):
    litert = {"BACKEND": "visual_reco.embedders.litert.LiteRTEmbedder",
              "OPTIONS": {"weights": DEFAULT_WEIGHTS, "quantization": "dynamic_int8"}}
    settings = {"CACHE_DIR": str(tmp_path), "EMBEDDERS": {"small": litert}}
    with override_settings(VISUAL_RECO=settings):
        call_command("visual_reco_export_litert")
        first = capsys.readouterr().out
        call_command("visual_reco_export_litert", "small")
        second = capsys.readouterr().out
        model = LiteRTEmbedder(**litert["OPTIONS"]).model_file
    assert model.parent == tmp_path / "litert" and model.exists()
    assert "small: wrote" in first and "default" not in first
    assert "exists" in second
    from django.core.management.base import CommandError
    with override_settings(VISUAL_RECO={"CACHE_DIR": str(tmp_path)}):
        with pytest.raises(CommandError, match="not a LiteRTEmbedder"):
            call_command("visual_reco_export_litert", "default")
