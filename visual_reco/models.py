"""Model-level constants. visual_reco keeps its vectors on the shop's own tables.

This module must exist even without models: Django sends ``pre_migrate`` and
``post_migrate`` only to apps that have a models module, and visual_reco needs both (the
``vector`` extension before the shop's migrations, inline vector storage after them).
"""

from django.db import models


class EmbeddingStatus(models.TextChoices):
    """Where a row's embedding stands."""

    NO_IMAGE = "no_image", "No image"
    PENDING = "pending", "Pending"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    STALE = "stale", "Stale"
