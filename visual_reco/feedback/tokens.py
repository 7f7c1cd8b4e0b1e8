"""Attribution tokens: every list visual_reco serves carries a short signed id that records
what was served, so the events that come back can be credited to it without a write per
served list.

A token is Django's signed, timestamped, compressed JSON of the surface, the source (a
product's primary key, or ``photo`` for a photo search), the A/B variant, the embedder's
fingerprint, the product ids in order and, for a re-ranked list, each product's visual
and final score. It is signed with the project's ``SECRET_KEY``
and a salt of its own, so a token of one shop is no token in another, and nobody can
forge one into existence or edit its list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from django.core import signing

from visual_reco.conf import reco_settings

SALT = "visual_reco.feedback.token"


class BadToken(ValueError):
    """A token that was not issued here, was altered, or is too old."""


@dataclass(frozen=True)
class ServedList:
    """One list as it was served."""

    surface: str
    source: str
    variant: str
    fingerprint: str
    products: tuple[str, ...]
    list_id: str = ""
    # (visual score, final score) per product, when the list was re-ranked.
    scores: tuple[tuple[float | None, float | None], ...] = ()

    def position_of(self, product: str) -> int | None:
        """The 1-based position of ``product`` in the list, or None."""
        try:
            return self.products.index(product) + 1
        except ValueError:
            return None


def issue(surface: str, source: object, products: Sequence[object], *, variant: str = "",
          fingerprint: str = "",
          scores: Sequence[tuple[float | None, float | None]] = ()) -> str:
    """The token of a list served on ``surface`` for ``source``: ``products`` (primary
    keys or objects with ``pk``) in the order shown, and their (visual, final) ``scores``."""
    ids = [str(getattr(product, "pk", product)) for product in products]
    short_fingerprint = fingerprint.rsplit(":", 1)[-1][:12]
    payload: list[object] = [surface, str(source), variant, short_fingerprint, ids]
    if scores:
        payload.append([[_rounded(visual), _rounded(final)] for visual, final in scores])
    return signing.dumps(payload, salt=SALT, compress=True)


def _rounded(score: float | None) -> float | None:
    return None if score is None else round(float(score), 4)


def read(token: str) -> ServedList:
    """The list a token records; raise `BadToken` when it is not valid here or is older
    than ``FEEDBACK["TOKEN_MAX_AGE"]``."""
    if not isinstance(token, str) or not 0 < len(token) <= 4096:
        raise BadToken("not a token")
    try:
        surface, source, variant, fingerprint, ids, *rest = signing.loads(
            token, salt=SALT, max_age=reco_settings.FEEDBACK["TOKEN_MAX_AGE"])
        scores = tuple((visual, final) for visual, final in (rest[0] if rest else ()))
    except signing.SignatureExpired:
        raise BadToken("the token has expired") from None
    except (signing.BadSignature, ValueError, TypeError):
        raise BadToken("the token was not issued by this shop or was altered") from None
    list_id = hashlib.blake2b(token.encode(), digest_size=8).hexdigest()
    return ServedList(surface, source, variant, fingerprint, tuple(ids), list_id, scores)
