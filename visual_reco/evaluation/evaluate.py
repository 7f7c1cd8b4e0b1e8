"""One evaluation: embed the queries and the gallery of a CSV, rank the gallery for every
query and compute the metrics of every label column."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visual_reco.categories import vote
from visual_reco.conf import reco_settings
from visual_reco.embedders import get_embedder
from visual_reco.evaluation.dataset import EvaluationSet, Row, sample_queries
from visual_reco.evaluation.embedding import CHUNK_SIZE, embed_paths
from visual_reco.evaluation.metrics import (
    KnnVote,
    label_metrics,
    other_variant_metrics,
    rank_gallery,
)
from visual_reco.evaluation.overrides import effective_settings_diff
from visual_reco.modes import SHAPE, Blend
from visual_reco.query_photos import embed_query_images_with_aspects


@dataclass
class Evaluation:
    """Everything a report needs: the metrics dict and the per-query rankings."""

    metrics: dict[str, Any]
    queries: list[Row]
    gallery: list[Row]
    similarity: np.ndarray
    order: np.ndarray
    valid: np.ndarray
    # Per mode (--mode/--aspects): its score matrix, like `similarity`.
    mode_scores: dict[str, np.ndarray] = field(default_factory=dict)


def search_vote(k: int | None = None, temperature: float | None = None) -> KnnVote:
    """The category predictor of the photo search, `visual_reco.categories.vote`, over the
    ``k`` nearest items (default ``CATEGORY_NEIGHBOURS``) at ``temperature`` (default
    ``CATEGORY_TEMPERATURE``)."""
    k = reco_settings.CATEGORY_NEIGHBOURS if k is None else k
    temperature = reco_settings.CATEGORY_TEMPERATURE if temperature is None else temperature
    return KnnVote(int(k), lambda pairs: vote(pairs, temperature).category)


def evaluate(dataset: EvaluationSet, *, limit: int | None = None, seed: int = 0,
             chunk_size: int = CHUNK_SIZE, progress: bool = True,
             overrides: dict[str, Any] | None = None,
             blends: Mapping[str, Blend] | None = None,
             variant_label: str | None = None) -> Evaluation:
    """Embed the images of ``dataset`` and compute the metrics of every label column.

    Uses the current ``VISUAL_RECO`` settings; wrap the call in
    `visual_reco.evaluation.overrides.settings_overridden` to change them. ``limit`` keeps a
    seeded random subsample of the queries (the gallery is kept whole). Raises `ValueError`
    when no query or no gallery item could be embedded.

    ``blends`` (name -> `visual_reco.modes.Blend`) are also measured, from the same one
    embedding pass (with their aspects): each ranks the gallery as the blended query does
    (`Blend.scores`, ``ASPECT_CANDIDATES`` candidates) into ``metrics["modes"][name]``, with
    the other-variant metrics when ``variant_label`` names a label column of the variant
    group (e.g. ``label_style``; it also puts a ``variants_first`` blend's group first).
    The plain cosine metrics stay as they are.
    """
    blends = dict(blends or {})
    aspects = sorted({a for blend in blends.values() for a in blend.aspects if a != SHAPE})
    if variant_label is not None and variant_label not in dataset.label_names:
        raise ValueError(f"No column {variant_label!r} in {dataset.csv_path.name}; its label "
                         f"columns are {', '.join(dataset.label_names)}.")
    query_rows = [row for row in dataset.rows if row.is_query]
    query_rows = [query_rows[i] for i in sample_queries(len(query_rows), limit, seed)]
    gallery_rows = [row for row in dataset.rows if row.is_gallery]
    paths = list(dict.fromkeys([row.path for row in query_rows + gallery_rows]))
    embedder = get_embedder()
    embeddings = embed_paths(paths, chunk_size=chunk_size, progress=progress, aspects=aspects)
    index = embeddings.index
    query_embeddings = embeddings
    searched_differently = reco_settings.QUERY_MULTI_CROP or (
        aspects and reco_settings.QUERY_ASPECT_CROP)
    if searched_differently and dataset.mode == "query/gallery":
        # Photo-search queries are embedded the way the search embeds them (multi-crop, the
        # colour of the centre); leave-one-out sets measure item-to-item similarity, which
        # uses the stored vectors.
        query_embeddings = embed_paths(list(dict.fromkeys(row.path for row in query_rows)),
                                       chunk_size=chunk_size, progress=progress,
                                       embed=lambda images: embed_query_images_with_aspects(
                                           images, aspects), aspects=aspects)
    query_index = query_embeddings.index
    queries = [row for row in query_rows if row.path in query_index]
    gallery = [row for row in gallery_rows if row.path in index]
    if not queries or not gallery:
        raise ValueError(f"Nothing to evaluate: {len(queries)} queries and {len(gallery)} "
                         f"gallery images could be embedded "
                         f"({len(embeddings.errors)} failed to load).")
    query_ids = np.array([query_index[row.path] for row in queries])
    gallery_ids = np.array([index[row.path] for row in gallery])
    similarity = query_embeddings.vectors[query_ids] @ embeddings.vectors[gallery_ids].T
    # The same file on both sides is the query itself (compare by position in `paths`).
    position = {path: i for i, path in enumerate(paths)}
    exclude = (np.array([position[row.path] for row in queries])[:, None]
               == np.array([position[row.path] for row in gallery])[None, :])
    order, valid = rank_gallery(similarity, exclude)
    knn = search_vote()
    per_label = {
        name: label_metrics(similarity, [row.labels[name] for row in queries],
                            [row.labels[name] for row in gallery], knn=knn,
                            ranking=(order, valid))
        for name in dataset.label_names
    }
    embedded = len(embeddings.paths) + len(embeddings.errors)
    metrics = {
        "csv": str(dataset.csv_path),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": dataset.mode,
        "embedder": {"fingerprint": embedder.fingerprint,
                     "dimensions": int(embedder.dimensions),
                     "class": f"{type(embedder).__module__}.{type(embedder).__qualname__}"},
        "settings": effective_settings_diff(),
        "overrides": overrides or {},
        "counts": {"rows": len(dataset.rows), "images": len(paths),
                   "queries": len(queries), "gallery": len(gallery),
                   "queries_before_limit": sum(row.is_query for row in dataset.rows),
                   "skipped_images": len(embeddings.errors)},
        "limit": limit,
        "seed": seed,
        "embedding": {"seconds": round(embeddings.seconds, 3),
                      "images": embedded,
                      "images_per_second": round(embedded / embeddings.seconds, 3)
                      if embeddings.seconds > 0 else None,
                      "model_load_seconds": round(embeddings.model_load_seconds, 3),
                      "chunk_size": chunk_size},
        "knn_vote": {"predictor": f"{vote.__module__}.{vote.__qualname__}", "k": knn.k,
                     "temperature": float(reco_settings.CATEGORY_TEMPERATURE)},
        "skipped": [{"path": str(path), "error": message}
                    for path, message in embeddings.errors.items()],
        "labels": dataset.label_names,
        "metrics": per_label,
    }
    mode_scores = {}
    if blends:
        query_vectors = {SHAPE: query_embeddings.vectors[query_ids],
                         **{a: query_embeddings.aspects[a][query_ids] for a in aspects}}
        gallery_vectors = {SHAPE: embeddings.vectors[gallery_ids],
                           **{a: embeddings.aspects[a][gallery_ids] for a in aspects}}
        metrics["modes"] = {}
        for name, blend in blends.items():
            mode_scores[name], metrics["modes"][name] = _mode_metrics(
                blend, query_vectors, gallery_vectors, exclude, queries, gallery,
                dataset.label_names, knn, variant_label)
    return Evaluation(metrics, queries, gallery, similarity, order, valid, mode_scores)


def _mode_metrics(blend: Blend, query_vectors: dict[str, np.ndarray],
                  gallery_vectors: dict[str, np.ndarray], exclude: np.ndarray,
                  queries: list[Row], gallery: list[Row], label_names: list[str],
                  knn: KnnVote, variant_label: str | None) -> tuple[np.ndarray, dict[str, Any]]:
    """One blend's scores and metrics: every label column, and the other variants."""
    same_variant = None
    if variant_label is not None:
        query_groups = np.array([row.labels[variant_label] for row in queries], dtype=object)
        gallery_groups = np.array([row.labels[variant_label] for row in gallery], dtype=object)
        same_variant = ((query_groups[:, None] == gallery_groups[None, :])
                        & (query_groups != "")[:, None])
    scores = blend.scores(query_vectors, gallery_vectors,
                          candidates=int(reco_settings.ASPECT_CANDIDATES), exclude=exclude,
                          same_variant=same_variant)
    # Rows that are no candidate rank below every candidate (and vote with weight 0).
    scores = np.where(np.isfinite(scores), scores, -1e9)
    order, valid = rank_gallery(scores, exclude)
    result: dict[str, Any] = {
        "blend": {t.aspect: {"weight": t.weight, "sharpness": t.sharpness}
                  for t in blend.terms} | {"variants_first": blend.variants_first},
        "candidates": int(reco_settings.ASPECT_CANDIDATES),
        "metrics": {name: label_metrics(scores, [row.labels[name] for row in queries],
                                        [row.labels[name] for row in gallery], knn=knn,
                                        ranking=(order, valid))
                    for name in label_names}}
    if variant_label is not None:
        result["other_variants"] = other_variant_metrics(
            order, valid, [row.labels["label"] for row in queries],
            [row.labels[variant_label] for row in queries],
            [row.labels["label"] for row in gallery],
            [row.labels[variant_label] for row in gallery])
        result["other_variants"]["group_label"] = variant_label
    return scores, result
