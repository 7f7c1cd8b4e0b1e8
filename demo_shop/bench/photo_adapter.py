"""Photo search with a shop's own photos in the gallery (issue 13, point 3): the shipped
``photo`` blend against the one the train halves chose, and the photo adapter
(`visual_reco.photo_adapter`, trained by `visual_reco.photo_adapter_learning`).

Grocery Store set: 81 products (fine classes), each with its studio photo first and its
``train`` phone photos (2,640) as extra gallery images; the ``val`` phone photos (296) are
the queries, embedded whole (one pass) with the colour of their centre 70% (the shipped
``QUERY_ASPECT_CROP``). Choices use the ``train`` halves of `photo_accuracy` (the first half
of each product's train photos by file name as queries, the second half in the gallery);
``val`` only reports.

1. Numpy (the gallery aggregate: a product by its best image): val R@1 / R@5 of the studio
   photos alone and with the train photos, for the shipped ``photo`` blend (w=0.2 s=1) and
   for the blend the train halves choose; the adapter fitted by the package's own
   `fit` (and, for comparison, `photo_accuracy`'s research projection anchored on the
   studio photos).
2. The real search path: the catalog loaded into a throwaway test database (the demo's
   ``Product`` and its gallery ``ProductImage``, vectors written by the field's
   ``state()``), ``visual_reco.photo_adapter_learning.learn`` on the gallery (what
   ``manage.py visual_reco_train_photo_adapter --field embedding`` runs), and each val
   photo ranked by `visual_reco.search.visual_pool` (what ``POST search/`` ranks by) without
   and with the adapter serving. ``learn`` on the product's own field (one image per
   product) must refuse.

Run: ``.venv/bin/python demo_shop/services.py run -- .venv/bin/python
demo_shop/bench/photo_adapter.py [--datasets DIR]``. Embeddings are read from the caches of
`gallery_grocery` / `photo_accuracy` (computed once when missing).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo_shop.bench import colour_research as research  # noqa: E402
from demo_shop.bench import photo_accuracy as accuracy  # noqa: E402

SHIPPED = (0.2, 1.0)  # ASPECT_MODES["photo"]
LIMIT = 5


def shop_photos(products: int, owners: np.ndarray, shape: np.ndarray, colour: np.ndarray,
                holdout: float):
    """A `photo_adapter_learning.Photos` of a gallery: each product's studio photo first
    (rows 0..products-1), then its extra photos in the given order."""
    from visual_reco.photo_adapter_learning import Photos, split

    order = np.argsort(owners, kind="stable")
    owners, shape, colour = owners[order], shape[order], colour[order]
    extra, held = split(owners, holdout)
    return Photos([str(p) for p in range(products)], owners, shape, colour, extra, held)


def numpy_rows(study: accuracy.Study, params: dict) -> tuple[list[list[str]], list[str]]:
    """Part 1: the table rows and the notes on what the train halves chose."""
    from visual_reco.photo_adapter_learning import fit

    data, products = study.data, study.products
    labels = data.train_labels
    val = accuracy.with_colour(study.val, study.centre["val"])
    train_query = accuracy.with_colour(study.train, study.centre["train"])
    first, second = data.train_halves()
    half_query = accuracy.Queries(train_query.labels[first], train_query.one[first],
                                  train_query.colour[first])
    base = study.base()
    shop = base.plus(study.train_photos, labels, "train photos")
    half = base.plus(study.train_photos.take(second), labels[second], "half")
    rows, notes = [], []

    def halves(gallery, blend, projection=None):
        return study.score(gallery, half_query, "one", accuracy.Setting(blend), projection)

    def row(name, blend, gallery, halves_gallery=None, projection=None, train=None,
            halves_projection=None):
        cells = [name, f"{len(gallery.owners) / products:.1f}", f"w={blend[0]:g} s={blend[1]:g}",
                 accuracy.cell(train) if train else
                 accuracy.cell(halves(halves_gallery, blend, halves_projection))
                 if halves_gallery else "-",
                 accuracy.cell(study.score(gallery, val, "one", accuracy.Setting(blend),
                                           projection))]
        rows.append(cells)
        print(" | ".join(cells), flush=True)

    row("studio photo only (shipped `photo`)", SHIPPED, base, train=halves(base, SHIPPED))
    chosen = accuracy.choose_blend(study, half, half_query)
    notes.append(f"blend chosen on train halves with train photos: w={chosen[0]:g} "
                 f"s={chosen[1]:g}")
    row("studio photo only, halves' blend", chosen, base, train=halves(base, chosen))
    row("studio + train photos, shipped `photo`", SHIPPED, shop, half)
    if chosen != SHIPPED:
        row("studio + train photos, halves' blend", chosen, shop, half)
    if (0.6, 1.0) not in (chosen, SHIPPED):
        row("studio + train photos, w=0.6 s=1 (research)", (0.6, 1.0), shop, half)
    # The adapter, the package's `fit`: judged on the halves (fitted on the studio photos +
    # the second halves, the first halves held back), then fitted on every train photo as
    # a shop's would be (the product's own hold-back: the latest HOLDOUT of each product's).
    started = time.perf_counter()
    photos = shop_photos(products, np.concatenate([np.arange(products), labels[second]]),
                         np.concatenate([study.iconic.cnn, study.train_photos.cnn[second]]),
                         np.concatenate([study.iconic.colour, study.train_photos.colour[second]]),
                         0.0)
    adapter = fit(photos, params)
    half_map = accuracy.Projection(adapter.a, adapter.b, "adapter (halves)")
    # What a shop's run serves (REFIT): fitted on every train photo.
    every = shop_photos(products, np.concatenate([np.arange(products), labels]),
                        np.concatenate([study.iconic.cnn, study.train_photos.cnn]),
                        np.concatenate([study.iconic.colour, study.train_photos.colour]), 0.0)
    adapter = fit(every, params)
    served = accuracy.Projection(adapter.a, adapter.b, "adapter")
    notes.append(f"adapter (`fit`) fitted twice in {time.perf_counter() - started:.0f} s")
    name = f"adapter (`fit`, rank {params['RANK']}, decay {params['DECAY']:g})"
    for blend in dict.fromkeys([SHIPPED, chosen]):
        # Studio photos alone, halves' queries: the catalog slice the product judges on.
        row(f"studio photo only + {name}", blend, base, projection=served,
            train=halves(base, blend, half_map))
        row(f"studio + train photos + {name}", blend, shop, half, projection=served,
            halves_projection=half_map)
    return rows, notes


def search_path(study: accuracy.Study) -> list[str]:
    """Part 2: the catalog in a throwaway database, `learn`, `visual_pool` per val photo."""
    from django.test.utils import setup_databases, teardown_databases

    old = setup_databases(verbosity=0, interactive=False)
    try:
        return _search_path(study)
    finally:
        teardown_databases(old, verbosity=0)


def _search_path(study: accuracy.Study) -> list[str]:
    from django.conf import settings
    from django.test.utils import override_settings

    from demo_shop.shop.models import Product, ProductImage
    from visual_reco.choices import EmbeddingStatus
    from visual_reco.conf import reco_settings
    from visual_reco.embedders import get_embedder
    from visual_reco.photo_adapter import forget_serving
    from visual_reco.photo_adapter_learning import learn
    from visual_reco.registry import get_embedding_field
    from visual_reco.search import visual_pool

    data = study.data
    products = Product.objects.bulk_create(
        [Product(sku=name[:64], name=name, category="grocery") for name in data.classes])
    own = get_embedding_field(Product, "image_embedding")
    gallery = get_embedding_field(Product, "embedding")
    fingerprint = own.fingerprint_for(get_embedder())
    for product, vector, colour in zip(products, study.iconic.cnn, study.iconic.colour,
                                       strict=True):
        Product.objects.filter(pk=product.pk).update(**own.state(
            EmbeddingStatus.READY, vector=vector, aspect_vectors={"colour": colour},
            fingerprint=fingerprint))
    # The studio photo first, then the train photos (by file name): the first image is the
    # catalog photo, the others the shop's extra photos.
    entries = [(p, "studio", study.iconic.cnn[p], study.iconic.colour[p])
               for p in range(len(products))]
    order = sorted(range(len(data.train)), key=lambda i: (data.train_labels[i],
                                                          data.train[i].name))
    entries += [(int(data.train_labels[i]), data.train[i].stem, study.train_photos.cnn[i],
                 study.train_photos.colour[i]) for i in order]
    images = ProductImage.objects.bulk_create(
        [ProductImage(product=products[p], view=f"{view[:30]}-{n}", position=n,
                      image=f"g/{n}.jpg")
         for n, (p, view, _, _) in enumerate(entries)])
    for image, (_, _, vector, colour) in zip(images, entries, strict=True):
        ProductImage.objects.filter(pk=image.pk).update(**gallery.state(
            EmbeddingStatus.READY, vector=vector, aspect_vectors={"colour": colour},
            fingerprint=fingerprint))
    pk_label = {product.pk: index for index, product in enumerate(products)}
    queries = study.val.one, study.centre["val"], study.val.labels

    def measure() -> tuple[float, float, float]:
        hits1 = hits5 = 0
        started = time.perf_counter()
        for vector, colour, label in zip(*queries, strict=True):
            found = [pk_label[row.pk] for row in visual_pool(
                Product.objects.all(), vector, LIMIT, colour=colour, field="embedding")]
            hits1 += found[:1] == [label]
            hits5 += label in found
        seconds = time.perf_counter() - started
        return hits1 / len(queries[2]), hits5 / len(queries[2]), seconds / len(queries[2])

    lines = []
    refused = learn(Product, "image_embedding", echo=print)
    lines.append(f"- own field (one image per product): version {refused.version}, "
                 f"{refused.reason}")
    before = measure()
    lines.append(f"- val through `visual_pool`, no adapter: R@1 {before[0]:.3f} / R@5 "
                 f"{before[1]:.3f} ({before[2] * 1000:.0f} ms a query)")
    result = learn(Product, "embedding", echo=print)
    lines.append(f"- `learn` on the gallery: version {result.version}, serving "
                 f"{result.serving}: {result.reason} (fit {result.metrics.get('fit_seconds')} s)")
    forget_serving()
    configured = dict(settings.VISUAL_RECO)
    for images in (int(reco_settings.PHOTO_ADAPTER["IMAGES"]), 10_000):
        adapter = {**configured.get("PHOTO_ADAPTER", {}), "IMAGES": images}
        with override_settings(VISUAL_RECO={**configured, "PHOTO_ADAPTER": adapter}):
            after = measure()
        lines.append(f"- val through `visual_pool`, adapter serving, each pool product's "
                     f"{images if images < 10_000 else 'every'} best images re-scored: R@1 "
                     f"{after[0]:.3f} / R@5 {after[1]:.3f} ({after[2] * 1000:.0f} ms a query)")
    for line in lines:
        print(line, flush=True)
    return lines


def main() -> None:
    """Print part 1's table and notes, then part 2's lines."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--no-search-path", action="store_true",
                        help="part 1 only (no database)")
    args = parser.parse_args()
    research.setup_django()
    from visual_reco.conf import reco_settings

    params = dict(reco_settings.PHOTO_ADAPTER)
    started = time.perf_counter()
    data = accuracy.grocery(args.datasets / "grocery_store")
    iconic = accuracy.photos("grocery-iconic", data.iconic)
    train = accuracy.photos("grocery-train", data.train)
    val = accuracy.photos("grocery-val", data.val)
    every = np.arange(len(data.val))
    study = accuracy.Study(
        data, accuracy.Queries(data.train_labels, train.cnn, train.colour), None,
        accuracy.Queries(data.val_labels, val.cnn[every], val.colour[every], rows=every),
        iconic, train, {}, {"train": accuracy.centre_colours("grocery-train", data.train),
                            "val": accuracy.centre_colours("grocery-val", data.val)})
    accuracy.research._limit_threads()
    rows, notes = numpy_rows(study, params)
    lines = [] if args.no_search_path else search_path(study)
    print(f"\nCPU: {research.cpu_model()}; {len(data.val)} val queries, {len(data.train)} "
          f"train photos, {study.products} products; {time.perf_counter() - started:.0f} s")
    print(research.table(["catalog", "images per product", "blend",
                          "train halves 1 pass*", "val 1 pass"], rows))
    print("* the first half of each product's train photos as queries; the gallery holds the "
          "second half (the studio photos alone in the studio rows); an adapter in this "
          "column is fitted on the studio photos and the second halves.")
    for note in notes + lines:
        print(note if note.startswith("- ") else f"- {note}")


if __name__ == "__main__":
    main()
