"""Peak memory of one photo search's pixel work, measured in a fresh process.

    PYTHONPATH=. python tests/decode_peak.py FILE

Reads FILE, decodes it with `open_image` as a search photo (`query_photos.decode_query`'s
limits, without loading an embedder), cuts the search views (`multi_crops` at
``QUERY_MULTI_CROP``) and runs the default `Preprocessing` on each to the 299 px model input,
stacked as float32 like the model's batch (no TensorFlow). Prints one JSON line: ``peak_mb``
is how far the peak resident set (``VmHWM``, reset before the file is read) rose above the
resident set just before, so it includes the upload's bytes. One file per process, so that
memory freed by an earlier measurement cannot be reused unseen. Linux only.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
from django.conf import settings
from PIL import Image

if not settings.configured:
    settings.configure()

from visual_reco.conf import reco_settings  # noqa: E402  (needs configured settings)
from visual_reco.images import open_image  # noqa: E402
from visual_reco.preprocessing import Preprocessing, multi_crops  # noqa: E402

INPUT_SIZE = 299


def search_batch(data: bytes) -> np.ndarray:
    """The model input a photo search makes of ``data``: its views, float32."""
    image = open_image(io.BytesIO(data),
                       full_decode_limits=reco_settings.SEARCH_MAX_FULL_DECODE_PIXELS)
    pipeline = Preprocessing.from_settings()
    fraction = reco_settings.QUERY_MULTI_CROP
    views = multi_crops(image, fraction) if fraction else [image]
    return np.stack([pipeline(view, INPUT_SIZE) for view in views]).astype(np.float32)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} is not in /proc/self/status")


def peak_growth_mb(path: Path) -> float:
    """Peak resident-set growth, in MB, of reading ``path`` and running `search_batch`."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    search_batch(path.read_bytes())
    return (_status_kb("VmHWM") - before) / 1024


def main(name: str) -> None:
    """Warm up on a small photo (plugins, lazy imports), then measure ``name``."""
    warm = io.BytesIO()
    Image.new("RGB", (640, 480), "grey").save(warm, "JPEG")
    search_batch(warm.getvalue())
    with Image.open(name) as image:
        described = {"format": image.format, "mode": image.mode, "size": list(image.size)}
    print(json.dumps({"file": name, **described, "bytes": Path(name).stat().st_size,
                      "peak_mb": round(peak_growth_mb(Path(name)), 1)}))


if __name__ == "__main__":
    main(sys.argv[1])
