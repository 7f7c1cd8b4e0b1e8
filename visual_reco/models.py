"""Model-level constants. visual_reco keeps its vectors on the shop's own tables."""

from django.db import models


class EmbeddingStatus(models.TextChoices):
    """Where a row's embedding stands."""

    NO_IMAGE = "no_image", "No image"
    PENDING = "pending", "Pending"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    STALE = "stale", "Stale"
