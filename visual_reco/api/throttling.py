"""Rate limits for the API: requests per client and minute, counted in a cache every process
shares, and a bound on the photo searches one process runs at once."""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.core.cache import caches
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from visual_reco.conf import reco_settings
from visual_reco.feedback.visitors import visitor_id

logger = logging.getLogger("visual_reco")


class VisualRecoRateThrottle(SimpleRateThrottle):
    """``THROTTLE_RATES[scope]`` requests per client (the user when logged in, else the
    client address), counted in the ``THROTTLE_CACHE`` alias. A rate of None means no limit.
    A cache that fails lets requests through (logged): limits are for abuse, not outages."""

    def __init__(self) -> None:
        self.cache = caches[reco_settings.THROTTLE_CACHE]
        super().__init__()

    def get_rate(self) -> str | None:
        return reco_settings.THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": f"visual_reco_{self.scope}",
                                    "ident": self.client(request)}

    def client(self, request: Request) -> str:
        """Who is counted: the user when logged in, else the client address."""
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return f"user-{user.pk}"
        return self.get_ident(request)

    def allow_request(self, request: Request, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except Exception:
            logger.warning("THROTTLE_CACHE is unavailable; request not rate-limited",
                           exc_info=True)
            return True


class PhotoSearchThrottle(VisualRecoRateThrottle):
    """Photo searches per client (``THROTTLE_RATES["photo_search"]``)."""

    scope = "photo_search"


class SimilarThrottle(VisualRecoRateThrottle):
    """Similar-products requests per client (``THROTTLE_RATES["similar"]``)."""

    scope = "similar"


class PicksThrottle(VisualRecoRateThrottle):
    """Picked-for-you requests per client (``THROTTLE_RATES["picked_for_you"]``)."""

    scope = "picked_for_you"


class EventsVisitorThrottle(VisualRecoRateThrottle):
    """Event batches per visitor (``THROTTLE_RATES["events_visitor"]``), by the visitor id
    cookie, else by client address."""

    scope = "events_visitor"

    def client(self, request: Request) -> str:
        """The visitor id cookie, else the client address."""
        return visitor_id(request) or self.get_ident(request)


class EventsAddressThrottle(VisualRecoRateThrottle):
    """Event batches per client address (``THROTTLE_RATES["events_ip"]``): a client that
    makes up a new visitor id for every batch is still counted."""

    scope = "events_ip"

    def client(self, request: Request) -> str:
        """The client address."""
        return self.get_ident(request)


_slots_lock = threading.Lock()
_slots: tuple[int, threading.BoundedSemaphore] | None = None


def search_slots() -> threading.BoundedSemaphore:
    """The semaphore bounding this process's concurrent photo searches
    (``SEARCH_CONCURRENCY``); a search that finds none free is answered 503."""
    global _slots
    size = int(reco_settings.SEARCH_CONCURRENCY)
    with _slots_lock:
        if _slots is None or _slots[0] != size:
            _slots = (size, threading.BoundedSemaphore(size))
        return _slots[1]
