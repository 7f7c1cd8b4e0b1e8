"""visual_reco's own tables: shopper feedback. The vectors live on the shop's own tables.

Django sends ``pre_migrate`` and ``post_migrate`` only to apps with a models module, and
visual_reco needs both (the ``vector`` extension before the shop's migrations, inline vector
storage after them).
"""

from django.db import models

from visual_reco.choices import EmbeddingStatus, EventType

__all__ = ["EmbeddingStatus", "EventType", "FeedbackEvent"]


class FeedbackEvent(models.Model):
    """One shopper action, append-only; written only by `visual_reco.feedback.events`.

    The served list it belongs to is copied from its token (surface, variant, source, the
    position and the model's fingerprint), so aggregates never need the token again.
    Products are stored by primary key as text, whatever the shop's key type.
    """

    type = models.CharField(max_length=16, choices=EventType.choices)
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)
    visitor = models.CharField(max_length=32)
    user_id = models.CharField(max_length=64, blank=True, default="")
    event_id = models.CharField(max_length=64)
    surface = models.CharField(max_length=32, blank=True, default="")
    variant = models.CharField(max_length=32, blank=True, default="")
    source = models.CharField(max_length=64, blank=True, default="")
    product = models.CharField(max_length=64)
    position = models.PositiveSmallIntegerField(null=True, blank=True)
    list_id = models.CharField(max_length=16, blank=True, default="")
    fingerprint = models.CharField(max_length=16, blank=True, default="")
    quantity = models.PositiveIntegerField(default=1)
    revenue = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["visitor", "event_id"],
                                               name="visual_reco_event_once")]
        indexes = [
            # Last-touch attribution: this visitor's latest click on this product.
            models.Index(fields=["visitor", "product", "occurred_at"],
                         name="visual_reco_event_touch"),
            # Roll-ups read what arrived since the last one.
            models.Index(fields=["received_at"], name="visual_reco_event_received"),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.product} ({self.surface or 'unattributed'})"
