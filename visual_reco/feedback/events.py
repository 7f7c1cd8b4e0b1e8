"""Recording shopper feedback: batches of events from the widget's script, and server-side
events from the shop's cart and order code. The one writer of `FeedbackEvent`.

A batch is checked whole before anything is stored: one bad event refuses the batch with
the reason (`BatchError`). Events are written in the request's transaction, so an answered
batch is stored: there is no buffer to lose. A resent batch is stored once (each event's
``event_id`` is unique per visitor).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from django.db import connections, router
from django.http import HttpRequest
from django.utils import timezone

from visual_reco.choices import EventType
from visual_reco.conf import reco_settings
from visual_reco.databases import read_database
from visual_reco.embedders import get_embedder
from visual_reco.feedback.experiments import Variant, assign
from visual_reco.feedback.tokens import BadToken, ServedList, issue, read
from visual_reco.feedback.visitors import (
    keys_within,
    new_visitor_id,
    tracking_allowed,
    visitor_id,
    visitor_key,
)
from visual_reco.models import FeedbackEvent
from visual_reco.rollout import live_embedder

if TYPE_CHECKING:
    from visual_reco.fields import ImageEmbeddingField

# What a browser may report; purchases come from the shop's order code (`record`), where
# the price is known, not from a script anyone can call.
CLIENT_TYPES = frozenset({EventType.IMPRESSION, EventType.CLICK, EventType.ADD_TO_CART,
                          EventType.FAVORITE, EventType.DISMISS})
EVENT_FIELDS = frozenset({"type", "event_id", "token", "product", "position", "ts",
                          "quantity"})
EVENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_QUANTITY = 1000
NEW_VISITOR = "_visual_reco_new_visitor"
# The columns that tie an event to the list it was served in.
ATTRIBUTION = ("surface", "variant", "source", "position", "list_id", "fingerprint")


class BatchError(ValueError):
    """A batch refused whole; the message says which event and field, and why."""


@dataclass(frozen=True)
class Serving:
    """What a surface needs to serve a tracked list: the variant to rank with, and the
    visitor id a new visitor's browser should keep (None when it has one already)."""

    variant: Variant
    new_visitor_id: str | None


def serving(request: HttpRequest | None, surface: str) -> Serving | None:
    """The variant of ``surface`` for this request's visitor, or None when tracking is off
    (no token is then served). A visitor without an id gets one, the same for every list of
    the request, for the page to hand to the widget's script."""
    if not tracking_allowed(request):
        return None
    known = visitor_id(request)
    fresh = None
    if known is None:
        fresh = getattr(request, NEW_VISITOR, None) or new_visitor_id()
        setattr(request, NEW_VISITOR, fresh)
    return Serving(assign(surface, known or fresh), fresh)


def token_for(serving_: Serving | None, surface: str, source: object,
              products: list[Any], field: ImageEmbeddingField | None = None) -> str | None:
    """The attribution token of a list about to be served, with the fingerprint of the
    embedder whose vectors ranked it (``field``'s live one, `visual_reco.rollout`) and the
    products' scores when they were re-ranked (`visual_reco.feedback.similar`); None when
    not tracked."""
    if serving_ is None:
        return None
    # Read where the list's vectors were read (a replica's rollout row matches its column).
    fingerprint = (get_embedder(live_embedder(field, read_database(field.model))).fingerprint
                   if field else "")
    scores = ([(getattr(product, "visual_score", None), product.reco_score)
               for product in products]
              if products and all(hasattr(product, "reco_score") for product in products)
              else ())
    return issue(surface, source, products, variant=serving_.variant.name,
                 fingerprint=fingerprint, scores=scores)


def _credit(served: ServedList, product: str) -> dict[str, Any]:
    """The columns that credit an event about ``product`` to the list ``served``."""
    return {"surface": served.surface, "variant": served.variant,
            "source": served.source[:64], "position": served.position_of(product),
            "list_id": served.list_id, "fingerprint": served.fingerprint}


def stored_user_id(request: HttpRequest) -> str:
    """The logged-in user's id as events store it: only with ``FEEDBACK["STORE_USER_ID"]``,
    else empty."""
    user = getattr(request, "user", None)
    if reco_settings.FEEDBACK["STORE_USER_ID"] and user is not None and user.is_authenticated:
        return str(user.pk)
    return ""


def _timestamp(value: Any, now: datetime, where: str) -> datetime:
    config = reco_settings.FEEDBACK
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BatchError(f"{where}.ts: milliseconds since 1970 as a number, not {value!r}")
    try:
        when = datetime.fromtimestamp(value / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise BatchError(f"{where}.ts: {value!r} is not a time") from None
    if when > now + timedelta(seconds=config["CLOCK_SKEW"]):
        raise BatchError(f"{where}.ts: the event is in the future")
    if when < now - timedelta(seconds=config["MAX_EVENT_AGE"]):
        raise BatchError(f"{where}.ts: the event is older than "
                         f"{config['MAX_EVENT_AGE'] // 3600} hours")
    return when


def _event(raw: Any, where: str, now: datetime, lists: dict[str, ServedList],
           key: str, user_id: str) -> FeedbackEvent:
    if not isinstance(raw, dict):
        raise BatchError(f"{where}: an event is an object")
    unknown = sorted(set(raw) - EVENT_FIELDS)
    if unknown:
        raise BatchError(f"{where}: unknown field {unknown[0]!r}")
    kind = raw.get("type")
    if kind == EventType.PURCHASE:
        raise BatchError(f"{where}.type: purchases are recorded by the shop's order code "
                         "(visual_reco.feedback.record), not by the browser")
    if kind not in CLIENT_TYPES:
        raise BatchError(f"{where}.type: one of {', '.join(sorted(CLIENT_TYPES))}")
    event_id = raw.get("event_id")
    if not isinstance(event_id, str) or not EVENT_ID.match(event_id):
        raise BatchError(f"{where}.event_id: 1 to 64 letters, digits or _.:-")
    token = raw.get("token")
    if token not in lists:
        try:
            lists[token] = read(token)
        except BadToken as exc:
            raise BatchError(f"{where}.token: {exc}") from None
    served = lists[token]
    product = raw.get("product")
    if isinstance(product, bool) or not isinstance(product, str | int):
        raise BatchError(f"{where}.product: a product id")
    product = str(product)
    position = served.position_of(product)
    if position is None:
        raise BatchError(f"{where}.product: {product[:64]!r} is not in the list of this token")
    if "position" in raw and raw["position"] != position:
        raise BatchError(f"{where}.position: the product is at position {position}")
    quantity = raw.get("quantity", 1)
    if (isinstance(quantity, bool) or not isinstance(quantity, int)
            or not 1 <= quantity <= MAX_QUANTITY):
        raise BatchError(f"{where}.quantity: a whole number from 1 to {MAX_QUANTITY}")
    return FeedbackEvent(
        type=kind, occurred_at=_timestamp(raw.get("ts"), now, where), visitor=key,
        user_id=user_id, event_id=event_id, product=product, quantity=quantity,
        **_credit(served, product))


def accept_batch(request: HttpRequest, payload: Any) -> tuple[int, int]:
    """Check a batch from the widget's script and store it: ``(stored, duplicates)``.

    Raises `BatchError` for a batch with any bad event (nothing is stored). A request that
    may not be tracked (Do Not Track, Global Privacy Control, no consent) stores nothing
    and is not an error.
    """
    config = reco_settings.FEEDBACK
    if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
        raise BatchError('send {"events": [...]}')
    events = payload["events"]
    if not events:
        raise BatchError("the batch has no events")
    if len(events) > config["MAX_BATCH_EVENTS"]:
        raise BatchError(f"the batch has {len(events)} events; at most "
                         f"{config['MAX_BATCH_EVENTS']} are accepted at once")
    if not tracking_allowed(request):
        return 0, 0
    raw_id = visitor_id(request)
    if raw_id is None:
        raise BatchError(f"no visitor id: the {config['VISITOR_COOKIE']} cookie is missing")
    now = timezone.now()
    key = visitor_key(raw_id, now)
    lists: dict[str, ServedList] = {}
    user_id = stored_user_id(request)
    rows = [_event(raw, f"events[{index}]", now, lists, key, user_id)
            for index, raw in enumerate(events)]
    return _store(rows)


def _store(rows: list[FeedbackEvent]) -> tuple[int, int]:
    """Insert the events not stored before, in one statement; ``(stored, duplicates)``.

    ``ON CONFLICT DO NOTHING`` on the (visitor, event id) constraint drops what is already
    there, including the same batch sent twice at the same moment, and ``RETURNING`` counts
    what was new, without a look-up first.
    """
    fields = [field for field in FeedbackEvent._meta.concrete_fields if not field.primary_key]
    connection = connections[router.db_for_write(FeedbackEvent)]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    row_sql = "(" + ", ".join(["%s"] * len(fields)) + ")"
    params = [field.get_db_prep_save(field.pre_save(row, True), connection)
              for row in rows for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(FeedbackEvent._meta.db_table)} ({columns}) VALUES "
            f"{', '.join([row_sql] * len(rows))} "
            "ON CONFLICT (visitor, event_id) DO NOTHING RETURNING 1", params)
        stored = len(cursor.fetchall())
    return stored, len(rows) - stored


def _last_touch(raw_id: str, product: str, now: datetime) -> dict[str, Any]:
    """The credit of the visitor's latest click (or attributed cart) on ``product`` within
    ``ATTRIBUTION_WINDOW``, under any of its keys of that time; empty when there is none."""
    window = timedelta(seconds=reco_settings.FEEDBACK["ATTRIBUTION_WINDOW"])
    # On the primary: a purchase seconds after its click must find it, however a replica lags.
    touch = (FeedbackEvent.objects.using(router.db_for_write(FeedbackEvent))
             .filter(visitor__in=keys_within(raw_id, now, window), product=product,
                     occurred_at__gte=now - window,
                     type__in=[EventType.CLICK, EventType.ADD_TO_CART])
             .exclude(surface="").order_by("-occurred_at").values(*ATTRIBUTION).first())
    return touch or {}


def record(request: HttpRequest, type: str, product: Any, *, quantity: int = 1,
           price: Decimal | float | str | None = None, token: str | None = None,
           event_id: str | None = None) -> FeedbackEvent | None:
    """Record a server-side event (``add_to_cart``, ``purchase`` ...) of this request's
    visitor, credited to the list of ``token`` or else, last touch, to the list the visitor
    last clicked the product in within ``ATTRIBUTION_WINDOW``; unattributed otherwise.

    ``price`` is the unit price (revenue is price x quantity). Give ``event_id`` (e.g. the
    order line's id) so that recording the same thing twice stores it once. Returns the
    event, or None when this visitor may not be tracked or has no visitor id.
    """
    if type not in EventType.values:
        raise ValueError(f"type must be one of {EventType.values}, not {type!r}")
    if not isinstance(quantity, int) or not 1 <= quantity <= MAX_QUANTITY:
        raise ValueError(f"quantity must be a whole number from 1 to {MAX_QUANTITY}")
    revenue = None
    if price is not None:
        try:
            revenue = (Decimal(str(price)) * quantity).quantize(Decimal("0.01"))
        except InvalidOperation:
            raise ValueError(f"price must be a number, not {price!r}") from None
    if not tracking_allowed(request):
        return None
    raw_id = visitor_id(request)
    if raw_id is None:
        return None
    now = timezone.now()
    product_id = str(getattr(product, "pk", product))
    credit = _credit(read(token), product_id) if token else _last_touch(raw_id, product_id, now)
    event = FeedbackEvent(type=type, occurred_at=now, visitor=visitor_key(raw_id, now),
                          user_id=stored_user_id(request),
                          event_id=event_id or uuid.uuid4().hex,
                          product=product_id, quantity=quantity, revenue=revenue, **credit)
    _store([event])
    return event
