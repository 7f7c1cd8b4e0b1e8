"""The demo shop: a small Django shop that uses visual_reco.

Its Celery app lives in `demo_shop.celery` (``celery -A demo_shop worker``) and is made the
current app by the shop's AppConfig, so importing helpers from here creates no Celery app.
"""
