"""Learning the photo-search adapter (`visual_reco.photo_adapter`) from a gallery's extra
photos: customer or in-store shots a shop stores as images of its products.

Pairs: each image of a product after its first (by primary key; the first is the catalog
photo) is a query that should find its product's first image among every product's (a
softmax over the products at ``TEMPERATURE``); ``DECAY * |A B|^2`` pulls the map to the
identity. Anchoring on the catalog photo, rather than on all of a product's other images
(scored by their log-sum-exp), did better on the grocery train halves (R@1 0.962 against
0.959, docs/QUALITY.md "Photo search with shop photos"), and costs products, not images,
per query. Full-batch Adam (``BATCH`` photos sampled a step when there are more),
TensorFlow imported by `fit` only.

Judging: the latest ``HOLDOUT`` share of each product's extra photos is never trained on;
those photos search (each with its own colour vector) without the adapter by
``SEARCH_MODE`` and with it by ``PHOTO_ADAPTER["MODE"]``, as photo search would, the catalog
photos (each product's first image) and the rest of the gallery. A version serves only when
its R@1 beats the search without it by ``MARGIN`` on one of the two, drops by less than
``MARGIN`` on both, and the serving version does no better against the
catalog photos. Why both: a shop's extra photos of a product are often near-duplicate
shots, so a held-back one finds its twin in the gallery with or without the map (R@1 0.96
on the grocery train halves), while the gap from phone to catalog photo, which the map
learns, is what a new photo of a product without such twins meets. ``REFIT``: the version
stored and served is then fitted again on every extra photo (the held-back ones too), as
models chosen on a validation slice are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from django.db import IntegrityError, models, router, transaction

from visual_reco.aspects import get_aspect
from visual_reco.conf import reco_settings
from visual_reco.embedders import get_embedder
from visual_reco.models import PhotoAdapter
from visual_reco.modes import SHAPE, Blend, Term, blend_for, unit_rows
from visual_reco.photo_adapter import SERVING, Adapter
from visual_reco.query import binary_vector, from_binary
from visual_reco.registry import get_embedding_field, is_gallery, product_model
from visual_reco.rollout import live_embedder
from visual_reco.versions import TrainingResult

logger = logging.getLogger("visual_reco")

# What changes the adapter (and so its version); the rest only decides whether it serves.
TRAINING_PARAMS = ("RANK", "DECAY", "STEPS", "LEARNING_RATE", "TEMPERATURE", "HOLDOUT",
                   "MAX_IMAGES", "SEED", "REFIT")
# Extra photos per training step when there are more (full batch up to it).
BATCH = 4096
# Held-back queries ranked at a time when judging.
CHUNK = 256


@dataclass(frozen=True)
class Photos:
    """A gallery's images, oldest first: each one's product (index into ``products``), unit
    CNN vector, colour vector (NaN rows: none; None: the field has no colour), whether it
    is an extra photo (not its product's first) and whether it is held back."""

    products: list[str]
    owners: np.ndarray
    shape: np.ndarray
    colour: np.ndarray | None
    extra: np.ndarray
    held: np.ndarray

    @property
    def training(self) -> np.ndarray:
        """The extra photos trained on (queries of the pairs)."""
        return self.extra & ~self.held


def split(owners: np.ndarray, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """(extra, held) for images in primary-key order with these ``owners``: every image of a
    product after its first is extra, and the latest ``holdout`` share (rounded down) of a
    product's extras is held back."""
    extra = np.zeros(len(owners), dtype=bool)
    held = np.zeros(len(owners), dtype=bool)
    for product in np.unique(owners):
        rows = np.flatnonzero(owners == product)[1:]
        extra[rows] = True
        held[rows[len(rows) - int(len(rows) * holdout):]] = int(len(rows) * holdout) > 0
    return extra, held


def gather(model: type[models.Model], field_name: str | None, params: dict[str, Any]) -> Photos:
    """The latest ``MAX_IMAGES`` embedded images of ``field_name`` of ``model`` (a gallery
    field; a product's own field has one image per product, so no extra photos)."""
    embedding = get_embedding_field(model, field_name)
    colour = embedding.aspect_name("colour") if "colour" in embedding.aspects else None
    if is_gallery(embedding, model):
        key, manager = embedding.product_key().attname, embedding.model._base_manager
    else:
        key, manager = "pk", model._base_manager
    rows = list(manager.filter(**{f"{embedding.attname}__isnull": False})
                .order_by("-pk")
                .values_list(key, binary_vector(embedding.attname),
                             *([binary_vector(colour)] if colour else []))
                [:int(params["MAX_IMAGES"])])[::-1]
    products = sorted({str(row[0]) for row in rows})
    index = {name: i for i, name in enumerate(products)}
    owners = np.asarray([index[str(row[0])] for row in rows], dtype=np.int64)
    shape = (unit_rows(np.stack([from_binary(row[1]) for row in rows]), np.float32) if rows
             else np.zeros((0, embedding.dimensions), np.float32))
    colours = None
    if colour and rows:
        width = get_aspect("colour").dimensions
        colours = np.stack([np.full(width, np.nan, np.float32) if row[2] is None
                            else from_binary(row[2]) for row in rows])
    extra, held = split(owners, float(params["HOLDOUT"]))
    return Photos(products, owners, shape, colours, extra, held)


def fit(photos: Photos, params: dict[str, Any]) -> Adapter:
    """Fit ``A`` and ``B`` on the training pairs of ``photos`` (module docstring) with
    TensorFlow; the returned `Adapter` has no version or fingerprint yet."""
    import tensorflow as tf

    rng = np.random.default_rng(int(params["SEED"]))
    tf.random.set_seed(int(params["SEED"]))
    dims, rank = photos.shape.shape[1], int(params["RANK"])
    query_rows = np.flatnonzero(photos.training)
    # Each product's first image, in product order (every product has one, never held).
    firsts = np.flatnonzero(~photos.extra)
    anchors = tf.constant(photos.shape[firsts[np.argsort(photos.owners[firsts])]])
    a = tf.Variable(rng.normal(0.0, 1.0 / np.sqrt(dims), (dims, rank)).astype(np.float32))
    b = tf.Variable(np.zeros((rank, dims), np.float32))
    temperature, decay = float(params["TEMPERATURE"]), float(params["DECAY"])
    optimiser = tf.keras.optimizers.Adam(float(params["LEARNING_RATE"]))

    def project(rows: tf.Tensor) -> tf.Tensor:
        return tf.math.l2_normalize(rows + (rows @ a) @ b, axis=1)

    @tf.function
    def step(queries: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            logits = project(queries) @ tf.transpose(project(anchors)) / temperature
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
            loss += decay * tf.reduce_sum(tf.square(a @ b))
        optimiser.apply_gradients(zip(tape.gradient(loss, [a, b]), [a, b], strict=True))
        return loss

    for _ in range(int(params["STEPS"])):
        chosen = (query_rows if len(query_rows) <= BATCH
                  else rng.choice(query_rows, BATCH, replace=False))
        step(tf.constant(photos.shape[chosen]), tf.constant(photos.owners[chosen]))
    return Adapter("", "", a.numpy(), b.numpy())


def judge(photos: Photos, adapter: Adapter | None, blend: Blend | None, *,
          catalog: bool = False) -> dict[str, Any]:
    """R@1 and R@5 of the held-back photos searching the rest of the gallery (``catalog``:
    each product's first image only) by ``blend`` (None: the cosine), each product by its
    best image, with ``adapter`` (None: without)."""
    queries = np.flatnonzero(photos.held)
    gallery = np.flatnonzero(~(photos.extra if catalog else photos.held))
    blend = blend or Blend((Term(SHAPE, 1.0),))
    if photos.colour is None:
        blend = blend.without({"colour"})
    shape = photos.shape if adapter is None else adapter.project(photos.shape)
    # Gallery images grouped by product, for one maximum per product (every product keeps
    # its first image, never held back).
    gallery = gallery[np.argsort(photos.owners[gallery], kind="stable")]
    starts = np.flatnonzero(np.r_[True, np.diff(photos.owners[gallery]) != 0])
    ranks = []
    for start in range(0, len(queries), CHUNK):
        rows = queries[start:start + CHUNK]
        cosines = {SHAPE: shape[rows] @ shape[gallery].T}
        if "colour" in blend.aspects:
            cosines["colour"] = (unit_rows(photos.colour[rows])
                                 @ unit_rows(photos.colour[gallery]).T)
        best = np.maximum.reduceat(blend.combine(cosines), starts, axis=1)
        mine = best[np.arange(len(rows)), photos.owners[rows]]
        ranks.append((best > mine[:, None]).sum(axis=1))
    found = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    return {"queries": int(found.size),
            "r1": round(float((found < 1).mean()), 4) if found.size else None,
            "r5": round(float((found < 5).mean()), 4) if found.size else None}


def version_of(label: str, field_name: str, fingerprint: str, params: dict[str, Any],
               photos: Photos) -> str:
    """12 hex digits of a hash of what an adapter is trained from: the field, its embedder's
    fingerprint, the training parameters and the images read (their products and vectors)."""
    digest = hashlib.sha256(photos.shape.tobytes())
    digest.update(photos.owners.tobytes())
    digest.update(json.dumps(photos.products).encode())
    what = {"model": label, "field": field_name, "fingerprint": fingerprint,
            "params": {name: params[name] for name in TRAINING_PARAMS},
            "photos": digest.hexdigest()}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def decide(metrics: dict[str, Any], params: dict[str, Any]) -> tuple[bool, str]:
    """Whether held-back ``metrics`` earn serving, and why (in words): R@1 up by ``MARGIN``
    against the catalog photos or against the whole gallery, and down by less than
    ``MARGIN`` against either."""
    held, margin = metrics["held"], float(params["MARGIN"])
    if held < int(params["MIN_HELD"]):
        return False, f"only {held} held-back photos (MIN_HELD {params['MIN_HELD']})"
    catalog = metrics["catalog_adapted"]["r1"] - metrics["catalog_without"]["r1"]
    gallery = metrics["adapted"]["r1"] - metrics["without"]["r1"]
    text = (f"held-back R@1 {catalog:+.3f} against catalog photos, {gallery:+.3f} against "
            f"the gallery ({held} photos)")
    if max(catalog, gallery) < margin or min(catalog, gallery) <= -margin:
        return False, f"{text}; needs +{margin:g} on one and more than -{margin:g} on both"
    return True, text


def learn(model: type[models.Model] | None = None, field_name: str | None = None, *,
          dry_run: bool = False, echo: Callable[[str], None] | None = None,
          **overrides: Any) -> TrainingResult:
    """Train an adapter for ``field_name`` of ``model`` (default: the product model's first
    field; a gallery field is what has extra photos) from its images, judge it on the
    held-back photos and serve it when it beats the search without it there and the
    version serving now; ``overrides`` replace ``PHOTO_ADAPTER`` settings. Nothing is
    stored with ``dry_run``; refuses (stores nothing) with fewer than ``MIN_PHOTOS`` extra
    photos to train on. The same images give the same version, judged again, not retrained.
    """
    started = time.monotonic()
    model = model or product_model()
    embedding = get_embedding_field(model, field_name)
    label = model._meta.label_lower
    result = TrainingResult(label, embedding.name)
    fingerprint = get_embedder(live_embedder(embedding)).fingerprint
    params = {**reco_settings.PHOTO_ADAPTER, **overrides,
              "SEARCH_MODE": reco_settings.SEARCH_MODE}
    photos = gather(model, embedding.name, params)
    training = int(photos.training.sum())
    if training < int(params["MIN_PHOTOS"]):
        result.reason = (f"not enough pairs: {training} extra photos to train on (MIN_PHOTOS "
                         f"{params['MIN_PHOTOS']}); a product's images after its first "
                         f"(customer or in-store photos) teach the adapter")
        result.seconds = time.monotonic() - started
        return result
    blend = blend_for(params["SEARCH_MODE"])
    adapted_blend = blend_for(params["MODE"] or params["SEARCH_MODE"])
    result.version = version = version_of(label, embedding.name, fingerprint, params, photos)
    known = _versions().filter(version=version).first()
    if known is not None:
        serving, reason = decide(known.metrics, params)
        result.metrics, result.saved = known.metrics, True
        if serving and not known.serving and not dry_run:
            serve(known)
        result.serving = known.serving
        result.reason = f"trained before on the same photos; {reason}"
        result.seconds = time.monotonic() - started
        return result
    if echo:
        echo(f"{training} extra photos of {len(photos.products)} products to train on, "
             f"{int(photos.held.sum())} held back, {len(photos.owners)} images in all")
    fit_started = time.monotonic()
    adapter = fit(photos, params)
    adapter = Adapter(version, fingerprint, adapter.a, adapter.b)
    metrics = {"held": int(photos.held.sum()), "photos": training,
               "products": len(photos.products), "images": len(photos.owners),
               "fit_seconds": round(time.monotonic() - fit_started, 2),
               "without": judge(photos, None, blend),
               "adapted": judge(photos, adapter, adapted_blend),
               "catalog_without": judge(photos, None, blend, catalog=True),
               "catalog_adapted": judge(photos, adapter, adapted_blend, catalog=True)}
    serving, reason = decide(metrics, params)
    current = _versions().filter(model=label, field=embedding.name, serving=True,
                                 fingerprint=fingerprint).first()
    if serving and current is not None:
        theirs = judge(photos, Adapter.from_row(current), adapted_blend, catalog=True)
        metrics["serving_version"] = {"version": current.version, **theirs}
        if theirs["r1"] > metrics["catalog_adapted"]["r1"]:
            serving, reason = False, (f"{reason}, but the serving version {current.version} "
                                      f"does better against catalog photos (R@1 "
                                      f"{theirs['r1']:.3f})")
    result.metrics, result.reason, result.trained = metrics, reason, True
    if serving and not dry_run and params["REFIT"]:
        refit_started = time.monotonic()
        everything = replace(photos, held=np.zeros_like(photos.held))
        refitted = fit(everything, params)
        adapter = Adapter(version, fingerprint, refitted.a, refitted.b)
        metrics["refit_seconds"] = round(time.monotonic() - refit_started, 2)
    if not dry_run:
        try:
            with transaction.atomic():
                row = PhotoAdapter.objects.create(
                    version=version, model=label, field=embedding.name,
                    fingerprint=fingerprint, params=params, photos=training,
                    held=metrics["held"], metrics=metrics, decision=reason[:200],
                    weights=adapter.to_bytes())
        except IntegrityError:  # another run trained the same version meanwhile
            row = _versions().get(version=version)
        result.saved = True
        if serving:
            serve(row)
    result.serving = serving and not dry_run
    result.seconds = time.monotonic() - started
    logger.info("visual_reco_train_photo_adapter %s.%s %s: %s", label, embedding.name,
                version, reason)
    return result


def _versions() -> models.Manager:
    """The versions as their writer reads them: on the primary (a replica may lack the row
    another run has just saved)."""
    return PhotoAdapter.objects.db_manager(router.db_for_write(PhotoAdapter))


def serve(row: PhotoAdapter) -> None:
    """Make ``row`` the version that serves photo search on its field (the one before
    stops). Raises `ValueError` for a version trained on another embedder's vectors than
    the one the field's column holds."""
    SERVING.serve(row)


def retire(row: PhotoAdapter) -> None:
    """Stop serving ``row``: photo search on its field goes back to the raw vectors."""
    SERVING.retire(row)
