"""The demo catalog app."""

from django.apps import AppConfig


class ShopConfig(AppConfig):
    """Products of the demo shop."""

    name = "demo_shop.shop"
    label = "shop"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Tasks sent from the web process must use the shop's Celery app and broker.
        from demo_shop.celery import app

        app.set_current()
