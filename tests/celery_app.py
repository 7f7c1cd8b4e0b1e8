"""Celery app used by the test suite and by the worker it starts."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

app = Celery("visual_reco_tests")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
