"""Photo search accuracy research (issue 13, point 3): what lifts fine Recall@1 of phone
photos against studio photos on the Grocery Store set, with one Xception pass per search or
six (today's ``QUERY_MULTI_CROP``).

Run: ``.venv/bin/python demo_shop/bench/photo_accuracy.py [--datasets DIR]``.

Levers, each a row of the printed table:

1. synthetic views (`demo_shop.bench.synthetic_views`) of each studio photo stored as extra
   gallery images of its product (0, 4, 8 or 16 per product; the product scores by its best
   image, the gallery aggregate of `gallery_grocery.recall`);
2. a projection learned from those views (TensorFlow: a low-rank residual map on the frozen
   2048-d vectors, contrastive loss against the studio photos), applied to query and gallery;
3. the ``train`` phone photos added as extra images (the shop's own photos);
4. the `similar` blend re-chosen for photo search, the query's colour vector from its
   centre crop (pixels only, no model pass), query expansion (the query averaged with its
   best gallery image's vector) and a test-time flip (two passes).

Choices are greedy, one lever at a time (`rows_of`); the Luma item-to-item numbers with each
projection applied to every vector close the run (`luma_check`).

Each is scored by the CNN cosine alone ("shape") and by the `similar` blend
(``cos_shape + w * max(cos_colour, 0) ** s``, w=0.3 s=16 today), the query's colour vector
taken from its whole photo as the search does. Every setting is chosen on ``train`` phone
photos as queries (fine R@1, then R@5), every ``val`` number only reported; ``val`` photos
never build a view. With the ``train`` photos in the gallery (scenario "shop photos"),
settings are chosen with the first half of each product's ``train`` photos as queries and the
second half in the gallery. Six-crop ``train`` numbers use one photo in `TRAIN_CROP_STEP`
(six passes each).

Embeddings (CNN vector and the worker's colour vector) are cached: whole photos where
``colour_research`` and ``gallery_grocery`` cache them, crops, flips and views under
``.cache/photo-accuracy/``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo_shop.bench import colour_research as research  # noqa: E402
from demo_shop.bench import mode_tuning as tuning  # noqa: E402
from demo_shop.bench import synthetic_views as synthetic  # noqa: E402

CACHE = ROOT / ".cache" / "photo-accuracy"
VIEW_COUNTS = (0, 4, 8, 16)
MAX_VIEWS = max(VIEW_COUNTS)
TRAIN_CROP_STEP = 15
CROP_FRACTION = 0.7  # QUERY_MULTI_CROP
TODAY = (0.3, 16.0)  # the `similar` blend
BLENDS = [(0.0, 1.0)] + [(w, s) for s in tuning.SHARPNESS for w in tuning.WEIGHTS]
QE_WEIGHTS = (0.0, 0.25, 0.5, 1.0)
CHUNK = 64
# Projection: rank of the residual map x -> x + x A B, its pull to the identity, epochs.
PROJECTION_GRID = [(rank, decay) for rank in (32, 128) for decay in (1e-3, 1e-1)]
PROJECTION_EPOCHS = 150
PROJECTION_TEMPERATURE = 0.05


# --- data -----------------------------------------------------------------------------------


@dataclass
class Grocery:
    """The set's products (fine classes, sorted), their studio photos and the phone photos."""

    classes: list[str]
    iconic: list[Path]
    train: list[Path]
    train_labels: np.ndarray  # index into classes
    val: list[Path]
    val_labels: np.ndarray

    def train_halves(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``train``: the first half of each product's photos (by file name) and the
        second half, so near-identical consecutive shots rarely fall on both sides."""
        first = np.zeros(len(self.train), dtype=bool)
        for label in range(len(self.classes)):
            rows = np.flatnonzero(self.train_labels == label)
            rows = rows[np.argsort([self.train[r].name for r in rows])]
            first[rows[:len(rows) // 2]] = True
        return np.flatnonzero(first), np.flatnonzero(~first)


def grocery(folder: Path) -> Grocery:
    """The Grocery Store set's ``labels.csv`` as a `Grocery`."""
    with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    iconic = {row["fine_name"]: row["iconic"] for row in rows}
    classes = sorted(iconic)
    index = {name: i for i, name in enumerate(classes)}

    def split(name: str) -> tuple[list[Path], np.ndarray]:
        chosen = [row for row in rows if row["split"] == name]
        return ([folder / row["path"] for row in chosen],
                np.array([index[row["fine_name"]] for row in chosen]))

    train, train_labels = split("train")
    val, val_labels = split("val")
    return Grocery(classes, [folder / iconic[name] for name in classes], train, train_labels,
                   val, val_labels)


class Decoded(Sequence):
    """Photos decoded on demand as the evaluation decodes them (for view backgrounds)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        from demo_shop.bench.feature_maps import decoder

        self.paths, self.decode = list(paths), decoder()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):  # noqa: ANN001 - Sequence's signature
        return self.decode(self.paths[index])


# --- embeddings -----------------------------------------------------------------------------


@dataclass
class Vectors:
    """CNN vectors and the worker's colour vectors of a set of images."""

    cnn: np.ndarray
    colour: np.ndarray

    def take(self, rows: np.ndarray) -> Vectors:
        """The rows ``rows``."""
        return Vectors(self.cnn[rows], self.colour[rows])


def photos(name: str, paths: list[Path]) -> Vectors:
    """Whole photos, embedded as ``gallery_grocery`` does (its cache), with their colour."""
    cnn, pixels = research.embedded(name, paths)
    return Vectors(cnn, research.worker_colours(name, pixels))


def images(name: str, key: object, count: int, produce: Callable[[], Iterator]) -> Vectors:
    """``count`` images that ``produce()`` yields in order, embedded with their colour by the
    configured embedder (`Embedder.embed_with_aspects`, the worker's path); cached by
    ``name`` and ``key``."""
    from visual_reco.embedders import get_embedder

    embedder = get_embedder()
    digest = hashlib.sha256(json.dumps([embedder.fingerprint, key, count], default=str)
                            .encode()).hexdigest()[:12]
    path = CACHE / f"{name}-{digest}.npz"
    if path.exists():
        stored = np.load(path)
        return Vectors(stored["cnn"], stored["colour"])
    CACHE.mkdir(parents=True, exist_ok=True)
    research._limit_threads()
    started, done = time.perf_counter(), 0
    cnn, colour, batch = [], [], []
    source = produce()
    while done < count:
        batch = [image for _, image in zip(range(min(CHUNK, count - done)), source,
                                           strict=False)]
        vectors, aspects = embedder.embed_with_aspects(batch, ["colour"])
        cnn.append(vectors)
        colour.append(aspects["colour"])
        done += len(batch)
        print(f"{name}: {done}/{count} in {time.perf_counter() - started:.0f} s", flush=True)
    result = Vectors(np.concatenate(cnn), np.concatenate(colour))
    np.savez(path, cnn=result.cnn, colour=result.colour)
    return result


@dataclass
class Queries:
    """Phone photos as queries: the whole photo (1 pass), the mean of it and its five crops
    (6 passes, `visual_reco.query_photos.embed_query_images`), whole + mirrored (2 passes);
    the colour vector is always the whole photo's."""

    labels: np.ndarray
    one: np.ndarray
    colour: np.ndarray
    six: np.ndarray | None = None
    flip: np.ndarray | None = None
    rows: np.ndarray | None = None  # of the full set, when a subset


def l2(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def queries(name: str, paths: list[Path], labels: np.ndarray, whole: Vectors,
            rows: np.ndarray) -> Queries:
    """The `Queries` of ``paths[rows]``: crops and mirror images embedded (cached)."""
    from PIL import ImageOps

    from demo_shop.bench.feature_maps import decoder
    from visual_reco.preprocessing import multi_crops

    decode = decoder()
    chosen = [paths[r] for r in rows]

    def crops() -> Iterator:
        for path in chosen:
            yield from multi_crops(decode(path), CROP_FRACTION)[1:]

    def mirrored() -> Iterator:
        for path in chosen:
            yield ImageOps.mirror(decode(path))

    crop = images(f"{name}-crops", [str(p) for p in chosen], 5 * len(chosen), crops).cnn
    flip = images(f"{name}-flip", [str(p) for p in chosen], len(chosen), mirrored).cnn
    one = whole.cnn[rows]
    six = l2(np.concatenate([one[:, None], crop.reshape(len(rows), 5, -1)], axis=1).mean(axis=1))
    return Queries(labels[rows], one, whole.colour[rows], six, l2(one + flip), rows)


def centre_colours(name: str, paths: list[Path]) -> np.ndarray:
    """The worker's colour vector of each photo's centre crop (`CROP_FRACTION` of each side,
    `multi_crops`' second image): no model pass, only the colour of the pixels (cached)."""
    from demo_shop.bench.feature_maps import decoder
    from visual_reco.aspects import compute_aspects
    from visual_reco.colour import VERSION
    from visual_reco.embedders import get_embedder
    from visual_reco.preprocessing import multi_crops

    path = CACHE / f"{name}-{len(paths)}-centre-colour-v{VERSION}.npy"
    if path.exists():
        return np.load(path)
    decode, embedder = decoder(), get_embedder()
    prepared = (embedder.prepare(multi_crops(decode(p), CROP_FRACTION)[1]) for p in paths)
    colours = np.concatenate([compute_aspects([next(prepared) for _ in range(
        min(CHUNK, len(paths) - start))], ["colour"])["colour"]
        for start in range(0, len(paths), CHUNK)])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, colours)
    return colours


def view_vectors(data: Grocery, family: str, backgrounds: Sequence | None = None) -> Vectors:
    """`MAX_VIEWS` synthetic views of every product in ``family`` (product-major rows)."""
    from demo_shop.bench.feature_maps import decoder

    decode = decoder()

    def produce() -> Iterator:
        cut = [synthetic.cutout(decode(path)) for path in data.iconic]
        return synthetic.views(cut, family, MAX_VIEWS, backgrounds or ())

    key = [synthetic.VERSION, family, [str(p) for p in data.iconic],
           len(backgrounds) if backgrounds else 0]
    return images(f"views-{family}", key, MAX_VIEWS * len(data.iconic), produce)


# --- ranking --------------------------------------------------------------------------------


@dataclass
class Gallery:
    """Images of products: vectors and each image's product (index into the classes)."""

    vectors: Vectors
    owners: np.ndarray
    kinds: list[str] = field(default_factory=list)

    def plus(self, vectors: Vectors, owners: np.ndarray, kind: str) -> Gallery:
        """This gallery with more images."""
        return Gallery(Vectors(np.concatenate([self.vectors.cnn, vectors.cnn]),
                               np.concatenate([self.vectors.colour, vectors.colour])),
                       np.concatenate([self.owners, owners]), [*self.kinds, kind])


def with_views(gallery: Gallery, views: Vectors, count: int) -> Gallery:
    """``gallery`` plus the first ``count`` views of each product."""
    if not count:
        return gallery
    products = len(views.cnn) // MAX_VIEWS
    rows = (np.arange(products)[:, None] * MAX_VIEWS + np.arange(count)[None, :]).ravel()
    return gallery.plus(views.take(rows), np.repeat(np.arange(products), count),
                        f"{count} views")


def cosines(query: np.ndarray, colour: np.ndarray, gallery: Gallery
            ) -> tuple[np.ndarray, np.ndarray]:
    """(queries, images) shape and colour cosines."""
    return (query.astype(np.float64) @ gallery.vectors.cnn.T.astype(np.float64),
            colour.astype(np.float64) @ gallery.vectors.colour.T.astype(np.float64))


def blended(shape: np.ndarray, colour: np.ndarray,
            blend: tuple[float, float] | None) -> np.ndarray:
    """The shape cosine, plus ``w * max(cos_colour, 0) ** s`` for a blend (w, s)."""
    if blend is None or not blend[0]:
        return shape
    return shape + blend[0] * np.maximum(colour, 0.0) ** blend[1]


def product_scores(scores: np.ndarray, owners: np.ndarray, products: int) -> np.ndarray:
    """(queries, products): each product's best image (the gallery aggregate, max)."""
    out = np.full((len(scores), products), -np.inf)
    for product in range(products):
        out[:, product] = scores[:, owners == product].max(axis=1)
    return out


def recall(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Fine R@1 and R@5 of product ``scores`` (ties to the lower product index)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    hits = top == labels[:, None]
    return float(hits[:, 0].mean()), float(hits.any(axis=1).mean())


@dataclass(frozen=True)
class Setting:
    """How a query is ranked: blend (None: shape alone), query-expansion weight."""

    blend: tuple[float, float] | None = None
    expansion: float = 0.0


def rank(query: np.ndarray, colour: np.ndarray, gallery: Gallery, setting: Setting,
         products: int) -> np.ndarray:
    """Product scores of the queries under ``setting``; query expansion adds the vector of
    the best image under the same setting to the query and ranks again."""
    shape, colour_cosine = cosines(query, colour, gallery)
    scores = blended(shape, colour_cosine, setting.blend)
    if setting.expansion:
        best = gallery.vectors.cnn[np.argmax(scores, axis=1)]
        expanded = l2(query + setting.expansion * best)
        scores = blended(expanded.astype(np.float64) @ gallery.vectors.cnn.T.astype(np.float64),
                         colour_cosine, setting.blend)
    return product_scores(scores, gallery.owners, products)


# --- projection -----------------------------------------------------------------------------


@dataclass
class Projection:
    """x -> l2(x + x A B), learned; applied to every vector of query and gallery."""

    a: np.ndarray
    b: np.ndarray
    name: str

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return l2(rows + (rows @ self.a) @ self.b)

    def gallery(self, gallery: Gallery) -> Gallery:
        """``gallery`` with its CNN vectors projected (colour unchanged)."""
        return Gallery(Vectors(self(gallery.vectors.cnn), gallery.vectors.colour),
                       gallery.owners, gallery.kinds)


def fit_projection(views: np.ndarray, view_owners: np.ndarray, anchors: np.ndarray,
                   rank_: int, decay: float, seed: int = 0) -> Projection:
    """Fit A, B (rank ``rank_``; B starts at zero, so the map starts as the identity) so that
    each projected view is nearest its product's projected ``anchors`` row (softmax over
    the products at `PROJECTION_TEMPERATURE`), with ``decay`` * ||A B||^2 pulling it back to
    the identity. Full batch, Adam."""
    import tensorflow as tf

    tf.random.set_seed(seed)
    a = tf.Variable(tf.random.normal((views.shape[1], rank_), stddev=1 / np.sqrt(views.shape[1])))
    b = tf.Variable(tf.zeros((rank_, views.shape[1])))
    x = tf.constant(views, tf.float32)
    p = tf.constant(anchors, tf.float32)
    y = tf.constant(view_owners)
    optimiser = tf.keras.optimizers.Adam(1e-3)

    def project(rows: tf.Tensor) -> tf.Tensor:
        return tf.math.l2_normalize(rows + (rows @ a) @ b, axis=1)

    for _ in range(PROJECTION_EPOCHS):
        with tf.GradientTape() as tape:
            logits = project(x) @ tf.transpose(project(p)) / PROJECTION_TEMPERATURE
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            loss += decay * tf.reduce_sum(tf.square(a @ b))
        optimiser.apply_gradients(zip(tape.gradient(loss, [a, b]), [a, b], strict=True))
    return Projection(a.numpy(), b.numpy(), f"rank {rank_}, decay {decay:g}")


# --- the study ------------------------------------------------------------------------------


def cell(scores: tuple[float, float] | None) -> str:
    """``R@1 / R@5``, or a dash."""
    return "-" if scores is None else f"{scores[0]:.3f} / {scores[1]:.3f}"


def better(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether ``a`` beats ``b``: R@1 first, then R@5."""
    return a > b


@dataclass
class Study:
    """The data of every row: query sets and the galleries' parts."""

    data: Grocery
    train: Queries  # every train photo: one pass; `six`/`flip` on the 1-in-N subset only
    train_sub: Queries
    val: Queries
    iconic: Vectors
    train_photos: Vectors
    views: dict[str, Vectors]
    centre: dict[str, np.ndarray]  # the centre crop's colour of each train and val photo

    @property
    def products(self) -> int:
        """How many products."""
        return len(self.data.classes)

    def base(self) -> Gallery:
        """The studio photos alone."""
        return Gallery(self.iconic, np.arange(self.products), ["studio photo"])

    def score(self, gallery: Gallery, query: Queries, kind: str, setting: Setting,
              projection: Projection | None = None) -> tuple[float, float] | None:
        """R@1 / R@5 of ``query``'s ``kind`` vectors ("one", "six", "flip")."""
        vectors = getattr(query, kind)
        if vectors is None:
            return None
        if projection is not None:
            vectors, gallery = projection(vectors), projection.gallery(gallery)
        return recall(rank(vectors, query.colour, gallery, setting, self.products),
                      query.labels)


def choose_blend(study: Study, gallery: Gallery, query: Queries,
                 projection: Projection | None = None) -> tuple[float, float]:
    """The blend of `BLENDS` with the best one-pass R@1 (then R@5) on ``query``."""
    vectors = query.one
    if projection is not None:
        vectors, gallery = projection(vectors), projection.gallery(gallery)
    shape, colour = cosines(vectors, query.colour, gallery)
    found = {blend: recall(product_scores(blended(shape, colour, blend), gallery.owners,
                                          study.products), query.labels)
             for blend in BLENDS}
    return max(BLENDS, key=lambda blend: found[blend])


def load(datasets: Path, with_plain: bool) -> Study:
    """Embed (or read from the caches) every image the study needs (the ``plain`` views
    when ``with_plain``)."""
    data = grocery(datasets / "grocery_store")
    iconic = photos("grocery-iconic", data.iconic)
    train = photos("grocery-train", data.train)
    val = photos("grocery-val", data.val)
    every = np.arange(len(data.val))
    train_all = Queries(data.train_labels, train.cnn, train.colour)
    views = {"clutter": view_vectors(data, "clutter"),
             "shop": view_vectors(data, "shop", Decoded(data.train))}
    val_queries = queries("grocery-val", data.val, data.val_labels, val, every)
    sub = np.arange(0, len(data.train), TRAIN_CROP_STEP)
    train_sub = queries("grocery-train", data.train, data.train_labels, train, sub)
    if with_plain:
        views["plain"] = view_vectors(data, "plain")
    centre = {"train": centre_colours("grocery-train", data.train),
              "val": centre_colours("grocery-val", data.val)}
    return Study(data, train_all, train_sub, val_queries, iconic, train, views, centre)


def studio_colour(gallery: Gallery, study: Study, first: int) -> Gallery:
    """``gallery`` with the colour vector of every image from row ``first`` on (the synthetic
    views) replaced by its product's studio photo's: a view's own colour includes its drawn
    background and light."""
    colour = gallery.vectors.colour.copy()
    colour[first:] = study.iconic.colour[gallery.owners[first:]]
    return Gallery(Vectors(gallery.vectors.cnn, colour), gallery.owners, gallery.kinds)


def with_colour(query: Queries, colour: np.ndarray) -> Queries:
    """``query`` with another colour vector per photo."""
    return replace(query, colour=colour)


def luma_vectors(datasets: Path) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Every Luma photo's CNN vector (``colour_research``'s cache) and its labels."""
    folder = datasets / "magento_luma"
    rows = research.luma_rows(folder)
    cnn, _ = research.embedded("luma", [folder / row["path"] for row in rows])
    return cnn, rows


def luma_check(luma: tuple[np.ndarray, list[dict[str, str]]],
               projections: Sequence[Projection]) -> list[list[str]]:
    """Luma item-to-item (every photo against the others, the CNN cosine) as the quality
    table's defaults row measures it (`visual_reco.evaluation.metrics.label_metrics`),
    without and with each projection."""
    from visual_reco.evaluation.metrics import label_metrics

    cnn, rows = luma
    out = []
    for projection in (None, *projections):
        vectors = cnn if projection is None else projection(cnn)
        similarity = vectors @ vectors.T
        itself = np.eye(len(vectors), dtype=bool)
        numbers = [label_metrics(similarity, labels, labels, itself)
                   for labels in ([r["item"] for r in rows], [r["category"] for r in rows])]
        out.append(["none" if projection is None else projection.name,
                    f"{numbers[0]['recall@1']:.3f}", f"{numbers[0]['recall@5']:.3f}",
                    f"{numbers[1]['recall@1']:.3f}", f"{numbers[1]['recall@5']:.3f}"])
    return out


def rows_of(study: Study) -> tuple[list[list[str]], list[str], list[Projection]]:
    """Every row of the table, the notes on what was chosen and the projections learned.

    Choices are greedy, one lever at a time, each kept only if it raises the train R@1
    (then R@5) of the one-pass query over the choice before it."""
    notes: list[str] = []
    table: list[list[str]] = []
    base = study.base()
    today = Setting(TODAY)

    def row(lever: str, gallery: Gallery, setting: Setting, *, train: bool = True,
            projection: Projection | None = None, flip: bool = False,
            colour: str = "whole") -> None:
        """One table row: ``setting`` ranks the train and `similar` columns."""
        shape = Setting(None, setting.expansion)
        val, train_all, train_sub = study.val, study.train, study.train_sub
        if colour == "centre":
            val = with_colour(val, study.centre["val"])
            train_all = with_colour(train_all, study.centre["train"])
            train_sub = with_colour(train_sub, study.centre["train"][train_sub.rows])
        cells = [lever, f"{len(gallery.owners) / study.products:.1f}",
                 "shape" if setting.blend is None else f"w={setting.blend[0]:g} "
                 f"s={setting.blend[1]:g}" + (f", QE {setting.expansion:g}"
                                             if setting.expansion else "")]
        for query, kind in ((train_all, "one"), (train_sub, "six")):
            cells.append(cell(study.score(gallery, query, kind, setting, projection)
                              if train else None))
        for kind in ("one", "six") + (("flip",) if flip else ()):
            cells.append(cell(study.score(gallery, val, kind, shape, projection)))
            cells.append(cell(study.score(gallery, val, kind, setting, projection)))
        if not flip:
            cells += ["", ""]
        table.append(cells)
        print(" | ".join(cells), flush=True)

    def train_r(gallery: Gallery, setting: Setting, projection: Projection | None = None,
                query: Queries | None = None) -> tuple[float, float]:
        return study.score(gallery, query or study.train, "one", setting, projection)

    # 0. Today; 4a. the blend re-chosen for photo search (it was chosen on Luma item-to-item).
    row("studio photo only (today)", base, today, flip=True)
    blend = choose_blend(study, base, study.train)
    notes.append(f"blend for photo search re-chosen on train, studio photo only: "
                 f"w={blend[0]:g} s={blend[1]:g}")
    row("studio photo only, blend re-chosen", base, Setting(blend), flip=True)
    # 4b. The query's colour from its centre crop (no model pass), blend re-chosen.
    queries_ = {"whole": study.train, "centre": with_colour(study.train, study.centre["train"])}
    centre_blend = choose_blend(study, base, queries_["centre"])
    row("studio photo only, query colour of the centre 70% crop", base, Setting(centre_blend),
        colour="centre", flip=True)
    colour = "whole"
    if better(train_r(base, Setting(centre_blend), query=queries_["centre"]),
              train_r(base, Setting(blend))):
        colour, blend = "centre", centre_blend
    notes.append(f"query colour chosen on train: {colour}")
    query = queries_[colour]
    current = (base, blend, train_r(base, Setting(blend), query=query))
    # 1. Synthetic views without shop photos, each family, count and colour (own or the
    # studio photo's) at its re-chosen blend, against no views.
    for family in [name for name in ("clutter", "plain") if name in study.views]:
        for count in VIEW_COUNTS[1:]:
            for studio in (False, True):
                gallery = with_views(base, study.views[family], count)
                if studio:
                    gallery = studio_colour(gallery, study, len(base.owners))
                found_blend = choose_blend(study, gallery, query)
                row(f"+ {count} {family} views" + (", studio colour" if studio else ""),
                    gallery, Setting(found_blend), colour=colour)
                found = train_r(gallery, Setting(found_blend), query=query)
                if better(found, current[2]):
                    current = (gallery, found_blend, found)
    gallery, blend, _ = current
    notes.append(f"views chosen on train: {', '.join(gallery.kinds[1:]) or 'none'}"
                 f" (blend w={blend[0]:g} s={blend[1]:g})")
    # 4c. Query expansion.
    for weight in QE_WEIGHTS[1:]:
        row(f"chosen so far + query expansion {weight:g}", gallery, Setting(blend, weight),
            colour=colour)
    expansion = max(QE_WEIGHTS, key=lambda e: train_r(gallery, Setting(blend, e), query=query))
    notes.append(f"query expansion weight chosen on train: {expansion:g}")
    setting = Setting(blend, expansion)
    # 2. Projection learned from synthetic views (all 16 of each family), chosen on train.
    owners = np.repeat(np.arange(study.products), MAX_VIEWS)
    fitted = []
    for family in [name for name in ("clutter", "plain") if name in study.views]:
        for rank_, decay in PROJECTION_GRID:
            started = time.perf_counter()
            projection = fit_projection(study.views[family].cnn, owners, study.iconic.cnn,
                                        rank_, decay)
            projection.name = f"{family} views, {projection.name}"
            found = train_r(gallery, setting, projection, query)
            fitted.append((found, projection))
            print(f"projection {projection.name}: train {cell(found)} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    found, projection = max(fitted, key=lambda pair: pair[0])
    row(f"projection ({projection.name}), studio photo only, today's blend", base, today,
        projection=projection)
    row(f"projection ({projection.name}) + the choices above", gallery, setting,
        projection=projection, colour=colour, flip=True)
    kept = better(found, train_r(gallery, setting, query=query))
    notes.append(f"projection chosen on train: {projection.name}; kept: {kept}")
    row("**chosen without shop photos**", gallery, setting,
        projection=projection if kept else None, colour=colour, flip=True)
    # 3. With the shop's own photos in the gallery; choices on train halves (first half of
    # each product's photos as queries, second half in the gallery).
    first, second = study.data.train_halves()
    half_query = Queries(query.labels[first], query.one[first], query.colour[first])
    labels = study.data.train_labels
    shop = base.plus(study.train_photos, labels, "train photos")
    half = base.plus(study.train_photos.take(second), labels[second], "half")
    row("studio + train photos (gallery), today's blend", shop, today, train=False, flip=True)
    shop_blend = choose_blend(study, half, half_query)
    row("studio + train photos, blend re-chosen on train halves", shop, Setting(shop_blend),
        train=False, colour=colour, flip=True)
    best_shop = (train_r(half, Setting(shop_blend), query=half_query), shop, half, shop_blend,
                 "no views", None)
    for name in ("plain", "clutter", "shop"):
        if name not in study.views:
            continue
        for views_count in VIEW_COUNTS[1:]:
            full = studio_colour(with_views(shop, study.views[name], views_count), study,
                                 len(shop.owners))
            half_gallery = studio_colour(with_views(half, study.views[name], views_count),
                                         study, len(half.owners))
            found_blend = choose_blend(study, half_gallery, half_query)
            found = train_r(half_gallery, Setting(found_blend), query=half_query)
            row(f"studio + train photos + {views_count} {name} views, studio colour", full,
                Setting(found_blend), train=False, colour=colour)
            if better(found, best_shop[0]):
                best_shop = (found, full, half_gallery, found_blend,
                             f"{views_count} {name} views", name)
    _, full, half_gallery, shop_blend, label, name = best_shop
    shop_expansion = max(QE_WEIGHTS, key=lambda e: train_r(
        half_gallery, Setting(shop_blend, e), query=half_query))
    notes.append(f"with train photos, chosen on train halves: {label}, "
                 f"blend w={shop_blend[0]:g} s={shop_blend[1]:g}, QE {shop_expansion:g}")
    shop_setting = Setting(shop_blend, shop_expansion)
    row(f"**chosen with shop photos**: studio + train photos, {label}", full, shop_setting,
        train=False, colour=colour, flip=True)
    # 2 + 3. A projection learned from the shop's photos: fitted on the second half of each
    # product's train photos, chosen with the first half as queries, fitted again on every
    # train photo for val.

    def shop_projection(rows: np.ndarray, rank_: int, decay: float) -> Projection:
        return fit_projection(study.train_photos.cnn[rows], labels[rows], study.iconic.cnn,
                              rank_, decay)

    fitted_shop = []
    for rank_, decay in PROJECTION_GRID:
        candidate = shop_projection(second, rank_, decay)
        found = train_r(half_gallery, shop_setting, candidate, half_query)
        fitted_shop.append((found, rank_, decay))
        print(f"shop projection {candidate.name}: train halves {cell(found)}", flush=True)
    _, rank_, decay = max(fitted_shop, key=lambda item: item[0])
    learned = shop_projection(np.arange(len(labels)), rank_, decay)
    learned.name = f"train photos, {learned.name}"
    row(f"projection learned from the train photos ({learned.name}) + the choice above",
        full, shop_setting, train=False, projection=learned, colour=colour, flip=True)
    return table, notes, [projection, learned]


HEADER = ["lever", "images per product", "ranking (train; val `similar` column)",
          "train 1 pass", f"train 6 crops (1 in {TRAIN_CROP_STEP})",
          "val 1 pass shape", "val 1 pass `similar`", "val 6 crops shape",
          "val 6 crops `similar`", "val flip (2 passes) shape", "val flip `similar`"]


def main(argv: list[str] | None = None) -> None:
    """Embed what is missing, measure every lever, print the table and the choices."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--no-plain", action="store_true",
                        help="leave out the views on white (1,296 more model passes)")
    args = parser.parse_args(argv)
    research.setup_django()
    started = time.perf_counter()
    # Embedded first: the projections' training starts TensorFlow with other thread limits.
    luma = luma_vectors(args.datasets)
    study = load(args.datasets, not args.no_plain)
    print(f"embedded in {time.perf_counter() - started:.0f} s", flush=True)
    table, notes, projections = rows_of(study)
    luma_table = luma_check(luma, projections)
    print(f"CPU: {research.cpu_model()}; {len(study.val.labels)} val queries, "
          f"{len(study.train.labels)} train ({len(study.train_sub.labels)} with crops), "
          f"{study.products} products; {time.perf_counter() - started:.0f} s")
    print(research.table(HEADER, table))
    for note in notes:
        print(f"- {note}")
    print("\nLuma item-to-item, every photo leave-one-out, CNN cosine:")
    print(research.table(["projection", "same item R@1", "same item R@5", "same category R@1",
                          "same category R@5"], luma_table))


if __name__ == "__main__":
    main()
