"""``manage.py feedback_simulation``: simulated shoppers on the Magento Luma catalog, through
the real API, events and roll-up (`demo_shop.bench.feedback_sim`), comparing the ranking
variants round by round; writes docs/FEEDBACK.md and its plot.

The run has a database of its own (``visual_reco_feedback_sim``, created and migrated at the
start, dropped at the end), so neither the demo's events nor its products take part. The
catalog is one product per Luma style and colour, embedded with the configured embedder;
the vectors are kept in ``.cache/feedback-sim`` by embedder fingerprint, so only the first
run embeds the photos.
"""

from __future__ import annotations

import csv
import json
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.test.utils import override_settings
from django.utils import timezone

from demo_shop.bench.feedback_sim import (
    PICKS_SURFACE,
    SCENARIOS,
    SIMILAR_SURFACE,
    Catalog,
    Options,
    Simulator,
    colour_family,
    lift,
    log_counts,
    picks_url,
    rollup_counts,
    summarize,
)
from demo_shop.bench.helpers import machine_line
from demo_shop.catalog import folder_items
from demo_shop.shop.models import Product
from visual_reco.choices import EmbeddingStatus
from visual_reco.conf import DEFAULTS, reco_settings
from visual_reco.embedders import get_embedder
from visual_reco.evaluation.embedding import embed_paths
from visual_reco.models import (
    FeedbackDaily,
    FeedbackEvent,
    FeedbackPairStats,
    FeedbackPositionDaily,
    FeedbackProductStats,
    FeedbackRollup,
    FeedbackVariantDaily,
)
from visual_reco.registry import get_embedding_field

DATABASE = "visual_reco_feedback_sim"
# The similar list's A/B variants: name -> (RANKING overrides, available?). "learned" needs
# the learned model (RANKING["LEARNED"]); it is left out while visual_reco has none.
SIMILAR_VARIANTS: dict[str, dict[str, Any]] = {
    "visual": {"RERANK": False},
    "reranked": {"RERANK": True},
    "learned": {"RERANK": True, "LEARNED": True},
}
# Picked for you against best-sellers, when the shop has the endpoint; the variants'
# options are those of the picks' settings.
PICKS_VARIANTS: dict[str, dict[str, Any]] = {
    "bestsellers": {"PICKS": {"PERSONAL": False}},
    "picked": {"PICKS": {"PERSONAL": True}},
}
BASELINE = {SIMILAR_SURFACE: "visual", PICKS_SURFACE: "bestsellers"}
LEARN_COMMAND = "visual_reco_learn"
EARLY_ROUNDS = 3
GOAL_RERANK = 0.20
PLOT = "feedback_ctr.png"
TABLES = [FeedbackEvent, FeedbackDaily, FeedbackVariantDaily, FeedbackPositionDaily,
          FeedbackPairStats, FeedbackProductStats, FeedbackRollup]


def learned_available() -> bool:
    """Whether visual_reco has the learned re-ranking (a ``LEARNED`` ranking option)."""
    return "LEARNED" in DEFAULTS["RANKING"]


@contextmanager
def own_database(name: str) -> Iterator[None]:
    """Run inside a fresh database ``name`` on the configured server (migrated; dropped
    after), as Django's test runner makes its test database."""
    conn = connections[DEFAULT_DB_ALIAS]
    conn.settings_dict.setdefault("TEST", {})["NAME"] = name
    old = conn.settings_dict["NAME"]
    conn.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        yield
    finally:
        conn.creation.destroy_test_db(old, verbosity=0)


def luma_colours(folder: Path) -> dict[str, str]:
    """The colour of each Luma product (by the SKU `demo_shop.catalog` gives it)."""
    with open(folder / "labels.csv", newline="") as handle:
        return {"-".join(filter(None, [row["style"], row["colour"]])): row["colour"]
                for row in csv.DictReader(handle) if row["view"] == "main"}


def cached_vectors(paths: list[Path], cache: Path) -> tuple[list[Path], np.ndarray]:
    """Vectors of ``paths`` by the configured embedder, from ``cache`` when it holds this
    embedder's vectors of these files; embedded (and cached) otherwise."""
    fingerprint = get_embedder().fingerprint
    stamp = fingerprint.rsplit(":", 1)[-1]
    path = cache / f"luma-{stamp}.npz"
    names = [str(p) for p in paths]
    if path.exists():
        stored = np.load(path, allow_pickle=False)
        if list(stored["paths"]) == names and str(stored["fingerprint"]) == fingerprint:
            return paths, stored["vectors"]
    found = embed_paths(paths, progress=False)
    index = found.index
    kept = [p for p in paths if p in index]
    vectors = np.stack([found.vectors[index[p]] for p in kept])
    if len(kept) == len(paths):
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, paths=np.array(names), vectors=vectors, fingerprint=fingerprint)
    return kept, vectors


def load_luma(folder: Path, cache: Path) -> tuple[Catalog, float]:
    """Import the Luma catalog (one product per style and colour) with its vectors into the
    current database; return the simulation's view of it and the seconds it took."""
    started = time.perf_counter()
    items = folder_items(folder)
    colours = luma_colours(folder)
    paths, vectors = cached_vectors([item.path for item in items], cache)
    by_path = {item.path: item for item in items}
    field = get_embedding_field(Product)
    fingerprint = get_embedder().fingerprint
    now = timezone.now()
    products = []
    for path, vector in zip(paths, vectors, strict=True):
        item = by_path[path]
        product = Product(sku=item.sku, name=item.name, category=item.category,
                          price=20 + sum(item.sku.encode()) % 60, image=f"luma/{path.name}")
        for name, value in field.state(EmbeddingStatus.READY, vector=vector,
                                       fingerprint=fingerprint, at=now).items():
            setattr(product, name, value)
        products.append(product)
    Product.objects.bulk_create(products)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Product._meta.db_table}")
    stored = {p.sku: p for p in Product.objects.defer(field.attname)}
    pks = [str(stored[by_path[path].sku].pk) for path in paths]
    catalog = Catalog(pks, np.asarray(vectors, dtype=np.float64),
                      [by_path[path].category for path in paths],
                      [colour_family(colours.get(by_path[path].sku, "")) for path in paths])
    return catalog, time.perf_counter() - started


def clear_feedback() -> None:
    """Empty the events, the aggregates and the roll-up's watermark (between scenarios)."""
    names = ", ".join(connection.ops.quote_name(model._meta.db_table) for model in TABLES)
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {names}")


def simulation_settings(similar: dict[str, dict[str, Any]], picks: dict[str, dict[str, Any]],
                        ranking: dict[str, Any]) -> dict[str, Any]:
    """``VISUAL_RECO`` for the run: the project's, with the tests on the similar list (and
    picks), no rate limits (one client sends every visitor's requests) and no list cache
    (the catalog is this run's own)."""
    config = dict(getattr(settings, "VISUAL_RECO", {}))
    share = 100.0 / len(similar)
    experiments = {SIMILAR_SURFACE: {"ENABLED": True, "VARIANTS": {
        name: {"SHARE": share, "RANKING": options} for name, options in similar.items()}}}
    if picks:
        experiments[PICKS_SURFACE] = {"ENABLED": True, "VARIANTS": {
            name: {"SHARE": 100.0 / len(picks), **options} for name, options in picks.items()}}
    config["FEEDBACK"] = {**config.get("FEEDBACK", {}), "EXPERIMENTS": experiments}
    config["RANKING"] = {**config.get("RANKING", {}), **ranking}
    config["THROTTLE_RATES"] = {"photo_search": None, "similar": None, "events_visitor": None,
                                "events_ip": None}
    config["SIMILAR_CACHE"] = None
    return config


class Command(BaseCommand):
    """Simulate shoppers on the Luma catalog and write docs/FEEDBACK.md."""

    help = "Regenerate docs/FEEDBACK.md: ranking variants compared on simulated shoppers."

    def add_arguments(self, parser: CommandParser) -> None:
        base = Path(settings.BASE_DIR)
        parser.add_argument("--sessions", type=int, default=5000, help="visits per scenario")
        parser.add_argument("--rounds", type=int, default=10,
                            help="the visits are split into rounds; the roll-up runs after each")
        parser.add_argument("--seed", type=int, default=2)
        parser.add_argument("--scenario", choices=["looks", "unrelated", "both"], default="both")
        parser.add_argument("--quick", action="store_true",
                            help="300 visits in 3 rounds, written under .cache/feedback-quick")
        parser.add_argument("--dataset", default=str(base.parent / "shared" / "datasets"
                                                     / "magento_luma"))
        parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                            help="an extra similar-list variant with these RANKING options "
                                 "(for tuning), e.g. 'w3={\"CTR_WEIGHT\": 0.3}'")
        parser.add_argument("--ranking", default="{}", metavar="JSON",
                            help="RANKING settings for every variant (for tuning)")
        parser.add_argument("--out", default=None,
                            help="default docs/FEEDBACK.md, .cache/feedback-quick with --quick")
        parser.add_argument("--no-write", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        base = Path(settings.BASE_DIR)
        if options["quick"]:
            options["sessions"], options["rounds"] = 300, 3
        out = Path(options["out"] or (base / ".cache" / "feedback-quick" / "FEEDBACK.md"
                                      if options["quick"] else base / "docs" / "FEEDBACK.md"))
        folder = Path(options["dataset"])
        if not (folder / "labels.csv").exists():
            raise CommandError(f"No Magento Luma dataset at {folder}")
        similar = {name: ranking for name, ranking in SIMILAR_VARIANTS.items()
                   if name != "learned" or learned_available()}
        for spec in options["variant"]:
            name, _, raw = spec.partition("=")
            similar[name] = {"RERANK": True, **json.loads(raw or "{}")}
        notes = []
        if not learned_available():
            notes.append("re-ranked+learned: not measured (visual_reco has no learned "
                         "re-ranking yet: no `RANKING[\"LEARNED\"]` option)")
        scenarios = ["looks", "unrelated"] if options["scenario"] == "both" \
            else [options["scenario"]]
        started = time.perf_counter()
        with own_database(DATABASE):
            catalog, load_seconds = load_luma(folder, base / ".cache" / "feedback-sim")
            self.stdout.write(f"{len(catalog)} products loaded in {load_seconds:.0f} s")
            picks = PICKS_VARIANTS if picks_url() else {}
            if not picks:
                notes.append("picked-for-you vs best-sellers: not measured (the shop has no "
                             "picked-for-you endpoint yet)")
            config = simulation_settings(similar, picks, json.loads(options["ranking"]))
            results = {}
            with override_settings(VISUAL_RECO=config):
                for scenario in scenarios:
                    results[scenario] = self._scenario(scenario, catalog, options, bool(picks))
        total = time.perf_counter() - started
        for note in notes:
            self.stdout.write(f"Note: {note}")
        if not options["no_write"]:
            report = Report(results, options, notes, len(catalog), total, similar, out)
            report.write()
            self.stdout.write(f"Wrote {out}")

    def _scenario(self, scenario: str, catalog: Catalog, options: dict[str, Any],
                  picks: bool) -> dict[str, Any]:
        clear_feedback()
        learn = LEARN_COMMAND in get_commands() and learned_available()
        run = Options(scenario=scenario, sessions=options["sessions"],
                      rounds=options["rounds"], seed=options["seed"], picks=picks,
                      after_round=(lambda _: call_command(LEARN_COMMAND)) if learn else None,
                      progress=lambda line: (self.stdout.write(line), self.stdout.flush()))
        started = time.perf_counter()
        simulator = Simulator(catalog, run)
        logs = simulator.run()
        seconds = time.perf_counter() - started
        from_log, from_rollup = log_counts(logs), rollup_counts()
        agrees = from_log == from_rollup
        if not agrees:
            self.stderr.write(f"{scenario}: the roll-up does not match the log:\n"
                              f"log {from_log}\nroll-up {from_rollup}")
        self.stdout.write(f"{scenario}: {len(logs)} visits, {simulator.requests} requests in "
                          f"{seconds:.0f} s")
        return {"logs": logs, "seconds": seconds, "requests": simulator.requests,
                "agrees": agrees, "counts": from_log,
                "ranking": dict(reco_settings.RANKING)}


def _pct(value: float) -> str:
    return f"{value:.2%}"


def _signed(value: float) -> str:
    return f"{value:+.0%}"


class Report:
    """docs/FEEDBACK.md and its plot from the scenarios' logs."""

    def __init__(self, results: dict[str, dict[str, Any]], options: dict[str, Any],
                 notes: list[str], products: int, seconds: float,
                 variants: dict[str, dict[str, Any]], out: Path) -> None:
        self.results, self.options, self.notes = results, options, notes
        self.products, self.seconds, self.variants, self.out = products, seconds, variants, out
        self.command = "manage.py feedback_simulation " + shlex.join(sys.argv[2:])

    def rows(self, scenario: str, surface: str) -> list[tuple[int, dict[str, Any]]]:
        """Per round, the variants' numbers on ``surface``."""
        logs = self.results[scenario]["logs"]
        rounds = sorted({log.round for log in logs})
        return [(number, summarize([log for log in logs if log.round == number], surface,
                                   seed=number)) for number in rounds]

    def write(self) -> None:
        """Write the markdown and the plot next to it."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        plotted = self.plot(self.out.parent / PLOT)
        parts = [self.head(plotted)]
        for scenario in self.results:
            parts.append(self.section(scenario))
        self.out.write_text("\n".join(parts))

    def head(self, plotted: bool) -> str:
        looks = self.results.get("looks")
        summary = self.goals() if looks else ""
        picture = f"\n![CTR by round per variant]({PLOT})\n" if plotted else ""
        notes = "".join(f"\n- {note}" for note in self.notes)
        return f"""# Feedback: does it improve recommendations?

Simulated shoppers browse the Magento Luma catalog ({self.products} products, one per style
and colour, embedded with `{get_embedder().fingerprint}`) through the shop's own request
path, and the similar list's ranking variants are compared round by round. Regenerate with
`make feedback-report` (`{self.command}`); {machine_line()}; the whole run took
{self.seconds / 60:.0f} minutes.

How it works (`demo_shop/bench/feedback_sim.py`): each visit is a visitor with a cookie id
of its own, so the real A/B assignment (`visual_reco.feedback.experiments`, a hash of the
id) puts it in one variant of the similar list (surface `{SIMILAR_SURFACE}`) for the whole
visit. Each product page is a `GET /api/visual-reco/products/<id>/similar/?limit=8` through
Django's test client in this process (URL routing, middleware, DRF, the variant's ranking;
rate limits off, since one client sends every visitor's requests), then one
`POST /api/visual-reco/events/` with the list's token: an impression for each of the 8
items and the click, if any; a cart is another `POST` of `add_to_cart`; at the end of the
visit some carted items are bought, each recorded by `visual_reco.feedback.record` with no
token (last-touch credit), as the demo's checkout does. After each round the real roll-up
runs (`visual_reco.feedback.rollup.rollup`); the next round's re-ranking reads its totals.
Every variant's events feed the same totals, as in a live test.

The click model is a cascade: the visitor reads the list from the top, position 1 always,
each next one with probability 0.85 while nothing was clicked; an examined item is clicked
with probability sigmoid(attraction) and opens that product's page (the next page of the
visit); a page without a click ends the visit half of the time, else the visitor lands on
another product of their own choosing (at most 12 pages). Carts: 8% of opened products, +10
points per taste matched; 60% of carted items are bought. CTR is clicks per impression,
purchases are those credited to the list, per 1,000 of its impressions. Both are computed
from the simulator's log of what each visit was served (the variant read from each
token) and did; the roll-up's aggregates are checked against that log after every
scenario. The 95% intervals are percentile bootstraps over visits (a visit's impressions are
not independent draws), 2,000 resamples; "vs visual" is the relative CTR difference to
visual-only in the same round, its interval from the two bootstraps.

Variants of the similar list: {", ".join(f"`{name}` {json.dumps(ranking)}"
                                      for name, ranking in self.variants.items())} (RANKING
overrides of the settings, equal shares).
{notes}
{summary}{picture}"""

    def goals(self) -> str:
        lines = ["| goal | measured | |", "|---|---|---|"]
        rows = self.rows("looks", SIMILAR_SURFACE)
        last_round, last = rows[-1]
        if "reranked" in last and "visual" in last:
            gain = lift(last["reranked"], last["visual"])
            met = "met" if gain.value >= GOAL_RERANK else "not met"
            lines.append(f"| re-ranked >= +20% CTR over visual-only after "
                         f"{self.options['sessions']:,} sessions (looks) | "
                         f"{_signed(gain.value)} in round {last_round} "
                         f"(95% CI {_signed(gain.low)} to {_signed(gain.high)}) | {met} |")
        early = []
        hurt = False
        for number, row in rows[:EARLY_ROUNDS]:
            for name, value in row.items():
                if name == "visual":
                    continue
                gain = lift(value, row["visual"])
                hurt = hurt or gain.high < 0
                early.append(f"{name} r{number} {_signed(gain.value)}")
        if early:
            lines.append(f"| no variant below visual-only in the first {EARLY_ROUNDS} rounds "
                         f"(looks) | {', '.join(early)} | "
                         f"{'not met' if hurt else 'met (no interval entirely below 0)'} |")
        if "unrelated" in self.results:
            rows = self.rows("unrelated", SIMILAR_SURFACE)
            wins = [(number, name, lift(value, row["visual"])) for number, row in rows
                    for name, value in row.items() if name != "visual"]
            beyond = [f"{name} r{number}" for number, name, gain in wins if gain.low > 0]
            lines.append("| unrelated tastes: no variant wins beyond its interval | "
                         f"{len(beyond)} of {len(wins)} round x variant intervals above 0"
                         f"{' (' + ', '.join(beyond) + ')' if beyond else ''} | "
                         f"{'met' if not beyond else 'see below'} |")
        return "\n## Goals\n\n" + "\n".join(lines) + "\n"

    def section(self, scenario: str) -> str:
        result = self.results[scenario]
        described = {"looks": "Tastes about looks", "unrelated": "Tastes unrelated to looks"}
        text = [f"\n## {described[scenario]} (`--scenario {scenario}`)\n",
                f"{SCENARIOS[scenario].description}. {len(result['logs']):,} visits in "
                f"{self.options['rounds']} rounds, seed {self.options['seed']}; "
                f"{result['requests']:,} requests in {result['seconds']:.0f} s. The roll-up's "
                f"aggregates {'match' if result['agrees'] else 'DO NOT match'} the log "
                f"(impressions, clicks, carts, purchases per variant). Ranking settings: "
                f"`{json.dumps(self._ranking(result['ranking']))}`. "
                f"Command: `{self.command}`.\n"]
        for surface in (SIMILAR_SURFACE, PICKS_SURFACE):
            rows = self.rows(scenario, surface)
            if not any(row for _, row in rows):
                continue
            baseline = BASELINE[surface]
            text += [f"\n{surface}:\n",
                     "| round | variant | visits | impressions | CTR (95% CI) | "
                     f"vs {baseline} (95% CI) | purchases / 1,000 impressions (95% CI) |",
                     "|---:|---|---:|---:|---|---|---|"]
            for number, row in rows:
                for name, value in row.items():
                    against = ""
                    if name != baseline and baseline in row:
                        gain = lift(value, row[baseline])
                        against = (f"{_signed(gain.value)} ({_signed(gain.low)} to "
                                   f"{_signed(gain.high)})")
                    p = value.purchases_ci
                    text.append(f"| {number} | {name} | {value.sessions} | "
                                f"{value.impressions:,} | {_pct(value.ctr)} "
                                f"({_pct(value.ctr_ci.low)}-{_pct(value.ctr_ci.high)}) | "
                                f"{against} | {p.value:.2f} ({p.low:.2f}-{p.high:.2f}) |")
        return "\n".join(text) + "\n"

    @staticmethod
    def _ranking(ranking: dict[str, Any]) -> dict[str, Any]:
        keys = ("POOL", "EXPLORE", "CTR_WEIGHT", "CONVERSION_WEIGHT", "PRIOR_STRENGTH")
        return {key: ranking[key] for key in keys if key in ranking}

    def plot(self, path: Path) -> bool:
        """CTR by round per variant, one panel per scenario; False without matplotlib."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        scenarios = list(self.results)
        figure, axes = plt.subplots(1, len(scenarios), figsize=(6 * len(scenarios), 4),
                                    squeeze=False, sharey=True)
        for axis, scenario in zip(axes[0], scenarios, strict=True):
            rows = self.rows(scenario, SIMILAR_SURFACE)
            names = sorted({name for _, row in rows for name in row})
            per_round = self.options["sessions"] / max(len(rows), 1)
            for offset, name in enumerate(names):
                xs, ys, low, high = [], [], [], []
                for number, row in rows:
                    if name in row:
                        value = row[name]
                        xs.append(number * per_round + (offset - len(names) / 2) * per_round * 0.06)
                        ys.append(value.ctr * 100)
                        low.append((value.ctr - value.ctr_ci.low) * 100)
                        high.append((value.ctr_ci.high - value.ctr) * 100)
                axis.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=name)
            axis.set_title(f"similar list, tastes: {scenario}")
            axis.set_xlabel("visits so far (end of round)")
            axis.grid(alpha=0.3)
        axes[0][0].set_ylabel("CTR % (95% CI)")
        axes[0][0].legend()
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return True
