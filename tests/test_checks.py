"""System checks catch a mismatch between the column and the embedder."""

import pytest
from django.core import checks

from visual_reco.conf import DEFAULT_WEIGHTS
from visual_reco.embedders import build_embedder
from visual_reco.registry import embedded_models, embedding_fields


def _errors():
    found = checks.run_checks(tags=[checks.Tags.models])
    return [e for e in found if e.id.startswith("visual_reco")]


def test_default_configuration_passes():
    assert _errors() == []


def test_dimension_mismatch_is_an_error(settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "EMBEDDER": {
        "BACKEND": "visual_reco.embedders.keras.KerasApplicationEmbedder",
        "OPTIONS": {"architecture": "EfficientNetB0", "weights": "imagenet"}}}
    errors = _errors()
    fields = [f for m in embedded_models() for f in embedding_fields(m) if f.model is m]
    assert [e.id for e in errors] == ["visual_reco.E001"] * len(fields)  # one per field
    assert {e.obj for e in errors} == set(fields)
    assert "2048" in errors[0].msg and "1280" in errors[0].msg


def test_unbuildable_embedder_is_an_error(settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "EMBEDDER": {
        "BACKEND": "visual_reco.embedders.keras.KerasApplicationEmbedder",
        "OPTIONS": {"architecture": "NoSuchNet"}}}
    errors = _errors()
    assert [e.id for e in errors] == ["visual_reco.E003"]  # once for the embedder, not per field
    assert "Item.embedding" in errors[0].msg and "Look.detail_embedding" in errors[0].msg


def test_fingerprint_changes_with_preprocessing_and_weights():
    base = {"BACKEND": "visual_reco.embedders.keras.KerasApplicationEmbedder", "OPTIONS": {}}
    default = build_embedder({**base, "OPTIONS": {"weights": "imagenet"}}).fingerprint
    assert default == build_embedder({**base, "OPTIONS": {"weights": "imagenet"}}).fingerprint
    assert default != build_embedder({**base, "OPTIONS": {"weights": "imagenet",
                                                          "input_size": 224}}).fingerprint
    assert default != build_embedder({**base, "OPTIONS": {"weights": "imagenet",
                                                          "preprocessing": {"RESIZE": "crop"}}}
                                          ).fingerprint
    assert default != build_embedder({**base, "OPTIONS": {"weights": DEFAULT_WEIGHTS}}
                                      ).fingerprint


def test_a_database_without_postgres_and_pgvector_is_an_error(tmp_path):
    from django.db import connection
    from django.db.backends.sqlite3.base import DatabaseWrapper

    from visual_reco.checks import database_problems

    sqlite = DatabaseWrapper({**connection.settings_dict, "ENGINE": "django.db.backends.sqlite3",
                              "NAME": str(tmp_path / "shop.sqlite3")}, alias="legacy")
    (problem,) = database_problems(sqlite)
    assert problem.id == "visual_reco.E006" and "PostgreSQL with the pgvector" in problem.msg
    assert "sqlite" in problem.msg


@pytest.mark.django_db
def test_the_suites_database_has_a_recent_pgvector():
    from visual_reco.checks import check_databases

    assert check_databases(databases=["default"]) == []


def test_migrate_on_sqlite_stops_with_the_check_not_a_crash(tmp_path):
    """What a shop developer trying the app on SQLite sees."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'shop.sqlite3'}"}
    result = subprocess.run([sys.executable, "manage.py", "migrate", "--no-input"], cwd=root,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "visual_reco.E006" in result.stderr and "PostgreSQL with the pgvector" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("strength", [0, -1, "many", None])
def test_a_prior_strength_that_is_not_above_zero_is_an_error(settings, strength):
    experiments = {"similar_api": {"VARIANTS": {
        "control": {"SHARE": 50}, "sharp": {"SHARE": 50, "RANKING": {"PRIOR_STRENGTH": strength}}}}}
    settings.VISUAL_RECO = {**settings.VISUAL_RECO,
                            "RANKING": {"PRIOR_STRENGTH": strength},
                            "FEEDBACK": {"EXPERIMENTS": experiments}}
    errors = [e for e in checks.run_checks() if e.id == "visual_reco.E009"]
    assert len(errors) == 2
    assert "RANKING['PRIOR_STRENGTH']" in errors[0].msg
    assert "'sharp'" in errors[1].msg


def test_the_default_prior_strengths_pass():
    assert [e for e in checks.run_checks() if e.id == "visual_reco.E009"] == []
