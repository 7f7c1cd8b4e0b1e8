"""One photo search in a fresh web process, and what that process imported.

    VISUAL_RECO_TEST_WORKER=1 PYTHONPATH=. python tests/web_search.py FILE

Sets Django up with ``tests.settings`` (``VISUAL_RECO_TEST_QUERY_EMBEDDING``,
``VISUAL_RECO_TEST_QUEUES`` as the caller sets them), loads the WSGI application as gunicorn
does, posts FILE to the photo search through Django's test client (the same handler and
middleware) and prints one JSON line: the status, the response body, the TensorFlow and Keras
modules imported, and the resident set (``VmRSS``, MB). Linux only.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from django.core.files.uploadedfile import SimpleUploadedFile  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.test import Client  # noqa: E402

import tests.celery_app  # noqa: E402, F401  (a project package imports its Celery app)

HEAVY = ("tensorflow", "keras", "tf_keras")


def resident_mb() -> float:
    """This process's resident set in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(path: str) -> None:
    """Post ``path`` to the photo search and print the JSON line."""
    get_wsgi_application()
    response = Client().post("/api/visual-reco/search/", {
        "image": SimpleUploadedFile(Path(path).name, Path(path).read_bytes())})
    print(json.dumps({
        "status": response.status_code, "body": response.json(),
        "heavy_modules": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY),
        "rss_mb": resident_mb()}))


if __name__ == "__main__":
    main(sys.argv[1])
