"""The demo catalog app."""

from django.apps import AppConfig


class ShopConfig(AppConfig):
    """Products of the demo shop."""

    name = "demo_shop.shop"
    label = "shop"
    default_auto_field = "django.db.models.BigAutoField"
