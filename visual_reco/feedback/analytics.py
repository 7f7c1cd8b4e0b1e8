"""A/B analytics from the daily aggregates (never the raw events): per surface and variant
the counts, rates with Wilson intervals, the test against the control, the sample-ratio
check, a daily CTR chart as inline SVG, and the same table as CSV.

CTR is clicks per impression; the add-to-cart and purchase rates are per click (carts and
purchases are credited to the list that was clicked); revenue is that of attributed
purchases.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from django.db.models import Sum
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from visual_reco.feedback.experiments import CONTROL, active, variants
from visual_reco.feedback.stats import (
    SampleRatio,
    sample_ratio_check,
    sample_size_per_arm,
    two_proportion_p,
    wilson,
)
from visual_reco.models import FeedbackDaily, FeedbackVariantDaily

DEFAULT_DAYS = 28
COLOURS = ["#417690", "#d9822b", "#2e8540", "#ba2121", "#7b5ea7", "#6e7781"]
CSV_COLUMNS = ["surface", "variant", "control", "visitors", "impressions", "clicks", "ctr",
               "ctr_low", "ctr_high", "add_to_carts", "cart_rate_per_click", "purchases",
               "purchase_rate_per_click", "revenue", "p_value_vs_control",
               "impressions_still_needed_per_arm"]


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.2f}%"


@dataclass
class Arm:
    """One variant of one surface over the period."""

    surface: str
    variant: str
    control: bool = False
    visitors: int = 0
    impressions: int = 0
    clicks: int = 0
    add_to_carts: int = 0
    purchases: int = 0
    revenue: Decimal = Decimal("0.00")
    p_value: float | None = None
    still_needed: int | None = None

    @property
    def ctr(self) -> float | None:
        """Clicks per impression."""
        return _rate(self.clicks, self.impressions)

    @property
    def ctr_interval(self) -> tuple[float, float]:
        """The 95% Wilson interval of the CTR."""
        return wilson(self.clicks, self.impressions)

    @property
    def cart_rate(self) -> float | None:
        """Adds to cart per click."""
        return _rate(self.add_to_carts, self.clicks)

    @property
    def purchase_rate(self) -> float | None:
        """Purchases per click."""
        return _rate(self.purchases, self.clicks)

    @property
    def ctr_text(self) -> str:
        """The CTR as a percentage."""
        return _percent(self.ctr)

    @property
    def interval_text(self) -> str:
        """The CTR's Wilson interval as percentages."""
        low, high = self.ctr_interval
        return f"{_percent(low)} – {_percent(high)}"

    @property
    def cart_rate_text(self) -> str:
        """Adds to cart per click as a percentage."""
        return _percent(self.cart_rate)

    @property
    def purchase_rate_text(self) -> str:
        """Purchases per click as a percentage."""
        return _percent(self.purchase_rate)


@dataclass
class Surface:
    """The arms of one surface, its sample-ratio check and its daily CTR per variant."""

    name: str
    arms: list[Arm]
    shares: dict[str, float]
    sample_ratio: SampleRatio | None = None
    daily: dict[str, list[tuple[date, float | None]]] = field(default_factory=dict)

    @property
    def control(self) -> Arm | None:
        """The arm the others are tested against."""
        return next((arm for arm in self.arms if arm.control), None)


@dataclass
class Report:
    """Analytics of the days ``start`` to ``end`` (both included)."""

    start: date
    end: date
    surfaces: list[Surface]
    unattributed: int = 0


def default_period(today: date) -> tuple[date, date]:
    """The last ``DEFAULT_DAYS`` days, today included."""
    return today - timedelta(days=DEFAULT_DAYS - 1), today


def _ordered_variants(surface: str, seen: set[str]) -> tuple[list[str], dict[str, float], str]:
    configured = variants(surface)
    names = [variant.name for variant in configured if variant.name in seen or active(surface)]
    names += sorted(seen - set(names))
    shares = ({variant.name: variant.share for variant in configured} if active(surface)
              else {})
    control = configured[0].name if configured[0].name in names else (
        CONTROL if CONTROL in names else (names[0] if names else CONTROL))
    return names, shares, control


def report(start: date, end: date) -> Report:
    """The analytics of ``start`` to ``end`` from the aggregates."""
    rows = (FeedbackDaily.objects.filter(day__gte=start, day__lte=end)
            .values("surface", "variant")
            .annotate(impressions=Sum("impressions"), clicks=Sum("clicks"),
                      add_to_carts=Sum("add_to_carts"), purchases=Sum("purchases"),
                      revenue=Sum("revenue")))
    visitors = {(row["surface"], row["variant"]): row["visitors"] for row in
                FeedbackVariantDaily.objects.filter(day__gte=start, day__lte=end)
                .values("surface", "variant").annotate(visitors=Sum("visitors"))}
    daily = defaultdict(dict)
    for row in (FeedbackDaily.objects.filter(day__gte=start, day__lte=end).exclude(surface="")
                .values("surface", "variant", "day")
                .annotate(impressions=Sum("impressions"), clicks=Sum("clicks"))):
        daily[row["surface"]][(row["variant"], row["day"])] = (row["clicks"],
                                                                row["impressions"])
    by_surface: dict[str, dict[str, dict]] = defaultdict(dict)
    unattributed = 0
    for row in rows:
        if not row["surface"]:
            unattributed += row["purchases"] + row["add_to_carts"] + row["clicks"]
            continue
        by_surface[row["surface"]][row["variant"]] = row
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    surfaces = []
    for name in sorted(set(by_surface) | {s for s, _ in visitors}):
        found = by_surface.get(name, {})
        names, shares, control = _ordered_variants(
            name, set(found) | {v for s, v in visitors if s == name})
        arms = []
        for variant in names:
            row = found.get(variant, {})
            arms.append(Arm(name, variant, variant == control, visitors.get((name, variant), 0),
                            row.get("impressions") or 0, row.get("clicks") or 0,
                            row.get("add_to_carts") or 0, row.get("purchases") or 0,
                            row.get("revenue") or Decimal("0.00")))
        surface = Surface(name, arms, shares)
        _test_against_control(surface)
        if len(shares) > 1:
            surface.sample_ratio = sample_ratio_check(
                [visitors.get((name, variant), 0) for variant in shares], list(shares.values()))
        for variant in names:
            points = []
            for day in days:
                clicks, impressions = daily[name].get((variant, day), (0, 0))
                points.append((day, _rate(clicks, impressions)))
            surface.daily[variant] = points
        surfaces.append(surface)
    return Report(start, end, surfaces, unattributed)


def _test_against_control(surface: Surface) -> None:
    control = surface.control
    if control is None:
        return
    for arm in surface.arms:
        if arm is control:
            continue
        arm.p_value = two_proportion_p(control.clicks, control.impressions, arm.clicks,
                                       arm.impressions)
        if control.ctr is None or arm.ctr is None:
            continue
        needed = sample_size_per_arm(control.ctr, arm.ctr)
        if needed is not None:
            arm.still_needed = max(0, needed - min(control.impressions, arm.impressions))


def _fmt(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def to_csv(result: Report) -> str:
    """The report's table as CSV, one row per surface and variant."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for surface in result.surfaces:
        for arm in surface.arms:
            low, high = arm.ctr_interval
            writer.writerow([
                arm.surface, arm.variant, "yes" if arm.control else "", arm.visitors,
                arm.impressions, arm.clicks, _fmt(arm.ctr), _fmt(low), _fmt(high),
                arm.add_to_carts, _fmt(arm.cart_rate), arm.purchases, _fmt(arm.purchase_rate),
                f"{arm.revenue:.2f}", _fmt(arm.p_value),
                "" if arm.still_needed is None else arm.still_needed])
    return out.getvalue()


def ctr_chart(surface: Surface, width: int = 900, height: int = 240) -> SafeString:
    """Daily CTR per variant of ``surface`` as an inline SVG line chart (days without
    impressions leave a gap)."""
    left, right, top, bottom = 56, 150, 14, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [ctr for points in surface.daily.values() for _, ctr in points if ctr is not None]
    peak = max(values, default=0) or 0.01
    step = _nice_step(peak / 4)
    peak = step * max(1, -(-peak // step))
    days = next(iter(surface.daily.values()), [])
    count = max(len(days) - 1, 1)

    def x(index: int) -> float:
        return left + plot_w * index / count

    def y(value: float) -> float:
        return top + plot_h * (1 - value / peak)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="Daily CTR of '
             f'{escape(surface.name)} per variant" font-family="sans-serif" font-size="11">']
    tick = 0.0
    while tick <= peak + step / 2:
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" '
                     f'y2="{y(tick):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" '
                     f'fill="#666">{tick * 100:.{_decimals(step)}f}%</text>')
        tick += step
    label_every = max(1, len(days) // 7)
    for index, (day, _) in enumerate(days):
        if index % label_every == 0 or index == len(days) - 1:
            parts.append(f'<text x="{x(index):.1f}" y="{height - 10}" text-anchor="middle" '
                         f'fill="#666">{day:%b %d}</text>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" '
                 f'stroke="#999"/><line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" '
                 f'y2="{top + plot_h}" stroke="#999"/>')
    for number, (variant, points) in enumerate(surface.daily.items()):
        colour = COLOURS[number % len(COLOURS)]
        segment: list[str] = []
        for index, (_, ctr) in enumerate([*points, (None, None)]):
            if ctr is not None:
                segment.append(f"{x(index):.1f},{y(ctr):.1f}")
                continue
            if len(segment) > 1:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                             f'points="{" ".join(segment)}"/>')
            elif segment:
                px, py = segment[0].split(",")
                parts.append(f'<circle cx="{px}" cy="{py}" r="2.5" fill="{colour}"/>')
            segment = []
        legend_y = top + 14 + number * 18
        parts.append(f'<rect x="{left + plot_w + 16}" y="{legend_y - 9}" width="14" '
                     f'height="3" fill="{colour}"/><text x="{left + plot_w + 36}" '
                     f'y="{legend_y - 4}" fill="#333">{escape(variant or "(none)")}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every interpolated text above is escaped


def _nice_step(raw: float) -> float:
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _decimals(step: float) -> int:
    percent = step * 100
    return 0 if percent >= 1 and float(percent).is_integer() else (1 if percent >= 0.1 else 2)
