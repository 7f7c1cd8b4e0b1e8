"""Who is tracked, and under which key: a pseudonymous visitor key derived from a random
first-party id, and the privacy rules that switch tracking off.

The browser keeps a random id in the ``VISITOR_COOKIE`` cookie (set by the widget's script,
only where tracking is allowed). What is stored is a keyed hash of it that changes every
``VISITOR_KEY_ROTATION_DAYS``: events of one period can be joined, periods cannot, and the
id itself is never stored. No IP address, user agent, e-mail or session key is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone
from django.utils.module_loading import import_string

from visual_reco.conf import reco_settings

VISITOR_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def tracking_allowed(request: HttpRequest | None) -> bool:
    """Whether feedback may be recorded for this request: feedback is on, the browser sends
    neither Do Not Track (``DNT: 1``) nor Global Privacy Control (``Sec-GPC: 1``), and the
    ``FEEDBACK["CONSENT"]`` hook, if any, says yes."""
    config = reco_settings.FEEDBACK
    if not config["ENABLED"] or request is None:
        return False
    if request.headers.get("DNT") == "1" or request.headers.get("Sec-GPC") == "1":
        return False
    consent = config["CONSENT"]
    if consent:
        check = import_string(consent) if isinstance(consent, str) else consent
        return bool(check(request))
    return True


def new_visitor_id() -> str:
    """A fresh random visitor id (128 bits)."""
    return secrets.token_urlsafe(16)


def visitor_id(request: HttpRequest) -> str | None:
    """The visitor's random id from its cookie, if it has a well-formed one."""
    value = request.COOKIES.get(reco_settings.FEEDBACK["VISITOR_COOKIE"], "")
    return value if VISITOR_ID.match(value) else None


def visitor_key(raw_id: str, when: datetime | None = None) -> str:
    """The stored, pseudonymous key of ``raw_id`` in the rotation period of ``when``."""
    days = max(int(reco_settings.FEEDBACK["VISITOR_KEY_ROTATION_DAYS"]), 1)
    period = (when or timezone.now()).date().toordinal() // days
    secret = hashlib.sha256(f"visual_reco.visitor:{settings.SECRET_KEY}".encode()).digest()
    message = f"{period}:{raw_id}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:32]


def keys_within(raw_id: str, now: datetime, window: timedelta) -> list[str]:
    """The keys of ``raw_id`` in every rotation period that overlaps ``window`` before
    ``now``, newest first."""
    days = max(int(reco_settings.FEEDBACK["VISITOR_KEY_ROTATION_DAYS"]), 1)
    keys, when = [], now
    while True:
        keys.append(visitor_key(raw_id, when))
        if when - timedelta(days=days) < now - window:
            break
        when -= timedelta(days=days)
    keys.append(visitor_key(raw_id, now - window))
    return list(dict.fromkeys(keys))
