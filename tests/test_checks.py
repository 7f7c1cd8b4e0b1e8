"""System checks catch a mismatch between the column and the embedder."""

from django.core import checks

from visual_reco.embedders import build_embedder


def _errors():
    found = checks.run_checks(tags=[checks.Tags.models])
    return [e for e in found if e.id.startswith("visual_reco")]


def test_default_configuration_passes():
    assert _errors() == []


def test_dimension_mismatch_is_an_error(settings):
    settings.VISUAL_RECO = {"EMBEDDER": {
        "BACKEND": "visual_reco.embedders.keras.KerasApplicationEmbedder",
        "OPTIONS": {"architecture": "EfficientNetB0", "weights": "imagenet"}}}
    errors = _errors()
    assert [e.id for e in errors] == ["visual_reco.E001"]
    assert "2048" in errors[0].msg and "1280" in errors[0].msg


def test_unbuildable_embedder_is_an_error(settings):
    settings.VISUAL_RECO = {"EMBEDDER": {
        "BACKEND": "visual_reco.embedders.keras.KerasApplicationEmbedder",
        "OPTIONS": {"architecture": "NoSuchNet"}}}
    assert [e.id for e in _errors()] == ["visual_reco.E003"]


def test_fingerprint_changes_with_preprocessing_and_weights():
    base = {"BACKEND": "visual_reco.embedders.keras.KerasApplicationEmbedder", "OPTIONS": {}}
    default = build_embedder({**base, "OPTIONS": {"weights": "imagenet"}}).fingerprint
    assert default == build_embedder({**base, "OPTIONS": {"weights": "imagenet"}}).fingerprint
    assert default != build_embedder({**base, "OPTIONS": {"weights": "imagenet",
                                                          "input_size": 224}}).fingerprint
    assert default != build_embedder({**base, "OPTIONS": {"weights": "imagenet",
                                                          "preprocessing": {"RESIZE": "crop"}}}
                                          ).fingerprint
    assert default != build_embedder({**base, "OPTIONS": {}}).fingerprint.replace("x", "y")
