"""Offline retrieval evaluation of the configured embedder on a labelled CSV of images.

The CSV has the columns ``path,label,role`` and optionally more label columns named
``label_*`` (``label_coarse``, ``label_colour``, ...). ``path`` is relative to the CSV's
folder. ``role`` is ``query`` or ``gallery``; an empty role makes the image both a query and
a gallery item, so a CSV whose roles are all empty is a leave-one-out evaluation.

Every image goes through the same decoding and preprocessing as production uploads
(`visual_reco.images.open_image`, then ``get_embedder().embed``), in chunks so that decoded
images never pile up in memory. Each query ranks the gallery by cosine similarity; the query
itself (the same image file) is never part of its own ranking.

Metrics, per label column:

- ``recall@K``: fraction of queries with at least one gallery item of their label in the
  top K.
- ``precision@K``: mean fraction of the top K with the query's label (K is capped at the
  number of gallery items the query can be compared with).
- ``mAP``: mean over queries of the average precision over the full ranking.
- ``knn_accuracy`` / ``knn_macro_f1``: the top ``knn_k`` gallery items vote for their label,
  weighted by similarity; the label with the highest vote is the prediction.

Queries that have no gallery item of their label cannot be retrieved at all: they are left
out of recall, precision and mAP (and counted as ``queries_without_relevant``), but they
take part in the kNN vote, where they count as errors. Queries without a value in a
``label_*`` column are left out of that column's metrics (``queries_unlabelled``); gallery
items without a value are never relevant and do not vote.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import csv
import datetime as dt
import html
import io
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from django.test import override_settings

from visual_reco.conf import DEFAULTS, MERGED_DICTS, reco_settings
from visual_reco.embedders import get_embedder
from visual_reco.images import ImageError, open_image

ROLES = ("query", "gallery", "")
RECALL_KS = (1, 5, 10)
PRECISION_KS = (5, 10)
CURVE_MAX_K = 20
KNN_K = 10
CHUNK_SIZE = 32
THUMBNAIL_SIZE = 96
EXAMPLE_TOP = 5


# --------------------------------------------------------------------------------------------
# Reading the CSV


@dataclass(frozen=True)
class Row:
    """One CSV row: the image's absolute path, its labels by column name, and its role."""

    line: int
    path: Path
    labels: dict[str, str]
    role: str

    @property
    def is_query(self) -> bool:
        """Whether this row is a query (role ``query`` or empty)."""
        return self.role in ("query", "")

    @property
    def is_gallery(self) -> bool:
        """Whether this row is a gallery item (role ``gallery`` or empty)."""
        return self.role in ("gallery", "")


@dataclass(frozen=True)
class EvaluationSet:
    """The rows of an evaluation CSV and the names of its label columns (``label`` first)."""

    csv_path: Path
    rows: list[Row]
    label_names: list[str]

    @property
    def mode(self) -> str:
        """``leave-one-out`` (all roles empty), ``query/gallery`` (none empty) or ``mixed``."""
        roles = {row.role for row in self.rows}
        if roles == {""}:
            return "leave-one-out"
        return "mixed" if "" in roles else "query/gallery"


def read_evaluation_csv(csv_path: str | Path) -> EvaluationSet:
    """Read an evaluation CSV (``path,label,role`` plus ``label_*`` columns).

    Paths are resolved relative to the CSV's folder. Raises `ValueError` naming the line of
    a row with an unknown role or an empty path or label, or when a column is missing.
    """
    csv_path = Path(csv_path).resolve()
    base = csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in ("path", "label") if name not in columns]
        if missing:
            raise ValueError(f"{csv_path.name}: missing column(s) {', '.join(missing)}; "
                             f"the columns are {', '.join(columns) or '(none)'}.")
        reader.fieldnames = columns
        label_names = ["label"] + [name for name in columns if name.startswith("label_")]
        rows = []
        for record in reader:
            line = reader.line_num
            path = (record.get("path") or "").strip()
            role = (record.get("role") or "").strip().lower()
            labels = {name: (record.get(name) or "").strip() for name in label_names}
            if not path:
                raise ValueError(f"{csv_path.name}, line {line}: empty path.")
            if not labels["label"]:
                raise ValueError(f"{csv_path.name}, line {line}: empty label.")
            if role not in ROLES:
                raise ValueError(f"{csv_path.name}, line {line}: role {role!r} is not "
                                 "'query', 'gallery' or empty.")
            rows.append(Row(line, (base / path).resolve(), labels, role))
    if not rows:
        raise ValueError(f"{csv_path.name} has no rows.")
    return EvaluationSet(csv_path, rows, label_names)


def sample_queries(count: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """Indices (sorted) of a deterministic random subsample of ``limit`` of ``count`` queries.

    ``limit`` of None, or not smaller than ``count``, keeps every query.
    """
    if limit is None or limit >= count:
        return np.arange(count)
    if limit < 1:
        raise ValueError("limit must be at least 1")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(count, size=limit, replace=False))


# --------------------------------------------------------------------------------------------
# Settings overrides


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """Turn ``KEY=VALUE`` strings into a dict to merge into ``settings.VISUAL_RECO``.

    VALUE is parsed as JSON when it parses, else kept as a string. KEY is a top-level
    setting (``BATCH_SIZE``), a dotted path into a dict setting
    (``PREPROCESSING.RESIZE``, ``EMBEDDER.OPTIONS.input_size``), or a key of a merged dict
    setting given alone (``RESIZE`` means ``PREPROCESSING.RESIZE``). The returned values are
    complete top-level settings: nested keys are merged into the current value. Raises
    `ValueError` for a malformed pair or an unknown key.
    """
    current = reco_settings.user_settings
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, not {pair!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        parts = key.split(".")
        if parts[0] not in DEFAULTS:
            owners = [name for name in sorted(MERGED_DICTS) if parts[0] in DEFAULTS[name]]
            if not owners:
                raise ValueError(f"Unknown VISUAL_RECO setting {parts[0]!r}; known: "
                                 f"{', '.join(sorted(DEFAULTS))}.")
            parts = [owners[0], *parts]
        top = parts[0]
        if len(parts) == 1:
            overrides[top] = value
            continue
        if top not in overrides:
            base = current.get(top, DEFAULTS[top])
            if top in MERGED_DICTS:
                base = {**DEFAULTS[top], **base}
            overrides[top] = copy.deepcopy(base)
        target = overrides[top]
        for part in parts[1:-1]:
            if not isinstance(target, dict):
                raise ValueError(f"Cannot set {key!r}: {part!r} is not inside a dict.")
            target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ValueError(f"Cannot set {key!r}: its parent is not a dict.")
        if top in MERGED_DICTS and len(parts) == 2 and parts[1] not in DEFAULTS[top]:
            raise ValueError(f"Unknown {top} key {parts[1]!r}; known: "
                             f"{', '.join(sorted(DEFAULTS[top]))}.")
        target[parts[-1]] = value
    return overrides


@contextlib.contextmanager
def settings_overridden(overrides: dict[str, Any]) -> Iterator[None]:
    """Run the block with ``VISUAL_RECO`` updated by ``overrides`` (settings reload on entry
    and exit, so the embedder is rebuilt); does nothing when ``overrides`` is empty."""
    if not overrides:
        yield
        return
    with override_settings(VISUAL_RECO={**reco_settings.user_settings, **overrides}):
        yield


def effective_settings_diff() -> dict[str, Any]:
    """The ``VISUAL_RECO`` settings in effect that differ from the defaults.

    Dict settings whose keys merge with the defaults list only their differing keys.
    """
    diff: dict[str, Any] = {}
    for key, value in sorted(reco_settings.user_settings.items()):
        default = DEFAULTS.get(key)
        if key in MERGED_DICTS and isinstance(value, dict):
            changed = {k: v for k, v in value.items() if default.get(k, object()) != v}
            if changed:
                diff[key] = changed
        elif key not in DEFAULTS or value != default:
            diff[key] = value
    return diff


# --------------------------------------------------------------------------------------------
# Embedding


@dataclass
class Embeddings:
    """Vectors of the images that loaded, and the ones that did not."""

    paths: list[Path]
    vectors: np.ndarray
    errors: dict[Path, str] = field(default_factory=dict)
    seconds: float = 0.0
    model_load_seconds: float = 0.0

    @property
    def index(self) -> dict[Path, int]:
        """Row of ``vectors`` for each embedded path."""
        return {path: i for i, path in enumerate(self.paths)}


def _load(path: Path) -> Any:
    try:
        with open(path, "rb") as handle:
            return open_image(handle)
    except FileNotFoundError:
        return ImageError("The file does not exist.")
    except OSError as exc:
        return ImageError(f"The file cannot be read ({exc.strerror or exc}).")
    except ImageError as exc:
        return exc


def embed_paths(paths: Sequence[Path], *, chunk_size: int = CHUNK_SIZE,
                progress: bool = True, embed: Any = None) -> Embeddings:
    """Decode and embed ``paths`` with the configured embedder, ``chunk_size`` at a time.

    Only one chunk of decoded images is in memory at once. Images that cannot be read or
    embedded are skipped and their messages returned in ``errors``; nothing raises for a bad
    image. ``seconds`` covers decoding and embedding, not loading the model. ``embed``
    replaces the embedder's ``embed`` (e.g. with the photo search's query embedding).
    """
    from tqdm import tqdm

    embedder = get_embedder()
    started = time.perf_counter()
    embedder.load()
    load_seconds = time.perf_counter() - started
    done: list[Path] = []
    parts: list[np.ndarray] = []
    errors: dict[Path, str] = {}
    started = time.perf_counter()
    with tqdm(total=len(paths), desc="Embedding", unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), chunk_size):
            chunk = paths[start:start + chunk_size]
            images, names = [], []
            for path in chunk:
                image = _load(path)
                if isinstance(image, ImageError):
                    errors[path] = str(image)
                else:
                    images.append(image)
                    names.append(path)
            vectors, failed = _embed_chunk(embed or embedder.embed, images)
            for position, path in enumerate(names):
                if position in failed:
                    errors[path] = failed[position]
                else:
                    done.append(path)
                    parts.append(np.asarray(vectors[position], dtype=np.float32))
            bar.update(len(chunk))
            del images
    seconds = time.perf_counter() - started
    matrix = (np.stack(parts) if parts
              else np.zeros((0, embedder.dimensions), dtype=np.float32))
    return Embeddings(done, matrix, errors, seconds, load_seconds)


def _embed_chunk(embed: Any, images: list) -> tuple[list, dict[int, str]]:
    """Vectors for ``images`` (None where one failed) and the failures' messages by position."""
    if not images:
        return [], {}
    try:
        return list(embed(images)), {}
    except (ImageError, ValueError, OSError):
        pass
    # One image broke the batch: embed one by one to find it.
    vectors: list = []
    failed: dict[int, str] = {}
    for position, image in enumerate(images):
        try:
            vectors.append(embed([image])[0])
        except (ImageError, ValueError, OSError) as exc:
            vectors.append(None)
            failed[position] = f"The image could not be embedded ({exc})."
    return vectors, failed


# --------------------------------------------------------------------------------------------
# Metrics


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


def relevance(order: np.ndarray, valid: np.ndarray, query_labels: Sequence,
              gallery_labels: Sequence) -> np.ndarray:
    """Boolean matrix: whether the gallery item at each rank has the query's label.

    Labels that are None or empty never match.
    """
    query_codes, gallery_codes = encode_labels(query_labels, gallery_labels)
    return _relevant(order, valid, query_codes, gallery_codes)


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


def knn_vote(similarity: np.ndarray, order: np.ndarray, valid: np.ndarray,
             gallery_codes: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Predicted label code of each query from its ``k`` nearest valid gallery items.

    Each neighbour votes for its label with weight max(similarity, 0); a tie goes to the
    label of the nearest tied neighbour. Neighbours with a negative code (unlabelled) do not
    vote; a query with no vote gets -1.
    """
    count = len(order)
    k = max(1, min(k, order.shape[1]))
    rows = np.arange(count)[:, None]
    top = order[:, :k]
    codes = np.asarray(gallery_codes)[top]
    voting = valid[:, :k] & (codes >= 0)
    weights = np.where(voting, np.maximum(np.asarray(similarity, dtype=np.float64)[rows, top],
                                          0.0), 0.0)
    votes = np.zeros((count, int(max(codes.max(initial=0), 0)) + 1))
    np.add.at(votes, (np.broadcast_to(rows, codes.shape)[voting], codes[voting]),
              weights[voting])
    best = votes.max(axis=1)
    # Among the neighbours whose label reaches the best score, take the nearest.
    is_best = voting & (votes[rows, np.maximum(codes, 0)] >= best[:, None] - 1e-12)
    predicted = np.where(is_best.any(axis=1), codes[np.arange(count), is_best.argmax(axis=1)],
                         -1)
    return predicted.astype(np.int64)


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
                  exclude: np.ndarray | None = None, *, knn_k: int = KNN_K,
                  ranking: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Every metric of one label column for a (queries x gallery) similarity matrix.

    Returns a dict with ``recall@1/5/10``, ``precision@5/10``, ``mAP``, ``knn_accuracy``,
    ``knn_macro_f1``, ``recall_curve`` (recall@1..20) and the query counts. ``ranking`` may
    pass a precomputed `rank_gallery` result.
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
    predicted = knn_vote(np.asarray(similarity)[labelled], order[labelled], valid[labelled],
                         gallery_codes, knn_k)
    truth = query_codes[labelled]
    result["knn_accuracy"] = float((predicted == truth).mean()) if len(truth) else math.nan
    result["knn_macro_f1"] = macro_f1(truth, predicted, missing=-1)
    result["knn_k"] = knn_k
    result["queries"] = int(labelled.sum())
    result["queries_evaluated"] = int(has_relevant.sum())
    result["queries_without_relevant"] = int((labelled & ~has_relevant).sum())
    result["queries_unlabelled"] = int((~labelled).sum())
    first_hit = np.where(retrieval.any(axis=1), retrieval.argmax(axis=1), np.iinfo(int).max)
    result["recall_curve"] = [float((first_hit < k).mean()) if len(first_hit) else math.nan
                              for k in range(1, CURVE_MAX_K + 1)]
    return result


# --------------------------------------------------------------------------------------------
# The whole evaluation


@dataclass
class Evaluation:
    """Everything a report needs: the metrics dict and the per-query rankings."""

    metrics: dict[str, Any]
    queries: list[Row]
    gallery: list[Row]
    similarity: np.ndarray
    order: np.ndarray
    valid: np.ndarray


def evaluate(dataset: EvaluationSet, *, limit: int | None = None, seed: int = 0,
             chunk_size: int = CHUNK_SIZE, knn_k: int = KNN_K,
             progress: bool = True, overrides: dict[str, Any] | None = None) -> Evaluation:
    """Embed the images of ``dataset`` and compute the metrics of every label column.

    Uses the current ``VISUAL_RECO`` settings; wrap the call in `settings_overridden` to
    change them. ``limit`` keeps a seeded random subsample of the queries (the gallery is
    kept whole). Raises `ValueError` when no query or no gallery item could be embedded.
    """
    query_rows = [row for row in dataset.rows if row.is_query]
    query_rows = [query_rows[i] for i in sample_queries(len(query_rows), limit, seed)]
    gallery_rows = [row for row in dataset.rows if row.is_gallery]
    paths = list(dict.fromkeys([row.path for row in query_rows + gallery_rows]))
    embedder = get_embedder()
    embeddings = embed_paths(paths, chunk_size=chunk_size, progress=progress)
    index = embeddings.index
    query_embeddings = embeddings
    if reco_settings.QUERY_MULTI_CROP and dataset.mode == "query/gallery":
        # Photo-search queries are embedded the way the search embeds them; leave-one-out
        # sets measure item-to-item similarity, which uses the stored vectors.
        from visual_reco.query_photos import embed_query_images

        query_embeddings = embed_paths(list(dict.fromkeys(row.path for row in query_rows)),
                                       chunk_size=chunk_size, progress=progress,
                                       embed=embed_query_images)
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
    per_label = {
        name: label_metrics(similarity, [row.labels[name] for row in queries],
                            [row.labels[name] for row in gallery], knn_k=knn_k,
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
        "skipped": [{"path": str(path), "error": message}
                    for path, message in embeddings.errors.items()],
        "labels": dataset.label_names,
        "metrics": per_label,
    }
    return Evaluation(metrics, queries, gallery, similarity, order, valid)


def choose_examples(evaluation: Evaluation, count: int, seed: int = 0) -> list[int]:
    """Deterministic choice of ``count`` query positions for the report: about a third
    are failures (top-1 of another ``label``) when there are any, the rest successes."""
    count = min(count, len(evaluation.queries))
    if count <= 0:
        return []
    top1 = evaluation.order[:, 0]
    hit = np.array([bool(valid) and evaluation.gallery[g].labels["label"] == q.labels["label"]
                    for q, g, valid in zip(evaluation.queries, top1, evaluation.valid[:, 0],
                                           strict=True)])
    shuffled = np.random.default_rng(seed).permutation(len(evaluation.queries))
    failures = [int(i) for i in shuffled if not hit[i]]
    successes = [int(i) for i in shuffled if hit[i]]
    want_failures = min(len(failures), max(1, count // 3))
    chosen = failures[:want_failures] + successes[:count - want_failures]
    chosen += failures[want_failures:want_failures + count - len(chosen)]
    return sorted(chosen)


# --------------------------------------------------------------------------------------------
# Outputs


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def write_metrics(metrics: dict[str, Any], path: str | Path) -> Path:
    """Write ``metrics`` as indented JSON (NaN becomes null); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(metrics), indent=2, default=str) + "\n",
                    encoding="utf-8")
    return path


def thumbnail_data_uri(path: Path, size: int = THUMBNAIL_SIZE) -> str | None:
    """A ``data:image/jpeg;base64`` URI of the image fitted in ``size`` px (None if it fails)."""
    image = _load(path)
    if isinstance(image, ImageError):
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def recall_svg(curves: dict[str, list[float]], width: int = 560, height: int = 320) -> str:
    """An inline SVG line chart of recall@K (K = 1..len) with one line per label column."""
    left, right, top, bottom = 48, 150, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    max_k = max((len(c) for c in curves.values()), default=CURVE_MAX_K)

    def x(k: int) -> float:
        return left + (k - 1) / max(max_k - 1, 1) * plot_w

    def y(value: float) -> float:
        return top + (1.0 - value) * plot_h

    esc = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="recall-plot" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Recall at K for K = 1 to {max_k}">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" '
             'stroke="#999"/>']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" '
                     f'y2="{y(tick):.1f}" stroke="#e5e5e5"/>'
                     f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" '
                     f'font-size="11">{tick:.2f}</text>')
    for k in sorted({1, *range(5, max_k + 1, 5)}):
        parts.append(f'<line x1="{x(k):.1f}" x2="{x(k):.1f}" y1="{top + plot_h}" '
                     f'y2="{top + plot_h + 4}" stroke="#999"/>'
                     f'<text x="{x(k):.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                     f'font-size="11">{k}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" '
                 'font-size="12">K</text>'
                 f'<text x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" font-size="12" '
                 f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">recall@K</text>')
    for i, (name, curve) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [(k, v) for k, v in enumerate(curve, start=1) if v is not None
                  and math.isfinite(v)]
        if points:
            coords = " ".join(f"{x(k):.1f},{y(v):.1f}" for k, v in points)
            parts.append(f'<polyline class="recall-line" data-label="{esc(name)}" fill="none" '
                         f'stroke="{colour}" stroke-width="2" points="{coords}"/>')
            for k, v in points:
                parts.append(f'<circle cx="{x(k):.1f}" cy="{y(v):.1f}" r="2.5" '
                             f'fill="{colour}"><title>{esc(name)} recall@{k} = {v:.3f}'
                             '</title></circle>')
        legend_y = top + 14 + 18 * i
        parts.append(f'<line x1="{left + plot_w + 12}" x2="{left + plot_w + 32}" '
                     f'y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="{colour}" '
                     f'stroke-width="2"/><text x="{left + plot_w + 38}" y="{legend_y}" '
                     f'font-size="12">{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


SUMMARY_COLUMNS = ["recall@1", "recall@5", "recall@10", "precision@5", "precision@10", "mAP",
                   "knn_accuracy", "knn_macro_f1"]
SUMMARY_HEADERS = ["R@1", "R@5", "R@10", "P@5", "P@10", "mAP", "kNN acc", "kNN F1"]


def render_report(evaluation: Evaluation, *, examples: int = 12, seed: int = 0,
                  thumbnail: Callable[[Path], str | None] = thumbnail_data_uri) -> str:
    """The self-contained HTML report: metrics tables, the recall@K plot, skipped images and
    a grid of example queries with their top-5 results (thumbnails as data URIs)."""
    esc = html.escape
    metrics = evaluation.metrics
    per_label = metrics["metrics"]
    counts = metrics["counts"]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>visual_reco evaluation: {esc(Path(metrics['csv']).name)}</title>",
           "<style>body{font-family:system-ui,sans-serif;margin:24px;color:#222}"
           "table{border-collapse:collapse;margin:8px 0 16px}"
           "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
           "th:first-child,td:first-child{text-align:left}"
           ".examples td{text-align:center;vertical-align:top;font-size:11px;width:104px}"
           ".examples img{display:block;margin:0 auto 2px;max-width:96px;max-height:96px}"
           ".hit{outline:3px solid #2ca02c}.miss{outline:3px solid #d62728}"
           ".query{outline:3px solid #1f77b4}.meta td{text-align:left}</style></head><body>",
           f"<h1>Evaluation of {esc(Path(metrics['csv']).name)}</h1>",
           '<table class="meta">']
    meta = [("CSV", metrics["csv"]), ("Date", metrics["date"]), ("Mode", metrics["mode"]),
            ("Embedder", metrics["embedder"]["fingerprint"]),
            ("Settings differing from defaults", json.dumps(metrics["settings"], default=str)),
            ("Queries / gallery", f"{counts['queries']} / {counts['gallery']}"),
            ("Skipped images", counts["skipped_images"]),
            ("Embedding", f"{_fmt(metrics['embedding']['seconds'], 1)} s, "
                          f"{_fmt(metrics['embedding']['images_per_second'], 1)} images/s")]
    out += [f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in meta]
    out.append("</table><h2>Metrics</h2><table class=\"metrics\"><tr><th>label</th>"
               + "".join(f"<th>{esc(h)}</th>" for h in SUMMARY_HEADERS)
               + "<th>queries</th><th>without relevant</th></tr>")
    for name, values in per_label.items():
        out.append(f"<tr><td>{esc(name)}</td>"
                   + "".join(f"<td>{_fmt(values[c])}</td>" for c in SUMMARY_COLUMNS)
                   + f"<td>{values['queries']}</td>"
                   f"<td>{values['queries_without_relevant']}</td></tr>")
    out.append("</table><p>Recall, precision and mAP leave out queries without any gallery "
               "item of their label; the kNN vote (k = "
               f"{KNN_K}, similarity-weighted) counts them as errors.</p>")
    out.append("<h2>Recall@K</h2>")
    out.append(recall_svg({name: values["recall_curve"] for name, values in per_label.items()}))

    chosen = choose_examples(evaluation, examples, seed)
    out.append(f'<h2>Examples ({len(chosen)} queries, top {EXAMPLE_TOP})</h2>'
               '<p>Blue: the query. Green: same <code>label</code>. Red: another label.</p>'
               '<table class="examples">')
    cache: dict[Path, str | None] = {}

    def cell(row: Row, css: str, caption: str) -> str:
        if row.path not in cache:
            cache[row.path] = thumbnail(row.path)
        uri = cache[row.path]
        title = esc(f"{row.path.name}\n{row.labels['label']}")
        image = (f'<img class="{css}" src="{uri}" alt="{title}" title="{title}">' if uri
                 else f'<div class="{css}">(no preview)</div>')
        return f'<td>{image}{caption}</td>'

    for position in chosen:
        query = evaluation.queries[position]
        cells = [cell(query, "query", f"<b>{esc(query.labels['label'])}</b>")]
        for rank in range(min(EXAMPLE_TOP, evaluation.order.shape[1])):
            if not evaluation.valid[position, rank]:
                break
            g = int(evaluation.order[position, rank])
            item = evaluation.gallery[g]
            same = item.labels["label"] == query.labels["label"]
            mark = "✓" if same else "✗"
            cells.append(cell(item, "hit" if same else "miss",
                              f"{mark} {esc(item.labels['label'])}<br>"
                              f"{evaluation.similarity[position, g]:.3f}"))
        out.append(f'<tr class="example">{"".join(cells)}</tr>')
    out.append("</table>")

    if metrics["skipped"]:
        out.append(f"<h2>Skipped images ({len(metrics['skipped'])})</h2><table>"
                   "<tr><th>path</th><th>error</th></tr>")
        out += [f"<tr><td>{esc(s['path'])}</td><td>{esc(s['error'])}</td></tr>"
                for s in metrics["skipped"]]
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def format_summary(metrics: dict[str, Any]) -> str:
    """A plain-text table of the main metrics per label column, with the counts."""
    headers = ["label", *SUMMARY_HEADERS, "queries"]
    rows = [[name, *(_fmt(values[c]) for c in SUMMARY_COLUMNS), str(values["queries"])]
            for name, values in metrics["metrics"].items()]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
             for r in [headers, *rows]]
    counts, embedding = metrics["counts"], metrics["embedding"]
    lines.insert(1, "-" * len(lines[0]))
    lines += ["",
              f"{counts['queries']} queries, {counts['gallery']} gallery images "
              f"({metrics['mode']}); {counts['skipped_images']} skipped",
              f"embedder {metrics['embedder']['fingerprint']}: "
              f"{_fmt(embedding['seconds'], 1)} s, "
              f"{_fmt(embedding['images_per_second'], 1)} images/s"]
    return "\n".join(lines)


def run_evaluation(csv_path: str | Path, out_dir: str | Path, *, limit: int | None = None,
                   seed: int = 0, examples: int = 12, overrides: dict[str, Any] | None = None,
                   chunk_size: int = CHUNK_SIZE, progress: bool = True) -> dict[str, Any]:
    """Read ``csv_path``, evaluate under ``overrides`` of ``VISUAL_RECO`` and write
    ``out_dir/metrics.json`` and ``out_dir/report.html``; returns the metrics dict."""
    dataset = read_evaluation_csv(csv_path)
    out_dir = Path(out_dir)
    with settings_overridden(overrides or {}):
        evaluation = evaluate(dataset, limit=limit, seed=seed, chunk_size=chunk_size,
                              progress=progress, overrides=overrides)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_metrics(evaluation.metrics, out_dir / "metrics.json")
        # Thumbnails are decoded under the same settings as the embeddings.
        report = render_report(evaluation, examples=examples, seed=seed)
    (out_dir / "report.html").write_text(report, encoding="utf-8")
    return evaluation.metrics
