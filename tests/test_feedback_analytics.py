"""Feedback analytics: statistics, the daily roll-up (against a hand count, run twice, late
events, the lock), the admin page and its CSV, retention and forgetting a visitor."""

import csv
import io
import random
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connections
from django.utils import timezone

from visual_reco.feedback import stats
from visual_reco.feedback.analytics import report
from visual_reco.feedback.ranking import examination
from visual_reco.feedback.retention import forget_visitor, parse_age, purge_events
from visual_reco.feedback.rollup import LOCK_KEY, examination_by_surface, rollup, utc_day
from visual_reco.feedback.visitors import visitor_key
from visual_reco.models import (
    FeedbackDaily,
    FeedbackEvent,
    FeedbackPairStats,
    FeedbackPositionDaily,
    FeedbackProductStats,
    FeedbackVariantDaily,
)
from visual_reco.tasks import purge_feedback_task, rollup_feedback_task

ANALYTICS = "/admin/visual_reco/feedbackdaily/"
TYPES = ["impression"] * 12 + ["click"] * 4 + ["add_to_cart", "purchase", "favorite", "dismiss"]
COUNTS = {"impression": "impressions", "click": "clicks", "add_to_cart": "add_to_carts",
          "purchase": "purchases", "favorite": "favorites", "dismiss": "dismissals"}
EXPERIMENT = {"similar": {"VARIANTS": {"control": {"SHARE": 50}, "boosted": {"SHARE": 50}}}}


# statistics
def test_wilson_interval():
    low, high = stats.wilson(10, 100)
    assert (round(low, 4), round(high, 4)) == (0.0552, 0.1744)
    assert stats.wilson(0, 0) == (0.0, 0.0)
    low, high = stats.wilson(0, 50)
    assert low == 0.0 and 0.07 < high < 0.072


def test_chi_square_survival_function():
    assert stats.chi2_sf(3.84, 1) == pytest.approx(0.05, abs=1e-3)
    assert stats.chi2_sf(11.34, 3) == pytest.approx(0.01, abs=1e-3)
    assert stats.chi2_sf(0.5, 2) == pytest.approx(0.7788007831, rel=1e-9)  # exp(-x/2)
    assert stats.chi2_sf(23.21, 10) == pytest.approx(0.01, abs=1e-3)
    assert stats.chi2_sf(0, 4) == 1.0 and stats.chi2_sf(200, 2) < 1e-40


def test_two_proportion_test_and_sample_size():
    # 100/1000 vs 130/1000: z = 2.10, two-sided p = 0.0355.
    assert stats.two_proportion_p(100, 1000, 130, 1000) == pytest.approx(0.0355, abs=5e-4)
    assert stats.two_proportion_p(0, 10, 0, 10) is None
    assert stats.two_proportion_p(1, 0, 1, 10) is None
    # 10% vs 12% at alpha 0.05 two-sided and power 0.8: 3841 per arm (G*Power, statsmodels'
    # unpooled formula gives the same within one).
    assert stats.sample_size_per_arm(0.10, 0.12) == 3841
    assert stats.sample_size_per_arm(0.1, 0.1) is None
    assert stats.normal_ppf(0.975) == pytest.approx(1.959964, abs=1e-6)


def test_sample_ratio_mismatch():
    fine = stats.sample_ratio_check([5030, 4970], [50, 50])
    assert not fine.mismatch and fine.p_value == pytest.approx(0.5485, abs=1e-3)
    broken = stats.sample_ratio_check([5300, 4700], [50, 50])
    assert broken.statistic == pytest.approx(36.0) and broken.mismatch
    uneven = stats.sample_ratio_check([900, 100, 1000], [45, 5, 50])
    assert uneven.statistic == pytest.approx(0) and not uneven.mismatch
    assert stats.sample_ratio_check([10], [100]) is None


# the roll-up
def make_events(count, days=5, seed=7, now=None):
    """``count`` random events over the last ``days`` days (two surfaces, variants,
    sources, products and a few visitors); returns them as stored."""
    rng = random.Random(seed)
    now = now or timezone.now()
    rows = []
    for n in range(count):
        kind = rng.choice(TYPES)
        surface = rng.choice(["similar", "similar", "photo_search", ""])
        rows.append(FeedbackEvent(
            type=kind, occurred_at=now - timedelta(days=rng.randrange(days),
                                                   minutes=rng.randrange(24 * 60)),
            visitor=f"{rng.randrange(40):032x}", event_id=f"e{seed}-{n}", surface=surface,
            variant=rng.choice(["control", "boosted"]) if surface else "",
            source=str(rng.randrange(3)) if surface else "", product=str(rng.randrange(6)),
            position=rng.randrange(1, 9) if surface else None,
            revenue=Decimal(rng.randrange(100, 5000)) / 100 if kind == "purchase" else None))
    return FeedbackEvent.objects.bulk_create(rows)


def hand_count(events):
    daily = defaultdict(Counter)
    revenue = defaultdict(Decimal)
    visitors = defaultdict(set)
    clickers = defaultdict(set)
    for e in events:
        day = e.occurred_at.astimezone(UTC).date()
        key = (day, e.surface, e.variant, e.source, e.product)
        daily[key][COUNTS[e.type]] += 1
        if e.type == "purchase":
            revenue[key] += e.revenue
        if e.surface:
            visitors[(day, e.surface, e.variant)].add(e.visitor)
            if e.type == "click":
                clickers[(day, e.surface, e.variant)].add(e.visitor)
    return ({key: {**{c: counts[c] for c in COUNTS.values()}, "revenue": revenue[key]}
             for key, counts in daily.items()},
            {key: (len(seen), len(clickers[key])) for key, seen in visitors.items()})


def stored():
    daily = {(r.day, r.surface, r.variant, r.source, r.product):
             {**{c: getattr(r, c) for c in COUNTS.values()}, "revenue": r.revenue}
             for r in FeedbackDaily.objects.all()}
    variants = {(r.day, r.surface, r.variant): (r.visitors, r.clickers)
                for r in FeedbackVariantDaily.objects.all()}
    return daily, variants


@pytest.mark.django_db
def test_the_rollup_counts_impressions_and_clicks_by_position():
    events = make_events(400, seed=11)
    rollup()
    expected = Counter()
    for e in events:
        if e.surface and e.type in ("impression", "click"):
            expected[(e.occurred_at.astimezone(UTC).date(), e.surface, e.variant, e.position,
                      e.type)] += 1
    stored_rows = Counter()
    for r in FeedbackPositionDaily.objects.all():
        for kind, count in (("impression", r.impressions), ("click", r.clicks)):
            if count:
                stored_rows[(r.day, r.surface, r.variant, r.position, kind)] = count
    assert stored_rows == expected and expected


@pytest.mark.django_db
def test_the_rollup_matches_a_hand_count():
    events = make_events(400)
    result = rollup()
    assert result.days == sorted({e.occurred_at.astimezone(UTC).date() for e in events})
    expected_daily, expected_variants = hand_count(events)
    daily, variants = stored()
    assert daily == expected_daily
    assert variants == expected_variants
    assert sum(r["impressions"] for r in daily.values()) == sum(
        e.type == "impression" for e in events)


@pytest.mark.django_db
def test_running_the_rollup_twice_changes_nothing():
    make_events(300)
    rollup()
    first = stored()
    again = rollup()  # the same days again (within the commit margin): same counts
    assert stored() == first and again.days
    FeedbackEvent.objects.update(received_at=timezone.now() - timedelta(hours=1))
    rollup()
    assert rollup().days == [] and stored() == first  # nothing new: nothing recomputed


def running_totals():
    columns = ("impressions", "examined", "clicks", "add_to_carts", "purchases")
    pairs = {(r.surface, r.source, r.product): tuple(round(getattr(r, c), 6) for c in columns)
             for r in FeedbackPairStats.objects.all() if any(getattr(r, c) for c in columns)}
    products = {(r.surface, r.product): tuple(round(getattr(r, c), 6) for c in columns)
                for r in FeedbackProductStats.objects.all() if any(getattr(r, c) for c in columns)}
    return pairs, products


def totals_of_daily_rows():
    pairs, products = defaultdict(lambda: [0] * 5), defaultdict(lambda: [0] * 5)
    for r in FeedbackDaily.objects.all():
        counts = (r.impressions, r.examined, r.clicks, r.add_to_carts, r.purchases)
        for key, table in (((r.surface, r.source, r.product), pairs),
                           ((r.surface, r.product), products)):
            if table is pairs and not (r.surface and r.source):
                continue
            table[key] = [a + b for a, b in zip(table[key], counts, strict=True)]
    return ({k: tuple(round(v, 6) for v in c) for k, c in pairs.items() if any(c)},
            {k: tuple(round(v, 6) for v in c) for k, c in products.items() if any(c)})


@pytest.mark.django_db
def test_the_running_totals_follow_the_days_they_sum():
    make_events(400, seed=3)
    rollup()
    assert running_totals() == totals_of_daily_rows() and running_totals()[0]
    rollup()  # the same days replaced again: the totals must not double
    make_events(150, seed=4)  # more events on days already rolled up
    rollup()
    assert running_totals() == totals_of_daily_rows()
    assert sum(r.impressions for r in FeedbackProductStats.objects.all()) == (
        FeedbackEvent.objects.filter(type="impression").count())


@pytest.mark.django_db
def test_examined_views_weigh_impressions_by_their_position():
    events = make_events(500, seed=5)
    rollup()
    weights = examination_by_surface()
    by_position = defaultdict(lambda: [0, 0])
    for e in events:
        if e.surface == "similar" and e.type in ("impression", "click"):
            by_position[e.position][e.type == "click"] += 1
    last = max(by_position)
    expected = examination([by_position[p][0] for p in range(1, last + 1)],
                           [by_position[p][1] for p in range(1, last + 1)])
    assert weights["similar"] == pytest.approx(list(expected))
    row = FeedbackDaily.objects.filter(surface="similar", impressions__gt=1).first()
    shown = [e for e in events if (e.occurred_at.astimezone(UTC).date(), e.surface, e.variant,
                                   e.source, e.product, e.type)
             == (row.day, row.surface, row.variant, row.source, row.product, "impression")]
    assert row.examined == pytest.approx(sum(expected[e.position - 1] for e in shown))
    assert row.examined < row.impressions or all(e.position == 1 for e in shown)


@pytest.mark.django_db
def test_late_events_are_counted():
    events = make_events(200)
    FeedbackEvent.objects.update(received_at=timezone.now() - timedelta(hours=1))
    rollup()
    late_day = timezone.now() - timedelta(days=3)
    late = FeedbackEvent.objects.create(
        type="click", occurred_at=late_day, visitor="f" * 32, event_id="late",
        surface="similar", variant="boosted", source="1", product="2")
    result = rollup()
    assert result.days == [late_day.astimezone(UTC).date()]
    assert stored() == hand_count([*events, late])
    FeedbackEvent.objects.update(received_at=timezone.now() - timedelta(hours=1))
    # A day older than the retention whose events were never purged is still counted.
    old = timezone.now() - timedelta(days=200)
    FeedbackEvent.objects.create(type="click", occurred_at=old, visitor="e" * 32,
                                 event_id="old", surface="similar", variant="control",
                                 product="1")
    assert rollup().days == [old.astimezone(UTC).date()]
    assert FeedbackDaily.objects.get(day=old.astimezone(UTC).date()).clicks == 1


@pytest.mark.django_db
def test_a_rollup_in_progress_makes_another_wait_its_turn():
    make_events(20)
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
        assert rollup().skipped and not FeedbackDaily.objects.exists()
        call_command("visual_reco_rollup_feedback", stdout=(out := io.StringIO()))
        assert "Another roll-up" in out.getvalue()
    finally:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
        other.close()
    assert not rollup().skipped and FeedbackDaily.objects.exists()


@pytest.mark.django_db
def test_the_tasks_and_the_command_roll_up():
    make_events(30, days=2)
    days = rollup_feedback_task()["days"]
    assert 2 <= len(days) <= 3
    out = io.StringIO()
    call_command("visual_reco_rollup_feedback", stdout=out)
    assert f"Recomputed {len(days)} day(s)" in out.getvalue()
    assert rollup_feedback_task.name == "visual_reco.rollup_feedback"
    assert purge_feedback_task.name == "visual_reco.purge_feedback"


# analytics and the admin page
def experiment_events(now, control=(1000, 100), boosted=(1000, 140), visitors=(60, 60)):
    """Impressions and clicks of a 50/50 test on ``similar`` over three days."""
    rows, n = [], 0
    for variant, (impressions, clicks), people in (("control", control, visitors[0]),
                                                   ("boosted", boosted, visitors[1])):
        for i in range(impressions):
            rows.append(FeedbackEvent(
                type="click" if i < clicks else "impression",
                occurred_at=now - timedelta(days=i % 3, minutes=1), visitor=f"{i % people:032x}",
                event_id=f"x{n}", surface="similar", variant=variant, source="1",
                product=str(i % 5)))
            n += 1
        # Clicks are counted separately from impressions: add the impressions they follow.
        for i in range(clicks):
            rows.append(FeedbackEvent(
                type="impression", occurred_at=now - timedelta(days=i % 3, minutes=2),
                visitor=f"{i % people:032x}", event_id=f"y{n}", surface="similar",
                variant=variant, source="1", product=str(i % 5)))
            n += 1
    rows.append(FeedbackEvent(type="purchase", occurred_at=now - timedelta(minutes=1),
                              visitor="0" * 32, event_id="buy", surface="similar",
                              variant="boosted", source="1", product="3",
                              revenue=Decimal("59.90")))
    FeedbackEvent.objects.bulk_create(rows)


@pytest.fixture
def experiment(settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "FEEDBACK": {"EXPERIMENTS": EXPERIMENT}}


@pytest.fixture
def staff_client(client):
    user = get_user_model().objects.create_superuser("staff", "staff@example.com", "pw")
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_the_report_reads_the_aggregates(experiment):
    now = timezone.now()
    experiment_events(now)
    rollup()
    FeedbackEvent.objects.all().delete()  # the report must not need the raw events
    result = report(now.date() - timedelta(days=27), now.date())
    (surface,) = result.surfaces
    control, boosted = surface.arms
    assert (control.variant, control.control, boosted.variant) == ("control", True, "boosted")
    assert (control.impressions, control.clicks) == (1000, 100)
    assert (boosted.impressions, boosted.clicks, boosted.purchases) == (1000, 140, 1)
    assert boosted.revenue == Decimal("59.90")
    assert boosted.p_value == pytest.approx(stats.two_proportion_p(100, 1000, 140, 1000))
    needed = stats.sample_size_per_arm(0.10, 0.14)
    assert boosted.still_needed == max(0, needed - 1000)
    assert control.visitors == 60  # visitor-days; here each key is seen on one day only
    assert surface.sample_ratio is not None and not surface.sample_ratio.mismatch


@pytest.mark.django_db
def test_the_admin_page_shows_the_numbers_and_the_chart(staff_client, experiment):
    now = timezone.now()
    experiment_events(now)
    rollup()
    page = staff_client.get(ANALYTICS)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Feedback analytics" in html and "<svg" in html and "<polyline" in html
    assert ">1000<" in html and ">140<" in html and "14.00%" in html and "10.00%" in html
    assert "59.90" in html and 'class="control">control<' in html
    low, high = stats.wilson(140, 1000)
    assert f"{low * 100:.2f}%" in html and f"{high * 100:.2f}%" in html
    assert "Sample ratio check passed" in html and "Sample ratio mismatch" not in html
    assert "export.csv" in html
    index = staff_client.get("/admin/").content.decode()
    assert ANALYTICS in index and "Feedback analytics" in index
    earlier = staff_client.get(ANALYTICS, {"start": "2020-01-01", "end": "2020-01-31"})
    assert "No feedback in these days" in earlier.content.decode()
    bad = staff_client.get(ANALYTICS, {"start": "yesterday"})
    assert bad.status_code == 200 and "is not a date" in bad.content.decode()


@pytest.mark.django_db
def test_the_admin_page_warns_of_a_sample_ratio_mismatch(staff_client, experiment):
    experiment_events(timezone.now(), visitors=(200, 120))
    rollup()
    html = staff_client.get(ANALYTICS).content.decode()
    assert "Sample ratio mismatch" in html


@pytest.mark.django_db
def test_the_csv_export_has_the_same_table(staff_client, experiment):
    experiment_events(timezone.now())
    rollup()
    response = staff_client.get(ANALYTICS + "export.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [(r["variant"], r["impressions"], r["clicks"]) for r in rows] == [
        ("control", "1000", "100"), ("boosted", "1000", "140")]
    assert rows[0]["control"] == "yes" and rows[1]["revenue"] == "59.90"
    assert float(rows[1]["ctr"]) == pytest.approx(0.14)
    assert float(rows[1]["ctr_low"]) == pytest.approx(stats.wilson(140, 1000)[0], abs=1e-6)
    assert float(rows[1]["p_value_vs_control"]) == pytest.approx(
        stats.two_proportion_p(100, 1000, 140, 1000), abs=1e-6)


@pytest.mark.django_db
def test_the_admin_page_is_for_staff_only(client):
    assert client.get(ANALYTICS).status_code == 302
    assert client.get(ANALYTICS + "export.csv").status_code == 302
    clerk = get_user_model().objects.create_user("clerk", password="pw", is_staff=True)
    client.force_login(clerk)
    assert client.get(ANALYTICS).status_code == 403
    assert client.get(ANALYTICS + "export.csv").status_code == 403


# retention and rights
def test_ages_are_parsed():
    assert parse_age("90d") == timedelta(days=90)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age(" 30m ") == timedelta(minutes=30)
    for bad in ("90", "d", "1w", "-3d"):
        with pytest.raises(ValueError):
            parse_age(bad)


@pytest.mark.django_db
def test_purging_deletes_old_raw_events_in_batches_and_keeps_the_aggregates():
    now = timezone.now()
    old = make_events(60, days=3, seed=1, now=now - timedelta(days=100))
    recent = make_events(40, days=3, seed=2, now=now)
    rollup()
    before = stored()
    assert purge_events(batch_size=7) == len(old)
    assert FeedbackEvent.objects.count() == len(recent)
    assert stored() == before  # the aggregates survive, and old days are never recomputed
    out = io.StringIO()
    call_command("visual_reco_purge_events", "--older-than", "12h", stdout=out)
    young = sum(e.occurred_at > now - timedelta(hours=12) for e in recent)
    assert FeedbackEvent.objects.count() == young
    assert f"Deleted {len(recent) - young} raw event(s)" in out.getvalue()
    # A late event on a partly purged day does not recompute that day from what is left.
    # (Days after the purge's cutoff day may be recomputed, from events all still there:
    # the recent ones were received within the roll-up's commit margin.)
    late = now - timedelta(days=1)
    FeedbackEvent.objects.create(type="click", occurred_at=late, visitor="a" * 32,
                                 event_id="late", product="1")
    recomputed = rollup().days
    assert all(day > utc_day(late) for day in recomputed) and stored() == before
    with pytest.raises(CommandError, match="not an age"):
        call_command("visual_reco_purge_events", "--older-than", "ninety days")


@pytest.mark.django_db(transaction=True)
def test_a_purge_waits_for_a_rollup_in_progress_before_deleting():
    old = make_events(40, days=2, now=timezone.now() - timedelta(days=100))
    other = connections.create_connection("default")
    with other.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
    done = []

    def purge():
        try:
            done.append(purge_events())
        finally:
            connections.close_all()

    worker = threading.Thread(target=purge)
    worker.start()
    time.sleep(0.5)
    assert worker.is_alive() and FeedbackEvent.objects.count() == len(old)
    with other.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
    other.close()
    worker.join(10)
    assert done == [len(old)]
    assert sum(r.impressions + r.clicks + r.add_to_carts + r.purchases + r.favorites
               + r.dismissals for r in FeedbackDaily.objects.all()) == len(old)


@pytest.mark.django_db
def test_the_purge_task_uses_the_retention_setting(settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "FEEDBACK": {"RETENTION_DAYS": 2}}
    make_events(30, days=6)
    kept = FeedbackEvent.objects.filter(occurred_at__gte=timezone.now() - timedelta(days=2))
    expected = kept.count()
    purge_feedback_task()
    assert FeedbackEvent.objects.count() == expected


@pytest.mark.django_db
def test_forgetting_a_visitor_by_key_or_by_cookie_id(settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO,
                            "FEEDBACK": {"VISITOR_KEY_ROTATION_DAYS": 7}}
    now = timezone.now()
    raw = "visitor-id-0123456789abcdef"
    keys = {visitor_key(raw, now - timedelta(days=days)) for days in (0, 10, 40, 80)}
    assert len(keys) == 4  # four rotation periods
    for n, key in enumerate(sorted(keys)):
        FeedbackEvent.objects.create(type="click", occurred_at=now - timedelta(days=n),
                                     visitor=key, event_id=f"v{n}", surface="similar",
                                     variant="control", product="1")
    someone = make_events(30, days=2)
    rollup()
    aggregates = stored()
    result = forget_visitor(raw)
    assert result.events == 4 and keys <= set(result.keys)
    assert FeedbackEvent.objects.count() == len(someone)
    assert stored() == aggregates  # aggregates hold no visitor: unchanged
    target = someone[0].visitor
    mine = FeedbackEvent.objects.filter(visitor=target).count()
    out = io.StringIO()
    call_command("visual_reco_forget_visitor", target, stdout=out)
    assert f"Deleted {mine} raw event(s)" in out.getvalue()
    assert "Not erased: the daily aggregates" in out.getvalue()
    assert not FeedbackEvent.objects.filter(visitor=target).exists()
    with pytest.raises(CommandError, match="neither"):
        call_command("visual_reco_forget_visitor", "not a key!")

