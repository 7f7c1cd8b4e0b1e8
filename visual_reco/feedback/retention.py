"""Retention and erasure of raw feedback events (docs/PRIVACY.md).

`purge_events` deletes raw events older than ``RETENTION_DAYS`` in batches, after a roll-up
has counted them; the daily aggregates, which hold no visitor, are kept. `forget_visitor`
erases one visitor's raw events, by stored key or by the raw id of its cookie.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Min
from django.utils import timezone

from visual_reco.conf import reco_settings
from visual_reco.feedback.rollup import note_purge, primary, rollup
from visual_reco.feedback.visitors import VISITOR_ID, keys_within
from visual_reco.models import FeedbackEvent

PURGE_TASK = "visual_reco.purge_feedback"
PURGE_BATCH = 5000
AGE = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")
AGE_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
STORED_KEY = re.compile(r"^[0-9a-f]{32}$")


def parse_age(text: str) -> timedelta:
    """``"90d"``, ``"12h"`` or ``"30m"`` as a duration; ValueError otherwise."""
    match = AGE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an age such as 90d, 12h or 30m")
    return timedelta(**{AGE_UNITS[match.group(2)]: int(match.group(1))})


def retention() -> timedelta:
    """How long raw events are kept: ``FEEDBACK["RETENTION_DAYS"]``."""
    return timedelta(days=int(reco_settings.FEEDBACK["RETENTION_DAYS"]))


def purge_events(older_than: timedelta | None = None, batch_size: int = PURGE_BATCH) -> int:
    """Delete raw events that occurred more than ``older_than`` ago (default the retention)
    in batches of ``batch_size``, each in its own transaction; return how many went.

    A roll-up runs first, so every event is counted in the aggregates before it is deleted,
    and the cutoff is noted so that the roll-up never recomputes a day from what is left."""
    cutoff = timezone.now() - (older_than if older_than is not None else retention())
    rollup(wait=True)  # a run in progress may not have counted them yet: wait for ours
    using = primary()
    with transaction.atomic(using=using):
        note_purge(cutoff)
    # Batches read on the primary: a replica would still show the rows just deleted.
    events = FeedbackEvent.objects.db_manager(using)
    deleted = 0
    while True:
        with transaction.atomic(using=using):
            batch = list(events.filter(occurred_at__lt=cutoff)
                         .values_list("pk", flat=True)[:batch_size])
            if not batch:
                return deleted
            deleted += events.filter(pk__in=batch).delete()[0]


@dataclass(frozen=True)
class Forgotten:
    """What `forget_visitor` erased: raw events, and the stored keys it looked for."""

    events: int
    keys: list[str]


def visitor_keys(key_or_id: str, now: datetime | None = None) -> list[str]:
    """The stored keys ``key_or_id`` stands for: itself when it is a stored key (32 hex
    digits), and, when it is a possible cookie id, its key in every rotation period from
    the oldest raw event kept (at least the retention window) to now."""
    now = now or timezone.now()
    keys = [key_or_id] if STORED_KEY.match(key_or_id) else []
    if VISITOR_ID.match(key_or_id):
        window = retention() + timedelta(days=1)
        oldest = FeedbackEvent.objects.aggregate(oldest=Min("received_at"))["oldest"]
        if oldest is not None:
            window = max(window, now - oldest + timedelta(days=1))
        keys += keys_within(key_or_id, now, window)
    if not keys:
        raise ValueError("neither a stored visitor key (32 hex digits) nor a visitor id")
    return list(dict.fromkeys(keys))


def forget_visitor(key_or_id: str) -> Forgotten:
    """Erase the raw events of one visitor, given its stored key or its cookie's raw id.

    The daily aggregates are not touched: they hold counts without visitors, so nothing in
    them can be traced to anyone."""
    keys = visitor_keys(key_or_id.strip())
    with transaction.atomic():
        deleted = FeedbackEvent.objects.filter(visitor__in=keys).delete()[0]
    return Forgotten(deleted, keys)
