"""The demo shop: a small Django shop that uses visual_reco."""

from demo_shop.celery import app as celery_app

__all__ = ["celery_app"]
