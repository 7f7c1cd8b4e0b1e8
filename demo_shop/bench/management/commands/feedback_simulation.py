"""``manage.py feedback_simulation``: simulated shoppers on the Magento Luma catalog, through
the real API, events and roll-up (`demo_shop.bench.feedback_sim`), comparing the ranking
variants round by round; writes docs/FEEDBACK.md and its plot.

The run has a database of its own (``visual_reco_feedback_sim``, created and migrated at the
start, dropped at the end), so neither the demo's events nor its products take part. The
catalog is one product per Luma style and colour, embedded with the configured embedder;
the vectors (and the field's aspects, the colour vectors) are kept in ``.cache/feedback-sim``
by fingerprint, so only the first run embeds the photos.
"""

from __future__ import annotations

import argparse
import csv
import json
import pickle
import shlex
import subprocess
import sys
import tempfile
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
    LEARN_COMMAND,
    LIMIT,
    PICKS_VARIANTS,
    SCENARIOS,
    SIMILAR_VARIANTS,
    Catalog,
    Ceilings,
    Options,
    PicksCeilings,
    Report,
    colour_family,
    learned_available,
    picks_url,
    run_scenario,
    simulation_settings,
)
from demo_shop.catalog import folder_items
from demo_shop.shop.models import Product
from visual_reco.aspects import compute_aspects, signature
from visual_reco.choices import EmbeddingStatus
from visual_reco.conf import reco_settings
from visual_reco.embedders import get_embedder
from visual_reco.evaluation.embedding import embed_paths, load_image
from visual_reco.registry import get_embedding_field

DATABASE = "visual_reco_feedback_sim"


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


def cached_aspects(paths: list[Path], aspects: tuple[str, ...],
                   cache: Path) -> dict[str, np.ndarray]:
    """The ``aspects`` of ``paths`` as the worker computes them (from the configured
    embedder's prepared image), from ``cache`` when it holds these files' at the aspects'
    versions; computed (and cached) otherwise."""
    if not aspects:
        return {}
    embedder = get_embedder()
    stamp = (embedder.fingerprint + signature(aspects)).rsplit(":", 1)[-1]
    path = cache / f"luma-aspects-{stamp}.npz"
    names = [str(p) for p in paths]
    if path.exists():
        stored = np.load(path, allow_pickle=False)
        if list(stored["paths"]) == names:
            return {name: stored[name] for name in aspects}
    found = compute_aspects([embedder.prepare(load_image(p)) for p in paths], aspects)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, paths=np.array(names), **found)
    return found


def load_luma(folder: Path, cache: Path) -> tuple[Catalog, float]:
    """Import the Luma catalog (one product per style and colour) with its vectors into the
    current database; return the simulation's view of it and the seconds it took."""
    started = time.perf_counter()
    items = folder_items(folder)
    colours = luma_colours(folder)
    paths, vectors = cached_vectors([item.path for item in items], cache)
    by_path = {item.path: item for item in items}
    field = get_embedding_field(Product)
    aspects = cached_aspects(paths, field.aspects, cache)
    fingerprint = field.fingerprint_for(get_embedder())
    now = timezone.now()
    products = []
    for row, (path, vector) in enumerate(zip(paths, vectors, strict=True)):
        item = by_path[path]
        product = Product(sku=item.sku, name=item.name, category=item.category,
                          price=20 + sum(item.sku.encode()) % 60, image=f"luma/{path.name}")
        for name, value in field.state(
                EmbeddingStatus.READY, vector=vector, fingerprint=fingerprint, at=now,
                aspect_vectors={aspect: found[row] for aspect, found in aspects.items()},
        ).items():
            setattr(product, name, value)
        products.append(product)
    Product.objects.bulk_create(products)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Product._meta.db_table}")
    stored = {p.sku: p for p in Product.objects.defer(field.attname)}
    pks = [str(stored[by_path[path].sku].pk) for path in paths]
    catalog = Catalog(pks, np.asarray(vectors, dtype=np.float64),
                      [by_path[path].category for path in paths],
                      [colour_family(colours.get(by_path[path].sku, "")) for path in paths],
                      aspects.get("colour"))
    return catalog, time.perf_counter() - started


def _without(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its value (``--x v`` or ``--x=v``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


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
        parser.add_argument("--return-rate", type=float, default=0.5,
                            help="share of the visits after round 1 by a visitor of an earlier "
                                 "round (its id, variants, history and tastes kept); 0: every "
                                 "visit by a new visitor")
        parser.add_argument("--quick", action="store_true",
                            help="300 visits in 3 rounds, written under .cache/feedback-quick")
        parser.add_argument("--dataset", default=str(base.parent / "shared" / "datasets"
                                                     / "magento_luma"))
        parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                            help="an extra similar-list variant with these RANKING options "
                                 "(for tuning), e.g. 'w3={\"CTR_WEIGHT\": 0.3}'")
        parser.add_argument("--picks-variant", action="append", default=[],
                            metavar="NAME=JSON",
                            help="an extra picked-for-you variant with these PICKS options "
                                 "(for tuning), e.g. 'c8={\"CONTEXT_WEIGHT\": 0.8}'")
        parser.add_argument("--ranking", default="{}", metavar="JSON",
                            help="RANKING settings for every variant (for tuning)")
        parser.add_argument("--out", default=None,
                            help="default docs/FEEDBACK.md, .cache/feedback-quick with --quick")
        parser.add_argument("--no-write", action="store_true")
        parser.add_argument("--jobs", type=int, default=2,
                            help="with --scenario both: scenarios run at once, each in a "
                                 "process and a database of its own")
        parser.add_argument("--ceilings", action="store_true",
                            help="only print the scenarios' ceilings (what orders that know "
                                 "the click model would gain; no visits) for --seed")
        parser.add_argument("--save", default=None, help=argparse.SUPPRESS)

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
        picks = dict(PICKS_VARIANTS)
        for spec in options["picks_variant"]:
            name, _, raw = spec.partition("=")
            picks[name] = {"PICKS": {"STRATEGY": "taste", **json.loads(raw or "{}")}}
        notes = []
        if not learned_available():
            notes.append("re-ranked+learned: not measured (visual_reco has no learned "
                         "re-ranking yet: no `RANKING[\"LEARNED\"]` option)")
        scenarios = ["looks", "unrelated"] if options["scenario"] == "both" \
            else [options["scenario"]]
        if options["ceilings"]:
            self._ceilings(scenarios, similar, folder, base, options)
            return
        started = time.perf_counter()
        if len(scenarios) > 1 and options["jobs"] > 1:
            run = self._in_processes(scenarios, options)
        else:
            run = self._in_this_process(scenarios, similar, picks, folder, base, options)
        if options["save"]:
            with open(options["save"], "wb") as handle:
                pickle.dump({**run, "notes": notes + run["notes"]}, handle)
            return
        total = time.perf_counter() - started
        notes = list(dict.fromkeys(notes + run["notes"]))
        for note in notes:
            self.stdout.write(f"Note: {note}")
        if not options["no_write"]:
            report = Report(run["results"], options, notes, run["products"], total, similar,
                            out, command=self._command_line())
            report.write()
            self.stdout.write(f"Wrote {out}")

    def _in_this_process(self, scenarios: list[str], similar: dict[str, dict[str, Any]],
                         picks: dict[str, dict[str, Any]], folder: Path, base: Path,
                         options: dict[str, Any]) -> dict[str, Any]:
        notes: list[str] = []
        with own_database(f"{DATABASE}_{'_'.join(scenarios)}"):
            catalog, load_seconds = load_luma(folder, base / ".cache" / "feedback-sim")
            self.stdout.write(f"{len(catalog)} products loaded in {load_seconds:.0f} s")
            picks = picks if picks_url() else {}
            if not picks:
                notes.append("picked-for-you vs best-sellers: not measured (the shop has no "
                             "picked-for-you endpoint yet)")
            config = simulation_settings(similar, picks, json.loads(options["ranking"]))
            results = {}
            with override_settings(VISUAL_RECO=config):
                for scenario in scenarios:
                    results[scenario] = self._scenario(scenario, catalog, options, bool(picks))
        return {"results": results, "notes": notes, "products": len(catalog)}

    def _ceilings(self, scenarios: list[str], similar: dict[str, dict[str, Any]], folder: Path,
                  base: Path, options: dict[str, Any]) -> None:
        """Print each scenario's `Ceilings` for the run's pool and list sizes."""
        with own_database(f"{DATABASE}_ceilings"):
            catalog, _ = load_luma(folder, base / ".cache" / "feedback-sim")
            config = simulation_settings(similar, {}, json.loads(options["ranking"]))
            with override_settings(VISUAL_RECO=config):
                pool = int(reco_settings.RANKING["POOL"]) * LIMIT
                for scenario in scenarios:
                    model = SCENARIOS[scenario](catalog, options["seed"])
                    found = model.ceilings(pool, LIMIT)
                    described = (
                        f"best fixed order {found.fixed:+.1%}, visual + true appeal "
                        f"{found.appeal:+.1%}, best order per visitor {found.personal:+.1%}"
                        if found != Ceilings() else "none (nothing the clicks could teach)")
                    self.stdout.write(f"{scenario} seed {options['seed']}, pool {pool}, "
                                      f"list {LIMIT}: {described}")
                    picks = model.picks_ceilings(LIMIT)
                    described = (
                        f"best list per category {picks.category_list:+.1%}, per page "
                        f"{picks.page:+.1%}, knowing the colour family {picks.colour:+.1%}, "
                        f"the category {picks.category:+.1%}, both {picks.personal:+.1%}"
                        if picks != PicksCeilings()
                        else "none (nothing the clicks could teach)")
                    self.stdout.write(f"{scenario} seed {options['seed']}, picked-for-you "
                                      f"over true best sellers, list {LIMIT}: {described}")

    def _in_processes(self, scenarios: list[str], options: dict[str, Any]) -> dict[str, Any]:
        """Each scenario in a process of its own (this command with ``--scenario``), at
        most ``--jobs`` at once; their results, merged."""
        passed = _without(sys.argv[2:], "--scenario")
        with tempfile.TemporaryDirectory() as folder:
            saved = {scenario: Path(folder) / f"{scenario}.pickle" for scenario in scenarios}
            running: list[subprocess.Popen] = []
            for scenario in scenarios:
                while len(running) >= options["jobs"]:
                    running.pop(0).wait()
                running.append(subprocess.Popen(
                    [sys.executable, sys.argv[0], "feedback_simulation", *passed,
                     "--scenario", scenario, "--save", str(saved[scenario])]))
            for process in running:
                process.wait()
            merged: dict[str, Any] = {"results": {}, "notes": [], "products": 0}
            for scenario, path in saved.items():
                if not path.exists():
                    raise CommandError(f"the {scenario} scenario's process failed")
                with open(path, "rb") as handle:
                    part = pickle.load(handle)
                merged["results"].update(part["results"])
                merged["notes"] += part["notes"]
                merged["products"] = part["products"]
        return merged

    def _command_line(self) -> str:
        return "manage.py feedback_simulation " + shlex.join(_without(sys.argv[2:], "--save"))

    def _scenario(self, scenario: str, catalog: Catalog, options: dict[str, Any],
                  picks: bool) -> dict[str, Any]:
        learn = LEARN_COMMAND in get_commands() and learned_available()
        run = Options(scenario=scenario, sessions=options["sessions"],
                      rounds=options["rounds"], seed=options["seed"], picks=picks,
                      return_rate=options["return_rate"],
                      after_round=(lambda _: call_command(LEARN_COMMAND)) if learn else None,
                      progress=lambda line: (self.stdout.write(line), self.stdout.flush()))
        result = run_scenario(catalog, run)
        if not result["agrees"]:
            self.stderr.write(f"{scenario}: the roll-up's aggregates do not match the log")
        self.stdout.write(f"{scenario}: {len(result['logs'])} visits, {result['requests']} "
                          f"requests in {result['seconds']:.0f} s")
        return result
