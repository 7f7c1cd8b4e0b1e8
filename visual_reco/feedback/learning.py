"""Learning from feedback what shoppers treat as alternatives: a small correction to the
cosine similarity of an embedding field's frozen vectors (`visual_reco.feedback.learned`),
fitted with TensorFlow on the served similar lists, judged on the latest lists held back,
and served only when it ranks them better than the visual order.

Training data, from the raw events of the ``FEEDBACK_SURFACES``: each served list a visitor
saw (visitor, ``list_id``) is its source and the products shown, with gains click 1,
add-to-cart 2, purchase 3; what was shown and not clicked are the hard negatives. Products a
visitor carted or bought together are pairs too, against the source's visual neighbours.

The loss is a listwise softmax over each list's products (target: the gains), with weight
decay, full-batch Adam, and early stopping on the latest ``VALIDATION`` share of the
training lists. The latest ``HOLDOUT`` share of the lists is never trained on: MRR, NDCG and
AUC of clicked against skipped products there, for the visual order and for the model, decide
whether it serves (``MIN_LISTS``, ``MARGIN``, ``MIN_Z``) and are what the admin shows.

TensorFlow is imported by `fit` only, so web processes never load it.
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
from django.db.models import Q

from visual_reco.choices import EventType
from visual_reco.conf import reco_settings
from visual_reco.embedders import get_embedder
from visual_reco.feedback.learned import SERVING, LearnedModel, stored_vectors, unit
from visual_reco.feedback.ranking import examination
from visual_reco.models import FeedbackEvent, LearnedRanking
from visual_reco.registry import get_embedding_field, product_model
from visual_reco.rollout import live_embedder
from visual_reco.versions import TrainingResult

logger = logging.getLogger("visual_reco")

LEARN_TASK = "visual_reco.learn_ranking"
GAINS = {EventType.CLICK: 1.0, EventType.FAVORITE: 1.0, EventType.ADD_TO_CART: 2.0,
         EventType.PURCHASE: 3.0}
BASKET = (EventType.ADD_TO_CART, EventType.PURCHASE)
# Longest list kept (a pool is POOL x limit), and products of a visitor's basket paired.
MAX_ITEMS = 64
MAX_BASKET = 20
# Early stopping: the validation loss is read every CHECK_EVERY steps, and training stops
# after PATIENCE reads without improvement.
CHECK_EVERY = 10
PATIENCE = 10
# What changes the model (and so its version); the rest only decides whether it serves.
TRAINING_PARAMS = ("SUBSPACE", "RANK", "HOLDOUT", "VALIDATION", "NDCG_AT", "L2", "LEARNING_RATE",
                   "MAX_STEPS", "COPURCHASE_WEIGHT", "SEED")


@dataclass(frozen=True)
class Lists:
    """Ranked lists as arrays: row ``l`` is source ``sources[l]`` (an index into the
    vectors) and its products ``items[l]`` in the served order (-1: padding), with their
    ``gains`` (0: skipped) and a training ``weight`` per list."""

    sources: np.ndarray
    items: np.ndarray
    gains: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.sources)

    def take(self, index: Any) -> Lists:
        """The lists at ``index`` (a slice or indices)."""
        return Lists(self.sources[index], self.items[index], self.gains[index],
                     self.weights[index])

    @classmethod
    def concat(cls, *parts: Lists) -> Lists:
        """``parts`` one after the other, padded to the longest list."""
        width = max(part.items.shape[1] for part in parts)

        def pad(array: np.ndarray, value: float) -> np.ndarray:
            return np.pad(array, ((0, 0), (0, width - array.shape[1])), constant_values=value)

        return cls(np.concatenate([part.sources for part in parts]),
                   np.concatenate([pad(part.items, -1) for part in parts]),
                   np.concatenate([pad(part.gains, 0.0) for part in parts]),
                   np.concatenate([part.weights for part in parts]))


@dataclass(frozen=True)
class Feedback:
    """What training reads: the products' unit vectors, the served lists (oldest first), the
    pairs carted or bought together before each list, and the events they came from."""

    products: list[str]
    vectors: np.ndarray
    lists: Lists
    list_times: np.ndarray
    baskets: list[tuple[float, int, int]]
    events: int
    last_event: int


def gather_feedback(model: type[models.Model], field_name: str | None,
                    surfaces: list[str], max_events: int | None = None) -> Feedback:
    """The served lists of ``surfaces`` and the visitors' baskets, from the latest
    ``max_events`` events (None: all), with the vectors of every product they name (lists
    whose source has no vector are left out)."""
    lists: dict[tuple[str, str], dict[str, Any]] = {}
    baskets: dict[str, dict[str, float]] = {}
    events = last_event = 0
    relevant = FeedbackEvent.objects.filter(
        Q(surface__in=surfaces) & ~Q(list_id="") | Q(type__in=BASKET))
    if max_events:
        first = (relevant.order_by("-id").values_list("id", flat=True)
                 [max_events - 1:max_events].first())
        if first is not None:
            relevant = relevant.filter(id__gte=first)
    rows = (relevant
            .order_by("id")
            .values_list("id", "visitor", "list_id", "source", "product", "type",
                         "position", "occurred_at", "surface"))
    for pk, visitor, list_id, source, product, kind, position, when, surface in rows.iterator(
            chunk_size=10_000):
        events += 1
        last_event = max(last_event, pk)
        stamp = when.timestamp()
        if kind in BASKET:
            basket = baskets.setdefault(visitor, {})
            basket[product] = max(basket.get(product, 0.0), stamp)
        if surface not in surfaces or not list_id:
            continue
        served = lists.setdefault((visitor, list_id),
                                  {"source": source, "time": stamp, "items": {}})
        served["time"] = min(served["time"], stamp)
        seen = served["items"].setdefault(product, [position or MAX_ITEMS, 0.0])
        seen[1] = max(seen[1], GAINS.get(kind, 0.0))
    names = sorted({served["source"] for served in lists.values()}
                   | {product for served in lists.values() for product in served["items"]}
                   | {product for basket in baskets.values() for product in basket})
    found = stored_vectors(model, field_name, names)
    products = [name for name in names if name in found]
    index = {name: i for i, name in enumerate(products)}
    dims = get_embedding_field(model, field_name).dimensions
    vectors = (unit(np.stack([found[name] for name in products])) if products
               else np.zeros((0, dims), np.float32))
    ordered = sorted(((served["time"], key, served) for key, served in lists.items()
                      if served["source"] in index), key=lambda entry: entry[:2])
    sources, items, gains, times, positions = [], [], [], [], []
    for stamp, _, served in ordered:
        shown = sorted((position, product, gain)
                       for product, (position, gain) in served["items"].items()
                       if product in index and product != served["source"])[:MAX_ITEMS]
        if not shown:
            continue
        sources.append(index[served["source"]])
        items.append([index[product] for _, product, _ in shown])
        gains.append([gain for _, _, gain in shown])
        positions.append([min(max(position, 1), MAX_ITEMS) for position, _, _ in shown])
        times.append(stamp)
    gains = debiased_gains(gains, positions)
    width = max((len(row) for row in items), default=1)
    served_lists = Lists(
        np.asarray(sources, dtype=np.int64),
        np.asarray([row + [-1] * (width - len(row)) for row in items],
                   dtype=np.int64).reshape(-1, width),
        np.asarray([row + [0.0] * (width - len(row)) for row in gains],
                   dtype=np.float32).reshape(-1, width),
        np.ones(len(sources), dtype=np.float32))
    pairs = []
    for basket in baskets.values():
        kept = sorted((stamp, product) for product, stamp in basket.items()
                      if product in index)[-MAX_BASKET:]
        for first_time, first in kept:
            for second_time, second in kept:
                if first != second:
                    pairs.append((max(first_time, second_time), index[first], index[second]))
    return Feedback(products, vectors, served_lists, np.asarray(times), sorted(pairs), events,
                    last_event)


def debiased_gains(gains: list[list[float]], positions: list[list[int]]) -> list[list[float]]:
    """Each gain over how often its list position is looked at (inverse propensity, as the
    re-ranking debiases click rates, `visual_reco.feedback.ranking.examination`), so the
    order the lists were served in does not grade itself: a click low in a list counts for
    more than one at the top."""
    impressions, clicks = np.zeros(MAX_ITEMS), np.zeros(MAX_ITEMS)
    for row_gains, row_positions in zip(gains, positions, strict=True):
        for gain, position in zip(row_gains, row_positions, strict=True):
            impressions[position - 1] += 1
            clicks[position - 1] += gain > 0
    propensity = examination(impressions, clicks)
    return [[gain / propensity[position - 1] for gain, position in zip(row_gains, row_positions,
                                                                          strict=True)]
            for row_gains, row_positions in zip(gains, positions, strict=True)]


def basket_lists(feedback: Feedback, before: float, width: int, weight: float) -> Lists:
    """The basket pairs (a, b) from before ``before`` as lists: source a, product b first,
    then a's nearest visual neighbours among the products (hard negatives)."""
    pairs = [(a, b) for stamp, a, b in feedback.baskets if stamp < before]
    if not pairs or weight <= 0 or len(feedback.products) < 3:
        return Lists(np.zeros(0, np.int64), np.zeros((0, width), np.int64),
                     np.zeros((0, width), np.float32), np.zeros(0, np.float32))
    sources = np.asarray([a for a, _ in pairs])
    similarity = feedback.vectors[sources] @ feedback.vectors.T
    similarity[np.arange(len(pairs)), sources] = -np.inf
    similarity[np.arange(len(pairs)), [b for _, b in pairs]] = -np.inf
    negatives = min(width - 1, len(feedback.products) - 2)
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :negatives]
    items = np.full((len(pairs), width), -1, dtype=np.int64)
    items[:, 0] = [b for _, b in pairs]
    items[:, 1:1 + negatives] = nearest
    gains = np.zeros((len(pairs), width), dtype=np.float32)
    gains[:, 0] = 1.0
    return Lists(sources, items, gains, np.full(len(pairs), weight, dtype=np.float32))


def cosines(vectors: np.ndarray, lists: Lists) -> np.ndarray:
    """The cosine of each list's products to its source (0 for padding)."""
    result = np.zeros(lists.items.shape, dtype=np.float32)
    for start in range(0, len(lists), 512):
        part = lists.take(slice(start, start + 512))
        shown = vectors[np.maximum(part.items, 0)]
        result[start:start + 512] = np.einsum("lmd,ld->lm", shown, vectors[part.sources])
    return np.where(lists.items >= 0, result, 0.0)


def learned_matrix(learned: LearnedModel | None, vectors: np.ndarray,
                   lists: Lists) -> np.ndarray:
    """Each list's products scored by ``learned`` (None: the cosine), as `LearnedModel`
    scores them at serve time."""
    scores = cosines(vectors, lists)
    if learned is None:
        return scores
    pu, pv = vectors @ learned.u, vectors @ learned.v
    shown = np.maximum(lists.items, 0)
    correction = 0.5 * (np.einsum("lmr,lr->lm", pv[shown], pu[lists.sources])
                        + np.einsum("lmr,lr->lm", pu[shown], pv[lists.sources]))
    return np.where(lists.items >= 0, scores + correction, 0.0)


def list_metrics(scores: np.ndarray, gains: np.ndarray, at: int) -> tuple[float, float, float]:
    """Reciprocal rank of the first product with a gain, NDCG@``at`` (linear gains) and AUC
    of products with a gain against those without (nan without both), for one list whose
    products are in the served order (ties keep it)."""
    order = np.argsort(-scores, kind="stable")
    ranked = gains[order]
    hits = np.flatnonzero(ranked > 0)
    reciprocal = 1.0 / (hits[0] + 1) if hits.size else 0.0
    discounts = 1.0 / np.log2(np.arange(2, min(at, len(ranked)) + 2))
    ideal = float(np.sort(gains)[::-1][:at] @ discounts)
    ndcg = float(ranked[:at] @ discounts) / ideal if ideal else 0.0
    positive, negative = scores[gains > 0], scores[gains <= 0]
    if positive.size and negative.size:
        wins = (positive[:, None] > negative[None, :]).mean()
        ties = (positive[:, None] == negative[None, :]).mean()
        auc = float(wins + 0.5 * ties)
    else:
        auc = float("nan")
    return reciprocal, ndcg, auc


def evaluate(scores: np.ndarray, lists: Lists, at: int) -> dict[str, Any]:
    """MRR, NDCG@``at`` and AUC over the lists with a click, and each list's NDCG."""
    per_list = []
    for row in range(len(lists)):
        kept = lists.items[row] >= 0
        if lists.gains[row][kept].sum() > 0:
            per_list.append(list_metrics(scores[row][kept], lists.gains[row][kept], at))
    values = np.asarray(per_list, dtype=np.float64).reshape(-1, 3)
    if not per_list:
        return {"lists": 0, "mrr": None, "ndcg": None, "auc": None, "per_list": values[:, 1]}
    auc = values[:, 2][~np.isnan(values[:, 2])]
    return {"lists": len(per_list), "mrr": round(float(values[:, 0].mean()), 4),
            "ndcg": round(float(values[:, 1].mean()), 4),
            "auc": round(float(auc.mean()), 4) if auc.size else None,
            "per_list": values[:, 1]}


def visual_scale(vectors: np.ndarray, lists: Lists) -> float:
    """The softmax scale that fits the visual order best on ``lists`` (a grid search), so
    that training starts from the visual order at its best and the correction is what
    moves the loss."""
    cosine = cosines(vectors, lists)
    gains = lists.gains * (lists.items >= 0)
    target = gains / np.maximum(gains.sum(axis=1, keepdims=True), 1e-9)
    weights = lists.weights / max(float(lists.weights.sum()), 1e-9)
    best, chosen = np.inf, 1.0
    for scale in np.geomspace(1.0, 300.0, 40):
        logits = np.where(lists.items >= 0, scale * cosine, -np.inf)
        logits -= logits.max(axis=1, keepdims=True)
        log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        log_softmax = np.where(lists.items >= 0, log_softmax, 0.0)
        loss = -float(weights @ (target * log_softmax).sum(axis=1))
        if loss < best:
            best, chosen = loss, float(scale)
    return chosen


def fit(vectors: np.ndarray, train: Lists, validation: Lists,
        params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Fit ``u`` and ``v`` (see `visual_reco.feedback.learned`) with TensorFlow: listwise
    softmax over each list's products towards its gains, weight decay, full-batch Adam,
    the weights of the best validation loss (``v`` = 0, the visual order, when nothing
    beats it)."""
    import tensorflow as tf

    rng = np.random.default_rng(params["SEED"])
    tf.random.set_seed(params["SEED"])
    basis = subspace(vectors, int(params["SUBSPACE"]))
    dims, rank = basis.shape[1], int(params["RANK"])
    projected = vectors @ basis
    # U and V side by side.
    start = np.zeros((dims, 2 * rank), np.float32)
    start[:, :rank] = rng.normal(0.0, 1.0 / np.sqrt(dims), (dims, rank))
    uv = tf.Variable(start)
    log_scale = tf.Variable(np.log(visual_scale(vectors, train)), dtype=tf.float32)
    weights = [uv, log_scale]
    l2 = float(params["L2"])

    def tensors(lists: Lists) -> tuple[tf.Tensor, ...]:
        gains = lists.gains * (lists.items >= 0)
        target = gains / np.maximum(gains.sum(axis=1, keepdims=True), 1e-9)
        return (tf.constant(projected[lists.sources]),
                tf.constant(projected[np.maximum(lists.items, 0)]),
                tf.constant(lists.items >= 0), tf.constant(target, dtype=tf.float32),
                tf.constant(lists.weights / max(float(lists.weights.sum()), 1e-9)),
                tf.constant(cosines(vectors, lists)))

    @tf.function
    def list_loss(sources, shown, mask, target, list_weights, cosine):
        # The correction y.(U V^T + V U^T) x / 2 with the source side mapped back to the
        # input space first: the shown products stay constants, and a step costs matrix
        # products instead of scattering gradients into a gathered table.
        source = sources @ uv
        swapped = tf.concat([source[:, rank:], source[:, :rank]], axis=1)
        back = 0.5 * (swapped @ tf.transpose(uv))
        correction = tf.einsum("lmd,ld->lm", shown, back)
        logits = tf.where(mask, tf.exp(log_scale) * (cosine + correction), -1e9)
        loss = -tf.reduce_sum(target * tf.nn.log_softmax(logits), axis=1)
        return tf.reduce_sum(list_weights * loss)

    learning_rate = float(params["LEARNING_RATE"])
    moments = [(tf.Variable(tf.zeros_like(w)), tf.Variable(tf.zeros_like(w))) for w in weights]

    @tf.function
    def step(count, sources, items, mask, target, list_weights, cosine):
        with tf.GradientTape() as tape:
            loss = (list_loss(sources, items, mask, target, list_weights, cosine)
                    + l2 * tf.reduce_sum(uv * uv))
        grads = tape.gradient(loss, weights)
        for weight, grad, (first, second) in zip(weights, grads, moments, strict=True):
            first.assign(0.9 * first + 0.1 * grad)
            second.assign(0.999 * second + 0.001 * grad * grad)
            corrected = (first / (1 - 0.9 ** count)) / (
                tf.sqrt(second / (1 - 0.999 ** count)) + 1e-8)
            weight.assign_sub(learning_rate * corrected)
        return loss

    training, checking = tensors(train), tensors(validation)
    best = float(list_loss(*checking))
    info = {"start_validation_loss": round(best, 5), "best_step": 0}
    kept = uv.numpy()
    stale = steps = 0
    curve: list[float] = []
    for steps in range(1, int(params["MAX_STEPS"]) + 1):
        step(tf.constant(float(steps)), *training)
        if steps % CHECK_EVERY:
            continue
        loss = float(list_loss(*checking))
        curve.append(round(loss, 4))
        if loss < best - 1e-5:
            best, kept, stale = loss, uv.numpy(), 0
            info["best_step"] = steps
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    info.update(steps=steps, validation_loss=round(best, 5), curve=curve)
    return basis @ kept[:, :rank], basis @ kept[:, rank:], info


def subspace(vectors: np.ndarray, size: int) -> np.ndarray:
    """An orthonormal basis (dimensions x size) of the directions the vectors vary most in:
    the correction is learned there, which is where what sets products apart lies and
    costs a fraction of the full dimensions per training step."""
    size = min(size, *vectors.shape)
    if vectors.shape[0] <= 2 * size:
        return np.linalg.svd(vectors, full_matrices=False)[2][:size].T.astype(np.float32)
    # Randomized subspace iteration (Halko et al.): a few passes over the vectors instead of
    # a dense eigendecomposition of dimensions x dimensions.
    probe = np.random.default_rng(0).normal(size=(vectors.shape[1], size + 16))
    basis = np.linalg.qr(vectors.T @ (vectors @ probe.astype(np.float32)))[0]
    for _ in range(1):
        basis = np.linalg.qr(vectors.T @ (vectors @ basis))[0]
    _, _, rows = np.linalg.svd(vectors @ basis, full_matrices=False)
    return (basis @ rows[:size].T).astype(np.float32)


def version_of(label: str, field_name: str, fingerprint: str, params: dict[str, Any],
               feedback: Feedback) -> str:
    """12 hex digits of a hash of what a model is trained from: the field, its embedder's
    fingerprint, the training parameters and the events read."""
    what = {"model": label, "field": field_name, "fingerprint": fingerprint,
            "params": {name: params[name] for name in (*TRAINING_PARAMS, "SURFACES")},
            "events": [feedback.events, feedback.last_event]}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def decide(metrics: dict[str, Any], params: dict[str, Any]) -> tuple[bool, str]:
    """Whether held-out ``metrics`` earn serving, and why (in words)."""
    lists, gain, z = metrics["lists"], metrics["ndcg_gain"], metrics["z"]
    if lists < params["MIN_LISTS"]:
        return False, f"only {lists} held-back lists with a click (MIN_LISTS {params['MIN_LISTS']})"
    if gain < params["MARGIN"] or z < params["MIN_Z"]:
        return False, (f"NDCG {gain:+.4f} over the visual order (z {z:.1f}); needs "
                       f"+{params['MARGIN']} at z >= {params['MIN_Z']}")
    return True, f"NDCG {gain:+.4f} over the visual order (z {z:.1f})"


def learn(model: type[models.Model] | None = None, field_name: str | None = None, *,
          dry_run: bool = False, echo: Callable[[str], None] | None = None,
          **overrides: Any) -> TrainingResult:
    """Train a version for ``field_name`` of ``model`` (default: the product model's first
    field) from the feedback so far, judge it on the held-back lists and serve it when it
    beats the visual order there and the version serving now; ``overrides`` replace
    ``LEARNING`` settings (``MIN_LISTS=50``). Nothing is stored with ``dry_run``.

    Training on events already trained on gives the same version, which is judged again
    under the current settings but not trained again.
    """
    started = time.monotonic()
    model = model or product_model()
    embedding = get_embedding_field(model, field_name)
    label = model._meta.label_lower
    result = TrainingResult(label, embedding.name)
    fingerprint = get_embedder(live_embedder(embedding)).fingerprint
    params = {**reco_settings.LEARNING, **overrides,
              "SURFACES": sorted(reco_settings.RANKING["FEEDBACK_SURFACES"])}
    feedback = gather_feedback(model, embedding.name, params["SURFACES"],
                               params["MAX_EVENTS"])
    result.version = version = version_of(label, embedding.name, fingerprint, params, feedback)
    known = _versions().filter(version=version).first()
    if known is not None:
        serving, result.reason = decide(known.metrics, params)
        result.metrics = known.metrics
        if serving and not known.serving and not dry_run:
            serve(known)
        result.serving = known.serving
        result.reason = f"trained before on the same events; {result.reason}"
        result.saved = True
        result.seconds = time.monotonic() - started
        return result
    clicked = feedback.lists.gains.sum(axis=1) > 0
    lists = feedback.lists.take(clicked)
    times = feedback.list_times[clicked]
    held = int(round(len(lists) * float(params["HOLDOUT"])))
    checked = int(round((len(lists) - held) * float(params["VALIDATION"])))
    if len(lists) - held - checked < 1 or held < 1 or checked < 1:
        result.reason = f"too little feedback: {len(lists)} served lists with a click"
        result.seconds = time.monotonic() - started
        return result
    cut = len(lists) - held
    train, validation = lists.take(slice(0, cut - checked)), lists.take(slice(cut - checked, cut))
    holdout = lists.take(slice(cut, None))
    baskets = basket_lists(feedback, times[cut - checked], train.items.shape[1],
                           float(params["COPURCHASE_WEIGHT"]))
    if echo:
        echo(f"{len(train)} served lists with a click and {len(baskets)} basket pairs to "
             f"train on ({len(feedback.products)} products), {len(validation)} lists for "
             f"early stopping, {held} held back")
    fit_started = time.monotonic()
    u, v, info = fit(feedback.vectors, train, validation, params)
    info["basket_pairs"] = 0
    if len(baskets):
        # Bought together is not always "alternatives" (a cup and its saucer): the pairs
        # are kept only when they help predict the clicks of the validation lists.
        with_baskets = fit(feedback.vectors, Lists.concat(train, baskets), validation, params)
        if with_baskets[2]["validation_loss"] < info["validation_loss"]:
            u, v, info = with_baskets
            info["basket_pairs"] = len(baskets)
    learned = LearnedModel(version, fingerprint, u, v)
    at = int(params["NDCG_AT"])
    visual = evaluate(learned_matrix(None, feedback.vectors, holdout), holdout, at)
    mine = evaluate(learned_matrix(learned, feedback.vectors, holdout), holdout, at)
    served = evaluate(-np.broadcast_to(np.arange(holdout.items.shape[1], dtype=np.float32),
                                       holdout.items.shape), holdout, at)
    difference = mine.pop("per_list") - visual.pop("per_list")
    served.pop("per_list")
    error = float(difference.std(ddof=1) / np.sqrt(difference.size)) if difference.size > 1 else 0
    gain = float(difference.mean()) if difference.size else 0.0
    z = gain / error if error > 0 else (float("inf") if gain > 0 else 0.0)
    metrics = {"lists": visual["lists"], "ndcg_at": at, "visual": visual, "learned": mine,
               "served_order": served, "ndcg_gain": round(gain, 4),
               "z": round(min(z, 1e6), 2), "training_lists": len(train),
               "validation_lists": len(validation), "products": len(feedback.products),
               "fit_seconds": round(time.monotonic() - fit_started, 2), **info}
    serving, reason = decide(metrics, params)
    current = _current(label, embedding.name, fingerprint)
    if serving and current is not None:
        theirs = evaluate(learned_matrix(LearnedModel.from_row(current), feedback.vectors,
                                         holdout), holdout, at)
        theirs.pop("per_list")
        metrics["serving_version"] = {"version": current.version, **theirs}
        if (theirs["ndcg"] or 0.0) > (mine["ndcg"] or 0.0):
            serving, reason = False, (f"{reason}, but the serving version {current.version} "
                                    f"does better here (NDCG {theirs['ndcg']})")
    result = replace(result, metrics=metrics, reason=reason, trained=True)
    if not dry_run:
        try:
            with transaction.atomic():
                row = LearnedRanking.objects.create(
                    version=version, model=label, field=embedding.name,
                    fingerprint=fingerprint, params=params, events=feedback.events,
                    last_event=feedback.last_event, metrics=metrics, decision=reason[:200],
                    weights=learned.to_bytes())
        except IntegrityError:  # another run trained the same version meanwhile
            row = _versions().get(version=version)
        result.saved = True
        if serving:
            serve(row)
    result.serving = serving and not dry_run
    result.seconds = time.monotonic() - started
    logger.info("visual_reco_learn %s.%s %s: %s", label, embedding.name, version, reason)
    return result


def _versions() -> models.Manager:
    """The versions as their writer reads them: on the primary (a replica may lack the row
    another run has just saved)."""
    return LearnedRanking.objects.db_manager(router.db_for_write(LearnedRanking))


def _current(label: str, field_name: str, fingerprint: str) -> LearnedRanking | None:
    return _versions().filter(model=label, field=field_name, serving=True,
                                         fingerprint=fingerprint).first()


def serve(row: LearnedRanking) -> None:
    """Make ``row`` the version that serves for its field (the one before stops).

    Raises `ValueError` for a version trained on another embedder's vectors.
    """
    SERVING.serve(row)


def retire(row: LearnedRanking) -> None:
    """Stop serving ``row``: its field goes back to the visual order."""
    SERVING.retire(row)
