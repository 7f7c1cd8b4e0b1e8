"""The demo shop's settings as the fault-injection suite runs it: the sweep every 5 s with a
20 s grace and a 20 s visibility timeout, so recovery is measured in seconds, not the
production defaults' minutes (docs/RELIABILITY.md gives both)."""

from demo_shop.settings import *  # noqa: F403
from demo_shop.settings import CELERY_BROKER_TRANSPORT_OPTIONS, VISUAL_RECO

SWEEP_SECONDS = 5.0
CELERY_BEAT_SCHEDULE = {
    "visual-reco-sweep": {"task": "visual_reco.sweep", "schedule": SWEEP_SECONDS},
}
CELERY_BROKER_TRANSPORT_OPTIONS = {**CELERY_BROKER_TRANSPORT_OPTIONS, "visibility_timeout": 20}
VISUAL_RECO = {**VISUAL_RECO, "SWEEP_GRACE": 20}
