"""Daily aggregates of the raw feedback events: the one writer of `FeedbackDaily`,
`FeedbackVariantDaily` and `FeedbackPositionDaily`, which analytics read instead of the
events, and of the running totals `FeedbackPairStats` and `FeedbackProductStats`, which
re-ranking reads.

Each run finds the UTC days touched by events received since the last run and recomputes
those days wholly from the raw events, in SQL, in one transaction (delete, then
``INSERT ... SELECT ... GROUP BY``). So a second run changes nothing, and an event that
arrives days late is counted when its day is recomputed. Runs are serialized by a Postgres
advisory lock: a run that finds another in progress does nothing.

Days touched by a purge are never recomputed: some of their raw events are gone, and their
aggregates are all that is left of them.

The running totals follow the days: a day's old counts are taken away and its new ones
added, in the same transaction. A day's impressions are weighted by the examination of
their positions as estimated when the day is rolled up (`examination_by_surface`).

Every statement of a run, reads included, goes to the routers' ``db_for_write`` (`primary`):
a replica lags, and cannot see what the run's own transaction wrote.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import connections, router, transaction
from django.db.models import Sum
from django.utils import timezone

from visual_reco.choices import EventType
from visual_reco.feedback.ranking import examination
from visual_reco.models import (
    FeedbackDaily,
    FeedbackEvent,
    FeedbackPairStats,
    FeedbackPositionDaily,
    FeedbackProductStats,
    FeedbackRollup,
    FeedbackVariantDaily,
    quoted_table,
)

logger = logging.getLogger("visual_reco")

ROLLUP_TASK = "visual_reco.rollup_feedback"
WATERMARK = "daily"
PURGED = "purged"
# An event's received_at is taken before its transaction commits: one committed after a
# run started may carry an earlier time. Each run looks back this far again (recomputing a
# day twice is harmless), so request transactions shorter than this are never missed.
COMMIT_MARGIN = timedelta(minutes=5)
# pg_advisory lock key: the first eight bytes of "vr-rollup".
LOCK_KEY = int.from_bytes(b"vr-rollu", "big") >> 1


@dataclass(frozen=True)
class RollupResult:
    """What a run did: the days it recomputed (None when another run held the lock)."""

    days: list[date] | None
    watermark: datetime | None

    @property
    def skipped(self) -> bool:
        """Whether another run was in progress, so this one did nothing."""
        return self.days is None


def primary() -> str:
    """The alias the roll-up reads and writes: the routers' ``db_for_write`` of the events."""
    return router.db_for_write(FeedbackEvent)


def utc_day(when: datetime) -> date:
    """The UTC calendar day of ``when``."""
    return when.astimezone(UTC).date()


def first_recomputable_day() -> date | None:
    """The first UTC day whose raw events are all still there: the day after the latest
    purge's cutoff (None: nothing was purged, every day can be recomputed)."""
    purged = FeedbackRollup.objects.using(primary()).filter(name=PURGED).first()
    return None if purged is None else utc_day(purged.watermark) + timedelta(days=1)


def note_purge(cutoff: datetime) -> None:
    """Remember that raw events before ``cutoff`` are being deleted, so their days are
    never recomputed from what is left of them."""
    rollups = FeedbackRollup.objects.db_manager(primary())
    state = rollups.select_for_update().filter(name=PURGED).first()
    if state is None or state.watermark < cutoff:
        rollups.update_or_create(
            name=PURGED, defaults={"watermark": cutoff, "finished_at": timezone.now()})


def _count(kind: str) -> str:
    return f"count(*) FILTER (WHERE type = '{kind}')"


def examination_by_surface() -> dict[str, list[float]]:
    """How often each list position is looked at, per surface, relative to the first
    (`visual_reco.feedback.ranking.examination` of the position aggregates of every day)."""
    counts: dict[str, dict[int, tuple[int, int]]] = {}
    for row in (FeedbackPositionDaily.objects.using(primary()).values("surface", "position")
                .annotate(shown=Sum("impressions"), clicked=Sum("clicks"))):
        counts.setdefault(row["surface"], {})[row["position"]] = (row["shown"], row["clicked"])
    found = {}
    for surface, by_position in counts.items():
        last = max(by_position)
        shown = [by_position.get(position, (0, 0))[0] for position in range(1, last + 1)]
        clicked = [by_position.get(position, (0, 0))[1] for position in range(1, last + 1)]
        found[surface] = [float(weight) for weight in examination(shown, clicked)]
    return found


def _add_to_stats(cursor: Any, sign: int, days: list[date]) -> None:
    """Add (``sign`` 1) or take away (-1) the daily rows of ``days`` to the running totals."""
    daily, pairs, products = (quoted_table(FeedbackDaily), quoted_table(FeedbackPairStats),
                              quoted_table(FeedbackProductStats))
    sums = (f"{sign} * sum(impressions), {sign} * sum(examined), {sign} * sum(clicks), "
            f"{sign} * sum(add_to_carts), {sign} * sum(purchases)")
    update = ", ".join(f"{column} = {{table}}.{column} + EXCLUDED.{column}" for column in
                       ("impressions", "examined", "clicks", "add_to_carts", "purchases"))
    cursor.execute(f"""
        INSERT INTO {pairs} (surface, source, product, impressions, examined, clicks,
                             add_to_carts, purchases)
        SELECT surface, source, product, {sums} FROM {daily}
        WHERE day = ANY(%s::date[]) AND surface <> '' AND source <> ''
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (surface, source, product) DO UPDATE SET {update.format(table=pairs)}""",
                   [days])
    cursor.execute(f"""
        INSERT INTO {products} (surface, product, impressions, examined, clicks, add_to_carts,
                                purchases)
        SELECT surface, product, {sums} FROM {daily} WHERE day = ANY(%s::date[])
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (surface, product) DO UPDATE SET {update.format(table=products)}""",
                   [days])


def recompute_days(days: list[date]) -> None:
    """Replace the aggregates of ``days`` with counts of their raw events, and the running
    totals with them (call inside a transaction, under the lock)."""
    if not days:
        return
    events, daily, variants, positions = (quoted_table(FeedbackEvent), quoted_table(FeedbackDaily),
                                          quoted_table(FeedbackVariantDaily),
                                          quoted_table(FeedbackPositionDaily))
    day = "(occurred_at AT TIME ZONE 'UTC')::date"
    start = datetime.combine(min(days), datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(max(days) + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    where = f"occurred_at >= %s AND occurred_at < %s AND {day} = ANY(%s::date[])"
    with connections[primary()].cursor() as cursor:
        _add_to_stats(cursor, -1, days)
        cursor.execute(f"DELETE FROM {daily} WHERE day = ANY(%s::date[])", [days])
        cursor.execute(f"DELETE FROM {variants} WHERE day = ANY(%s::date[])", [days])
        cursor.execute(f"DELETE FROM {positions} WHERE day = ANY(%s::date[])", [days])
        cursor.execute(f"""
            INSERT INTO {positions} (day, surface, variant, position, impressions, clicks)
            SELECT {day}, surface, variant, position, {_count(EventType.IMPRESSION)},
                   {_count(EventType.CLICK)}
            FROM {events} WHERE {where} AND surface <> '' AND position IS NOT NULL
            GROUP BY 1, 2, 3, 4""", [start, end, days])
        weights = [(surface, position, weight)
                   for surface, by_position in examination_by_surface().items()
                   for position, weight in enumerate(by_position, start=1)]
        cursor.execute(f"""
            INSERT INTO {daily} (day, surface, variant, source, product, impressions, examined,
                                 clicks, add_to_carts, purchases, favorites, dismissals,
                                 revenue)
            SELECT {day}, e.surface, variant, source, product,
                   {_count(EventType.IMPRESSION)},
                   coalesce(sum(coalesce(w.weight, 1.0))
                            FILTER (WHERE type = '{EventType.IMPRESSION}'), 0),
                   {_count(EventType.CLICK)},
                   {_count(EventType.ADD_TO_CART)}, {_count(EventType.PURCHASE)},
                   {_count(EventType.FAVORITE)}, {_count(EventType.DISMISS)},
                   coalesce(sum(revenue) FILTER (WHERE type = '{EventType.PURCHASE}'), 0)
            FROM {events} e
            LEFT JOIN unnest(%s::text[], %s::int[], %s::float8[]) AS w(surface, position,
                                                                      weight)
              ON w.surface = e.surface AND w.position = e.position
            WHERE {where}
            GROUP BY 1, 2, 3, 4, 5""",
                       [[w[0] for w in weights], [w[1] for w in weights],
                        [w[2] for w in weights], start, end, days])
        cursor.execute(f"""
            INSERT INTO {variants} (day, surface, variant, visitors, clickers)
            SELECT {day}, surface, variant, count(DISTINCT visitor),
                   count(DISTINCT visitor) FILTER (WHERE type = '{EventType.CLICK}')
            FROM {events} WHERE {where} AND surface <> ''
            GROUP BY 1, 2, 3""", [start, end, days])
        _add_to_stats(cursor, 1, days)


def _touched_days(since: datetime | None, first_day: date | None) -> list[date]:
    events = quoted_table(FeedbackEvent)
    sql = f"SELECT DISTINCT (occurred_at AT TIME ZONE 'UTC')::date AS d FROM {events}"
    params: list[object] = []
    if since is not None:
        sql += " WHERE received_at >= %s"
        params.append(since - COMMIT_MARGIN)
    with connections[primary()].cursor() as cursor:
        cursor.execute(sql + " ORDER BY d", params)
        return [row[0] for row in cursor.fetchall() if first_day is None or row[0] >= first_day]


def rollup(*, wait: bool = False) -> RollupResult:
    """Recompute the days touched by events received since the last run; idempotent.
    Another run in progress makes this one do nothing, or, with ``wait``, wait for it."""
    using = primary()
    with transaction.atomic(using=using):
        with connections[using].cursor() as cursor:
            if wait:
                cursor.execute("SELECT pg_advisory_xact_lock(%s), true", [LOCK_KEY])
            else:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [LOCK_KEY])
            if not cursor.fetchone()[-1]:
                logger.info("Feedback roll-up skipped: another run is in progress")
                return RollupResult(None, None)
        started = timezone.now()
        rollups = FeedbackRollup.objects.db_manager(using)
        state = rollups.filter(name=WATERMARK).first()
        days = _touched_days(state.watermark if state else None, first_recomputable_day())
        recompute_days(days)
        rollups.update_or_create(
            name=WATERMARK, defaults={"watermark": started, "finished_at": timezone.now(),
                                      "days": len(days)})
    return RollupResult(days, started)
