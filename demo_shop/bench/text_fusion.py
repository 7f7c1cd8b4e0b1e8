"""Choosing how search by photo and words fuses its two rankings (issue 13, point 2), with the
words a shopper would type, drawn from the datasets' labels and never the product's name:

- Luma: another view of an item (``back``, ``alt1``, ...) and its colour ("blue") -> that
  item (style + colour; its product holds the ``main`` view, named as the demo imports it:
  "Joust Duffle Bag (blue)", category "Gear/Bags"); item R@1 and R@5.
- Fashion (the first 1,200 photos of the set): a product's photo and its colour ("navy
  blue") -> the other products of the same article type and colour (the product left out;
  name the display name, category "Apparel/Topwear/Tshirts"); P@10.
- Grocery ``val``: a phone photo and the brand (packages: the first word of the class name,
  "arla") or the type (fruit and vegetables: the coarse class, "apple") -> the product (its
  studio photo, named after the class, category the coarse class); fine R@1.

Each catalog is loaded into a throwaway test database (Postgres with pgvector, the demo's
``Product``) with the photos' cached vectors and colour vectors; the text index is built by
`visual_reco.text_search.rebuild` and both rankings come from the code the API runs:
`visual_reco.search.visual_pool` (``SEARCH_MODE``, ``POOL`` products) and
`visual_reco.text_search.ranked`; each fusion is `visual_reco.fusion.fuse` of the two, so
the numbers are the search's own. Queries are embedded whole (no multi-crop; the same query
vectors for every row). Queries are split in halves by the MD5 of the Luma style, the
fashion id and the grocery photo's path; a fusion is chosen on the tune halves (the best
mean of the three metrics) and reported on the report halves.

Run: ``.venv/bin/python demo_shop/services.py run -- .venv/bin/python
demo_shop/bench/text_fusion.py [--datasets DIR] [--write]``. Embeddings are cached as
``demo_shop/bench/colour_research.py`` caches them (``.cache/colour-research``).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo_shop.bench import colour_research as research  # noqa: E402

FASHION_COUNT = 1200
RRF_KS = [0, 1, 2, 5, 10, 20, 60]
TEXT_WEIGHTS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
# Luma colour codes that are no words, as a shopper would type them (the others are left
# out: "gr", "sa", "lb" are ambiguous).
LUMA_COLOUR_WORDS = {"bk": "black", "br": "brown"}
HEADING = "## Search by photo and words (issue 13, point 2)"


@dataclass
class Product:
    """One catalog product: its words and its photo's vectors."""

    sku: str
    name: str
    category: str
    vector: np.ndarray
    colour: np.ndarray


@dataclass
class Query:
    """A shopper's photo (vectors) and word, the products that answer it, and its half."""

    vector: np.ndarray
    colour: np.ndarray
    word: str
    relevant: set[str]
    half: str
    leave_out: str | None = None


@dataclass
class Dataset:
    """A catalog, its queries and how one query's ranking (skus, best first) is scored."""

    name: str
    metric: str
    products: list[Product]
    queries: list[Query]
    score: Callable[[list[str], Query], dict[str, float]]
    pools: list[tuple[list[tuple[str, float]], list[tuple[str, float]]]] = field(
        default_factory=list)


def recall(ranking: list[str], query: Query) -> dict[str, float]:
    """R@1 and R@5 of the relevant product."""
    return {"R@1": float(bool(set(ranking[:1]) & query.relevant)),
            "R@5": float(bool(set(ranking[:5]) & query.relevant))}


def precision(ranking: list[str], query: Query) -> dict[str, float]:
    """P@10: the share of the first 10 that are relevant."""
    return {"P@10": len(set(ranking[:10]) & query.relevant) / 10.0}


def luma(datasets: Path) -> Dataset:
    """Luma: each item's product from its ``main`` view; its other views with its colour."""
    from demo_shop.catalog import folder_items

    rows = research.luma_rows(datasets / "magento_luma")
    vectors, pixels = research.embedded(
        "luma", [datasets / "magento_luma" / r["path"] for r in rows])
    colours = research.worker_colours("luma", pixels)
    by_file = {Path(r["path"]).name: index for index, r in enumerate(rows)}
    products, queries = [], []
    for item in folder_items(datasets / "magento_luma"):
        main = by_file.get(item.path.name)
        if main is None:
            continue  # gift cards: no category, not embedded
        products.append(Product(item.sku, item.name, item.category, vectors[main],
                                colours[main]))
        colour = rows[main]["colour"]
        word = LUMA_COLOUR_WORDS.get(colour, colour if len(colour) > 2 else "")
        for view, path in item.views:
            if view == "main" or not word or path.name not in by_file:
                continue
            index = by_file[path.name]
            queries.append(Query(vectors[index], colours[index], word, {item.sku},
                                 research.half(rows[main]["style"])))
    return Dataset("Luma, other view + colour", "R@1", products, queries, recall)


def fashion(datasets: Path) -> Dataset:
    """Fashion: each product's photo with its colour; relevant: same type and colour."""
    rows = research.fashion_rows(datasets / "fashion_products")[:FASHION_COUNT]
    vectors, pixels = research.embedded(
        f"fashion-{FASHION_COUNT}", [datasets / "fashion_products" / r["image"] for r in rows])
    colours = research.worker_colours(f"fashion-{FASHION_COUNT}", pixels)
    products = [Product(r["id"], r["productDisplayName"],
                        f"{r['masterCategory']}/{r['subCategory']}/{r['articleType']}",
                        vectors[i], colours[i]) for i, r in enumerate(rows)]
    groups: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        groups.setdefault((r["articleType"], r["baseColour"]), set()).add(r["id"])
    queries = []
    for i, r in enumerate(rows):
        relevant = groups[(r["articleType"], r["baseColour"])] - {r["id"]}
        if relevant and r["baseColour"] not in ("", "NA", "Multi"):
            queries.append(Query(vectors[i], colours[i], r["baseColour"].lower(), relevant,
                                 research.half(r["id"]), leave_out=r["id"]))
    return Dataset("Fashion, photo + colour", "P@10", products, queries, precision)


def grocery(datasets: Path) -> Dataset:
    """Grocery: iconic photos as products; ``val`` phone photos with a brand or type word."""
    folder = datasets / "grocery_store"
    with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    first = {r["fine_name"]: r for r in rows}
    classes = sorted(first)
    iconic, iconic_pixels = research.embedded(
        "grocery-iconic", [folder / first[name]["iconic"] for name in classes])
    iconic_colours = research.worker_colours("grocery-iconic", iconic_pixels)
    val = [r for r in rows if r["split"] == "val"]
    vectors, pixels = research.embedded("grocery-val", [folder / r["path"] for r in val])
    colours = research.worker_colours("grocery-val", pixels)
    products = [Product(name, name.replace("-", " "), first[name]["coarse_name"], iconic[i],
                        iconic_colours[i]) for i, name in enumerate(classes)]
    queries = []
    for i, r in enumerate(val):
        packaged = r["top"] == "Packages"
        word = (r["fine_name"].split("-")[0] if packaged else r["coarse_name"]).lower()
        queries.append(Query(vectors[i], colours[i], word, {r["fine_name"]},
                             research.half(r["path"])))
    return Dataset("Grocery val, photo + brand/type", "R@1", products, queries, recall)


def load(dataset: Dataset) -> None:
    """Replace the test database's catalog by ``dataset``'s, vectors and text index."""
    from demo_shop.shop.models import Product as ShopProduct
    from visual_reco.choices import EmbeddingStatus
    from visual_reco.embedders import get_embedder
    from visual_reco.registry import get_embedding_field
    from visual_reco.text_search import rebuild

    ShopProduct.objects.all().delete()
    made = ShopProduct.objects.bulk_create(
        [ShopProduct(sku=p.sku[:64], name=p.name[:200], category=p.category[:120])
         for p in dataset.products])
    embedding = get_embedding_field(ShopProduct, "image_embedding")
    fingerprint = embedding.fingerprint_for(get_embedder())
    for row, product in zip(made, dataset.products, strict=True):
        ShopProduct.objects.filter(pk=row.pk).update(**embedding.state(
            EmbeddingStatus.READY, vector=product.vector,
            aspect_vectors={"colour": product.colour}, fingerprint=fingerprint))
    rebuild(ShopProduct)


def pools(dataset: Dataset, pool: int) -> None:
    """Each query's visual and text pools (skus and scores), from the search's own code."""
    from demo_shop.shop.models import Product as ShopProduct
    from visual_reco.search import visual_pool
    from visual_reco.text_search import ranked

    sku = dict(ShopProduct.objects.values_list("pk", "sku"))
    for query in dataset.queries:
        products = ShopProduct.objects.all()
        if query.leave_out is not None:
            products = products.exclude(sku=query.leave_out)
        looks = visual_pool(products, query.vector, pool, colour=query.colour,
                            field="image_embedding")
        words = ranked(products, query.word, pool)
        dataset.pools.append(([(sku[row.pk], float(row.visual_score)) for row in looks],
                              [(sku[pk], score) for pk, score in words]))


def configurations() -> dict[str, Any]:
    """Every ranking compared: photo only, words only, RRF by k, blends by text weight."""
    from visual_reco.fusion import BLEND, RRF, Fusion

    found: dict[str, Any] = {"photo only": "photo", "words only": "text"}
    found.update({f"RRF k={k}": Fusion(RRF, k=k) for k in RRF_KS})
    found.update({f"blend w={w:g}": Fusion(BLEND, text_weight=w) for w in TEXT_WEIGHTS})
    return found


def evaluate(dataset: Dataset, how: Any) -> dict[str, dict[str, float]]:
    """Mean metrics of ``dataset``'s queries ranked ``how``, per half."""
    from visual_reco.fusion import fuse

    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for query, (looks, words) in zip(dataset.queries, dataset.pools, strict=True):
        if how == "photo":
            ranking = [key for key, _ in looks]
        elif how == "text":
            ranking = [key for key, _ in words]
        else:
            ranking = [key for key, _ in fuse(looks, words, how)]
        scores = dataset.score(ranking, query)
        totals = sums.setdefault(query.half, {})
        for name, value in scores.items():
            totals[name] = totals.get(name, 0.0) + value
        counts[query.half] = counts.get(query.half, 0) + 1
    return {half: {name: value / counts[half] for name, value in totals.items()}
            for half, totals in sums.items()}


def main() -> None:
    """Load each dataset, rank its queries, choose on the tune halves, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--pool", type=int, default=None,
                        help="products per ranking (default TEXT_SEARCH['POOL'])")
    parser.add_argument("--write", action="store_true", help="write docs/QUALITY.md's section")
    args = parser.parse_args()
    research.setup_django()
    from django.test.utils import setup_databases, teardown_databases

    from demo_shop.bench.helpers import machine_line, write_section
    from visual_reco.conf import reco_settings

    pool = args.pool or int(reco_settings.TEXT_SEARCH["POOL"])
    datasets = [luma(args.datasets), fashion(args.datasets), grocery(args.datasets)]
    started = time.perf_counter()
    old = setup_databases(verbosity=0, interactive=False)
    try:
        for dataset in datasets:
            load(dataset)
            pools(dataset, pool)
            print(f"{dataset.name}: {len(dataset.products)} products, "
                  f"{len(dataset.queries)} queries", flush=True)
    finally:
        teardown_databases(old, verbosity=0)
    results = {name: [evaluate(d, how) for d in datasets]
               for name, how in configurations().items()}

    def mean(name: str, half: str) -> float:
        return float(np.mean([r[half][d.metric] for r, d in zip(results[name], datasets,
                                                                    strict=True)]))

    fused = [name for name in results if name not in ("photo only", "words only")]
    chosen = max(fused, key=lambda name: mean(name, "tune"))
    best_rrf = max((n for n in fused if n.startswith("RRF")), key=lambda n: mean(n, "tune"))
    best_blend = max((n for n in fused if n.startswith("blend")), key=lambda n: mean(n, "tune"))
    header = ["ranking"]
    for position, d in enumerate(datasets):
        header += [f"{d.name.split(',')[0]} {key} (tune / report)"
                   for key in results["photo only"][position]["tune"]]
    header += ["mean (tune / report)"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name in results:
        cells = [f"**{name}**" if name == chosen else name]
        for r in results[name]:
            cells += [f"{r['tune'][key]:.3f} / {r['report'][key]:.3f}" for key in r["tune"]]
        cells.append(f"{mean(name, 'tune'):.3f} / {mean(name, 'report'):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(
        f"{d.name}: {len(d.products)} products, "
        f"{sum(q.half == 'tune' for q in d.queries)} tune / "
        f"{sum(q.half == 'report' for q in d.queries)} report queries" for d in datasets)
    section = "\n".join([
        HEADING, "",
        "`.venv/bin/python demo_shop/services.py run -- .venv/bin/python "
        "demo_shop/bench/text_fusion.py --write`"
        f" ({time.perf_counter() - started:.0f} s of ranking; {machine_line()}). "
        f"Pools of {pool} products by looks (`SEARCH_MODE`) and by words (`ts_rank_cd`), "
        "from the search's own code on Postgres; queries embedded whole. " + counts + ".",
        "",
        f"Chosen on the tune halves (the best mean of Luma R@1, fashion P@10 and grocery R@1): "
        f"**{chosen}**; the best RRF there is {best_rrf}, the best blend {best_blend}. "
        "Each cell: tune half / report half.",
        "", *lines, "",
        "How to read it: a colour word matches every product of that colour alike (their "
        "`ts_rank_cd` ties), so the words alone rank them by primary key, and RRF gives that "
        "arbitrary order as much say as the photo's; the blend normalises the tied ranks to "
        "the same 1.0, so among the products the words match the photo decides. From a text "
        "weight of 0.5 any product the words match outranks any they do not (a filter, then "
        "the looks), hence the equal rows. Luma's colour codes \"bk\" and \"br\" are "
        "typed as black and brown (which the names, \"... (bk)\", do not match); items "
        "coded \"gr\", \"sa\" or \"lb\" and items without a colour have no query.", ""])
    print(section)
    if args.write:
        path = write_section(section, ROOT / "docs" / "QUALITY.md")
        print(f"Written to {path}")


if __name__ == "__main__":
    main()
