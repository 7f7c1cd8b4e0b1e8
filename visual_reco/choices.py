"""Choices shared by the models and the code that writes them, in a module of their own:
the app's configuration imports code that needs them before models may be defined."""

from django.db import models


class EmbeddingStatus(models.TextChoices):
    """Where a row's embedding stands."""

    NO_IMAGE = "no_image", "No image"
    PENDING = "pending", "Pending"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    STALE = "stale", "Stale"


class EventType(models.TextChoices):
    """What a shopper did with a recommended product."""

    IMPRESSION = "impression", "Impression"
    CLICK = "click", "Click"
    ADD_TO_CART = "add_to_cart", "Add to cart"
    PURCHASE = "purchase", "Purchase"
    FAVORITE = "favorite", "Favourite"
    DISMISS = "dismiss", "Dismiss"
