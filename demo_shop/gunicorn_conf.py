"""gunicorn settings for the demo shop (``make demo`` and ``bench_api``): each web process
loads the photo-search model as it starts
(``gunicorn -c python:demo_shop.gunicorn_conf demo_shop.wsgi``).

With ``GUNICORN_READY_DIR`` set, each process then writes a file named after its pid there,
so a benchmark can wait until every process is warm.
"""

import os
from pathlib import Path
from typing import Any


def post_worker_init(worker: Any) -> None:
    """Warm the query embedder in this worker, then say so: the products' field's live
    one, which search photos are embedded with (another than the declared one after
    ``visual_reco_model_switch switch``)."""
    from demo_shop.shop.models import Product
    from visual_reco.query_photos import warm_up
    from visual_reco.registry import get_embedding_field
    from visual_reco.rollout import live_embedder

    warm_up(live_embedder(get_embedding_field(Product)))
    ready = os.environ.get("GUNICORN_READY_DIR")
    if ready:
        (Path(ready) / str(worker.pid)).touch()
