"""Shopper feedback: tokens on served lists, events from the widget and the shop's own code,
and the privacy rules around them (docs/PRIVACY.md).

    from visual_reco.feedback import record
    record(request, "purchase", product, quantity=2, price=product.price, event_id=line.pk)
"""

from visual_reco.feedback.events import BatchError, accept_batch, record

__all__ = ["BatchError", "accept_batch", "record"]
