"""What shoppers did with a list's candidates, read from the running totals the roll-up keeps
(`FeedbackPairStats`, `FeedbackProductStats`), as the re-ranking's `Evidence` and `Prior`.

One query per list. The prior (a surface's mean click rate and conversions per click) is a
sum over every product, so each process keeps it for ``PRIOR_TTL`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from django.db import connections

from visual_reco.databases import read_database
from visual_reco.feedback.ranking import Evidence, Prior
from visual_reco.models import FeedbackPairStats, FeedbackProductStats, quoted_table

PRIOR_TTL = 60.0
# Before any feedback there is no prior; the first roll-up should count within seconds.
NO_PRIOR_TTL = 5.0
_priors: dict[tuple[str, ...], tuple[float, tuple[float, float] | None]] = {}


def evidence_for(surfaces: Sequence[str], source: object | None,
                 products: Sequence[object]) -> list[Evidence]:
    """The `Evidence` of each of ``products`` (primary keys) shown for ``source`` on any of
    ``surfaces``, in the order given; with ``source`` None, the products' own only (no
    pair totals read)."""
    ids = [str(product) for product in products]
    if not ids:
        return []
    found: dict[str, dict[str, float]] = {}
    pairs, params = "", []
    if source is not None:
        pairs = f"""
            SELECT true, product, sum(examined), sum(clicks), 0
            FROM {quoted_table(FeedbackPairStats)}
            WHERE surface = ANY(%s) AND source = %s AND product = ANY(%s) GROUP BY product
            UNION ALL"""
        params = [list(surfaces), str(source)[:64], ids]
    with connections[read_database(FeedbackProductStats)].cursor() as cursor:
        cursor.execute(f"""{pairs}
            SELECT false, product, sum(examined), sum(clicks), sum(add_to_carts + purchases)
            FROM {quoted_table(FeedbackProductStats)}
            WHERE surface = ANY(%s) AND product = ANY(%s) GROUP BY product""",
                       [*params, list(surfaces), ids])
        for is_pair, product, views, clicks, conversions in cursor.fetchall():
            seen = found.setdefault(product, {})
            if is_pair:
                seen.update(pair_views=float(views), pair_clicks=float(clicks))
            else:
                seen.update(target_views=float(views), target_clicks=float(clicks),
                            target_conversions=float(conversions))
    return [Evidence(**found.get(product, {})) for product in ids]


def prior_for(surfaces: Sequence[str], strength: float) -> Prior | None:
    """The mean debiased click rate and conversions per click on ``surfaces``, None before
    anything was shown there. Kept ``PRIOR_TTL`` seconds per process."""
    key = tuple(sorted(surfaces))
    now = time.monotonic()
    cached = _priors.get(key)
    if cached is None or cached[0] < now:
        with connections[read_database(FeedbackProductStats)].cursor() as cursor:
            cursor.execute(f"""
                SELECT sum(examined), sum(clicks), sum(add_to_carts + purchases)
                FROM {quoted_table(FeedbackProductStats)} WHERE surface = ANY(%s)""", [list(key)])
            views, clicks, conversions = cursor.fetchone()
        rates = None
        if views:
            # Half a pseudo-event each, so a surface without clicks yet has a rate above 0.
            rates = ((float(clicks) + 0.5) / (float(views) + 1.0),
                     (float(conversions) + 0.5) / (float(clicks) + 1.0))
        cached = (now + (PRIOR_TTL if rates else NO_PRIOR_TTL), rates)
        _priors[key] = cached
    if cached[1] is None:
        return None
    return Prior(ctr=cached[1][0], conversion=cached[1][1], strength=strength)


def forget_priors() -> None:
    """Read the priors again on next use (after a roll-up in the same process, in tests)."""
    _priors.clear()
