"""``manage.py bench_diversity [--folder DIR]``: what diversity (MMR, ``DIVERSITY``) trades
on the Magento Luma catalog, and what it costs a list.

The demo's Luma catalog (one product per style and colour, its ``main`` photo; gift cards
left out) is imported and embedded in this process if needed, with its colour vectors. Every
product's list of 8 is asked for through `similar_products` (the tag's and the API's path
without feedback; cache off, candidates ranked exactly) in the ``DEFAULT_MODE`` blend, for
each lambda. Relevance: same-category precision@8. Redundancy: per list, the results whose
style already appeared higher in the list (another colour of the same style: the demo's
near-duplicates), and the mean blended similarity of the list's 28 pairs
(`visual_reco.query.candidate_similarity`, the blend the list is ranked by).

Luma styles are split in halves by `demo_shop.bench.colour_research.half` (MD5 of the
style); the lambda is chosen on the ``tune`` half by `choose` and both halves are printed.
Then each list is timed off and at the chosen lambda, interleaved, ``--repeat`` times.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.test.utils import override_settings

from demo_shop.bench.colour_research import half
from demo_shop.bench.helpers import machine_line
from demo_shop.catalog import folder_items
from demo_shop.shop.models import Product
from visual_reco.conf import reco_settings
from visual_reco.embedding import embed_objects
from visual_reco.models import EmbeddingStatus
from visual_reco.modes import blend_for
from visual_reco.query import candidate_similarity, exact_candidates
from visual_reco.registry import get_embedding_field
from visual_reco.result_cache import similar_products

LAMBDAS: list[float | None] = [None, 0.9, 0.8, 0.7, 0.5]
LIMIT = 8
# The most precision (same category, absolute) the tune half may lose for variety.
MAX_PRECISION_DROP = 0.01
GIFT_CARDS = "Gift cards"


def choose(results: dict[float | None, dict[str, float]]) -> float | None:
    """The lowest lambda (most variety) whose precision@8 is at most `MAX_PRECISION_DROP`
    below the list without diversity; None when none is."""
    floor = results[None]["precision@8"] - MAX_PRECISION_DROP
    kept = [lam for lam in LAMBDAS if lam is not None and results[lam]["precision@8"] >= floor]
    return min(kept) if kept else None


def label(lam: float | None) -> str:
    """A lambda as a table cell."""
    return "off" if lam is None else f"{lam:g}"


class Command(BaseCommand):
    """Import and embed Luma if needed, measure each lambda, choose on the tune half, time."""

    help = "Measure diversity (MMR) on Magento Luma: relevance, redundancy, cost."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--folder", type=Path,
                            default=Path(settings.BASE_DIR).parent / "shared" / "datasets"
                            / "magento_luma")
        parser.add_argument("--repeat", type=int, default=3, help="timing passes")

    def handle(self, *args: Any, folder: Path, repeat: int, **options: Any) -> None:
        products = self._catalog(folder)
        halves = {name: [p for p in products if half(p.style) == name]
                  for name in ("tune", "report")}
        self.stdout.write(f"{len(products)} products, {len({p.style for p in products})} "
                          f"styles; tune {len(halves['tune'])}, report {len(halves['report'])}"
                          f" queries")
        candidates = Product.objects.filter(pk__in=[p.pk for p in products])
        blend = blend_for(default=True)
        lists = {lam: self._lists(products, candidates, lam) for lam in LAMBDAS}
        results = {name: {lam: self._metrics(rows, lists[lam], blend) for lam in LAMBDAS}
                   for name, rows in halves.items()}
        chosen = choose(results["tune"])
        self.stdout.write(f"\nChosen on the tune half: lambda {label(chosen)} (the lowest "
                          f"whose precision@8 is within {MAX_PRECISION_DROP} of off)\n")
        for name in ("tune", "report"):
            self.stdout.write(f"\n{name} half ({len(halves[name])} queries), mode "
                              f"{reco_settings.DEFAULT_MODE!r}, pool "
                              f"{reco_settings.DIVERSITY_POOL} x {LIMIT}:\n")
            self.stdout.write("| lambda | same-category P@8 | style repeats per list | "
                              "lists with a repeat | mean pairwise blend |")
            self.stdout.write("|---|---:|---:|---:|---:|")
            for lam in LAMBDAS:
                m = results[name][lam]
                self.stdout.write(f"| {label(lam)}{' (chosen)' if lam == chosen else ''} | "
                                  f"{m['precision@8']:.3f} | {m['repeats']:.2f} | "
                                  f"{m['with repeat']:.3f} | {m['pairwise']:.3f} |")
        if chosen is not None:
            self._time(products, chosen, repeat)
        self.stdout.write(f"\n{machine_line()}")

    def _catalog(self, folder: Path) -> list[Product]:
        """The Luma products (gift cards out), imported and embedded in this process."""
        skus = [item.sku[:64] for item in folder_items(folder) if item.category != GIFT_CARDS]
        call_command("import_catalog", str(folder))
        field = get_embedding_field(Product)
        waiting = list(Product.objects.filter(sku__in=skus).exclude(
            **{field.status_name: EmbeddingStatus.READY}).values_list("pk", flat=True))
        if waiting:
            self.stdout.write(f"Embedding {len(waiting)} products in this process")
        size = int(reco_settings.BATCH_SIZE)
        for start in range(0, len(waiting), size):
            embed_objects(Product, waiting[start:start + size])
        return list(Product.objects.filter(sku__in=skus, **{
            field.status_name: EmbeddingStatus.READY}).defer(field.attname).order_by("pk"))

    def _settings(self, lam: float | None) -> override_settings:
        return override_settings(VISUAL_RECO={**getattr(settings, "VISUAL_RECO", {}),
                                              "DIVERSITY": lam, "SIMILAR_CACHE": None})

    def _lists(self, products: list[Product], candidates: Any,
               lam: float | None) -> dict[Any, list[Product]]:
        """Each product's list of `LIMIT` at ``lam``."""
        with self._settings(lam), exact_candidates():
            return {p.pk: similar_products(p, candidates, LIMIT) for p in products}

    def _metrics(self, queries: list[Product], lists: dict[Any, list[Product]],
                 blend: Any) -> dict[str, float]:
        precision, repeats, pairwise = [], [], []
        for query in queries:
            rows = lists[query.pk]
            precision.append(np.mean([r.category == query.category for r in rows]))
            seen: set[str] = set()
            repeated = 0
            for row in rows:
                repeated += row.style in seen
                seen.add(row.style)
            repeats.append(repeated)
            similarity = candidate_similarity(Product, [r.pk for r in rows], blend)
            upper = similarity[np.triu_indices(len(rows), k=1)]
            pairwise.append(float(upper.mean()) if upper.size else 0.0)
        return {"precision@8": float(np.mean(precision)), "repeats": float(np.mean(repeats)),
                "with repeat": float(np.mean(np.array(repeats) > 0)),
                "pairwise": float(np.mean(pairwise))}

    def _time(self, products: list[Product], lam: float, repeat: int) -> None:
        """Milliseconds per list off and at ``lam``, interleaved so drift hits both; the
        candidates are the demo tag's (every product)."""
        spent: dict[float | None, list[float]] = {None: [], lam: []}
        for _ in range(repeat):
            for product in products:
                for value in (None, lam):
                    with self._settings(value):
                        started = time.perf_counter()
                        similar_products(product, None, LIMIT)
                        spent[value].append((time.perf_counter() - started) * 1000)
        off, on = np.array(spent[None]), np.array(spent[lam])
        self.stdout.write(f"\nTime per list of {LIMIT} ({len(off)} lists each, in process, "
                          f"cache off, {Product.objects.count()} products):\n")
        self.stdout.write("| lambda | p50 ms | p99 ms |")
        self.stdout.write("|---|---:|---:|")
        for name, values in (("off", off), (f"{lam:g}", on)):
            self.stdout.write(f"| {name} | {np.percentile(values, 50):.2f} | "
                              f"{np.percentile(values, 99):.2f} |")
        self.stdout.write(f"| **added** | {np.percentile(on, 50) - np.percentile(off, 50):.2f}"
                          f" | {np.percentile(on, 99) - np.percentile(off, 99):.2f} |")
        self.stdout.write(f"Median of the per-list difference: "
                          f"{np.median(on - off):.2f} ms")
