"""Retrieval and classification metrics on a (queries x gallery) similarity matrix: pure
numpy functions, no settings, no files."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RECALL_KS = (1, 5, 10)
PRECISION_KS = (5, 10)
CURVE_MAX_K = 20


@dataclass(frozen=True)
class KnnVote:
    """A kNN predictor of a query's label from its ``k`` nearest gallery items.

    ``predict`` gets them as ``(label, similarity)`` pairs, nearest first (None for an
    unlabelled item), and returns the predicted label or None.
    """

    k: int
    predict: Callable[[list[tuple[Any, float]]], Any]


def rank_gallery(similarity: np.ndarray,
                 exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Order each row's gallery by decreasing similarity (ties keep gallery order).

    ``exclude`` is a boolean matrix like ``similarity``; excluded items sort last. Returns
    ``(order, valid)``: gallery indices per rank, and whether that rank is a real candidate.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    if exclude is None:
        exclude = np.zeros(similarity.shape, dtype=bool)
    keyed = np.where(exclude, np.inf, -similarity)
    order = np.argsort(keyed, axis=1, kind="stable")
    valid = ~np.take_along_axis(exclude, order, axis=1)
    return order, valid


def _relevant(order: np.ndarray, valid: np.ndarray, query_codes: np.ndarray,
              gallery_codes: np.ndarray) -> np.ndarray:
    return (gallery_codes[order] == query_codes[:, None]) & valid & (query_codes[:, None] >= 0)


def encode_labels(query_labels: Sequence,
                  gallery_labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of the labels in one shared vocabulary; missing labels get -1 (queries)
    and -2 (gallery), so they never match anything."""
    vocabulary: dict[Any, int] = {}

    def codes(labels: Sequence, missing: int) -> np.ndarray:
        out = np.empty(len(labels), dtype=np.int64)
        for i, label in enumerate(labels):
            out[i] = missing if label is None or label == "" else vocabulary.setdefault(
                label, len(vocabulary))
        return out

    return codes(query_labels, -1), codes(gallery_labels, -2)


def recall_at_k(relevant: np.ndarray, k: int) -> float:
    """Fraction of rows with at least one relevant item in the first ``k`` ranks."""
    if len(relevant) == 0:
        return math.nan
    return float(relevant[:, :k].any(axis=1).mean())


def precision_at_k(relevant: np.ndarray, k: int, valid: np.ndarray | None = None) -> float:
    """Mean fraction of relevant items among the first ``k`` ranks.

    With ``valid``, a row's ``k`` is capped at its number of valid ranks.
    """
    if len(relevant) == 0:
        return math.nan
    available = (np.full(len(relevant), relevant.shape[1]) if valid is None
                 else valid.sum(axis=1))
    denominator = np.maximum(np.minimum(k, available), 1)
    return float((relevant[:, :k].sum(axis=1) / denominator).mean())


def average_precision(relevant: np.ndarray) -> np.ndarray:
    """Average precision of each row over its full ranking (NaN for rows with no relevant
    item): the mean, over the ranks of the relevant items, of the precision at that rank."""
    relevant = np.asarray(relevant, dtype=bool)
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    total = relevant.sum(axis=1)
    summed = (np.where(relevant, hits / ranks, 0.0)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, summed / np.maximum(total, 1), np.nan)


def knn_predictions(similarity: np.ndarray, order: np.ndarray, valid: np.ndarray,
                    gallery_labels: Sequence, knn: KnnVote) -> list:
    """The label ``knn`` predicts for each query from its ``knn.k`` nearest valid gallery
    items (the prediction may be None)."""
    labels = list(gallery_labels)
    k = max(1, min(knn.k, order.shape[1]))
    predictions = []
    for row in range(len(order)):
        nearest = order[row, :k][valid[row, :k]]
        predictions.append(knn.predict([(labels[g] if labels[g] not in (None, "") else None,
                                         float(similarity[row, g])) for g in nearest]))
    return predictions


def macro_f1(y_true: Sequence, y_pred: Sequence, missing: Any = None) -> float:
    """Unweighted mean of the per-class F1 over every class that is true or predicted.

    Predictions equal to ``missing`` (no prediction) are errors but not a class.
    """
    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(y_pred, dtype=object)
    if len(y_true) == 0:
        return math.nan
    predicted = np.array([p is not missing and p != missing for p in y_pred], dtype=bool)
    classes = sorted(set(y_true.tolist()) | set(y_pred[predicted].tolist()), key=repr)
    scores = []
    for label in classes:
        is_true = y_true == label
        is_pred = (y_pred == label) & predicted
        tp = int(np.sum(is_true & is_pred))
        fp = int(np.sum(~is_true & is_pred))
        fn = int(np.sum(is_true & ~is_pred))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


def label_metrics(similarity: np.ndarray, query_labels: Sequence, gallery_labels: Sequence,
                  exclude: np.ndarray | None = None, *, knn: KnnVote | None = None,
                  ranking: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Every metric of one label column for a (queries x gallery) similarity matrix.

    Returns a dict with ``recall@1/5/10``, ``precision@5/10``, ``mAP``, ``recall_curve``
    (recall@1..20), the query counts and, with ``knn``, ``knn_accuracy``, ``knn_macro_f1``
    and ``knn_k``. ``ranking`` may pass a precomputed `rank_gallery` result.
    """
    order, valid = ranking if ranking is not None else rank_gallery(similarity, exclude)
    query_codes, gallery_codes = encode_labels(query_labels, gallery_labels)
    labelled = query_codes >= 0
    relevant = _relevant(order, valid, query_codes, gallery_codes)
    has_relevant = relevant.any(axis=1)
    retrieval = relevant[has_relevant]
    result: dict[str, Any] = {}
    for k in RECALL_KS:
        result[f"recall@{k}"] = recall_at_k(retrieval, k)
    for k in PRECISION_KS:
        result[f"precision@{k}"] = precision_at_k(retrieval, k, valid[has_relevant])
    ap = average_precision(retrieval)
    result["mAP"] = float(ap.mean()) if len(ap) else math.nan
    if knn is not None:
        predicted = knn_predictions(np.asarray(similarity)[labelled], order[labelled],
                                    valid[labelled], gallery_labels, knn)
        truth = np.asarray(query_labels, dtype=object)[labelled]
        hits = [p == t for p, t in zip(predicted, truth, strict=True)]
        result["knn_accuracy"] = float(np.mean(hits)) if len(truth) else math.nan
        result["knn_macro_f1"] = macro_f1(truth, predicted)
        result["knn_k"] = knn.k
    result["queries"] = int(labelled.sum())
    result["queries_evaluated"] = int(has_relevant.sum())
    result["queries_without_relevant"] = int((labelled & ~has_relevant).sum())
    result["queries_unlabelled"] = int((~labelled).sum())
    first_hit = np.where(retrieval.any(axis=1), retrieval.argmax(axis=1), np.iinfo(int).max)
    result["recall_curve"] = [float((first_hit < k).mean()) if len(first_hit) else math.nan
                              for k in range(1, CURVE_MAX_K + 1)]
    return result


def other_variant_metrics(order: np.ndarray, valid: np.ndarray, query_items: Sequence,
                          query_groups: Sequence, gallery_items: Sequence,
                          gallery_groups: Sequence, k: int = 5) -> dict[str, Any]:
    """"This style in other colours": how well the top ``k`` holds a query's other variants.

    A query's other variants are the gallery items of its group (``*_groups``, e.g. the
    style) whose item (``*_items``, e.g. style + colour) differs from its own. Over the queries
    that have any (and a group): ``recall@k`` is the mean of (distinct other items in the top
    ``k``) / min(``k``, their number), and ``hit@k`` the fraction with at least one of them
    in the top ``k``.
    """
    items = np.asarray(list(gallery_items), dtype=object)
    groups = np.asarray(list(gallery_groups), dtype=object)
    recalls, hits = [], []
    for row, (item, group) in enumerate(zip(query_items, query_groups, strict=True)):
        if group in (None, ""):
            continue
        others = (groups == group) & (items != item)
        wanted = set(items[others].tolist())
        if not wanted:
            continue
        top = order[row, :k][valid[row, :k]]
        found = wanted & set(items[top][others[top]].tolist())
        recalls.append(len(found) / min(k, len(wanted)))
        hits.append(bool(found))
    return {f"recall@{k}": float(np.mean(recalls)) if recalls else math.nan,
            f"hit@{k}": float(np.mean(hits)) if hits else math.nan,
            "queries": len(recalls)}
