"""The self-contained HTML report of an evaluation (rendered from
``visual_reco/evaluation/report.html``) and its plain-text summary."""

from __future__ import annotations

import base64
import functools
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from django.template import Context, Engine

from visual_reco.evaluation.dataset import Row
from visual_reco.evaluation.embedding import load_image
from visual_reco.evaluation.evaluate import Evaluation
from visual_reco.evaluation.metrics import CURVE_MAX_K
from visual_reco.images import ImageError

TEMPLATE = "visual_reco/evaluation/report.html"
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
THUMBNAIL_SIZE = 96
EXAMPLE_TOP = 5
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]
SUMMARY_COLUMNS = ["recall@1", "recall@5", "recall@10", "precision@5", "precision@10", "mAP",
                   "knn_accuracy", "knn_macro_f1"]
SUMMARY_HEADERS = ["R@1", "R@5", "R@10", "P@5", "P@10", "mAP", "kNN acc", "kNN F1"]


@functools.cache
def template_engine() -> Engine:
    """A template engine of its own over the app's templates, autoescaping: the report
    renders the same whatever the project's ``TEMPLATES`` setting holds (or lacks)."""
    return Engine(dirs=[str(TEMPLATES_DIR)], autoescape=True)


def format_value(value: Any, digits: int = 3) -> str:
    """A metric as text: floats to ``digits`` decimals, a dash for None and NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def thumbnail_data_uri(path: Path, size: int = THUMBNAIL_SIZE) -> str | None:
    """A ``data:image/jpeg;base64`` URI of the image fitted in ``size`` px (None if it fails)."""
    image = load_image(path)
    if isinstance(image, ImageError):
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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


def recall_chart(curves: dict[str, list[float]], width: int = 560,
                 height: int = 320) -> dict[str, Any]:
    """Coordinates of the recall@K line chart (K = 1..len, one line per label column) for
    the template to draw as SVG."""
    left, right, top, bottom = 48, 150, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    max_k = max((len(c) for c in curves.values()), default=CURVE_MAX_K)

    def x(k: int) -> str:
        return f"{left + (k - 1) / max(max_k - 1, 1) * plot_w:.1f}"

    def y(value: float, shift: float = 0.0) -> str:
        return f"{top + (1.0 - value) * plot_h + shift:.1f}"

    lines = []
    for i, (name, curve) in enumerate(curves.items()):
        points = [(k, v) for k, v in enumerate(curve, start=1)
                  if v is not None and math.isfinite(v)]
        lines.append({
            "name": name, "colour": COLOURS[i % len(COLOURS)],
            "points": " ".join(f"{x(k)},{y(v)}" for k, v in points),
            "dots": [{"x": x(k), "y": y(v), "title": f"{name} recall@{k} = {v:.3f}"}
                     for k, v in points],
            "legend_y": top + 14 + 18 * i, "legend_line_y": top + 10 + 18 * i})
    middle = f"{top + plot_h / 2:.1f}"
    return {
        "width": width, "height": height, "max_k": max_k, "left": left, "top": top,
        "plot_w": plot_w, "plot_h": plot_h, "right": left + plot_w, "bottom": top + plot_h,
        "y_ticks": [{"y": y(t), "text_y": y(t, 4), "label": f"{t:.2f}"}
                    for t in (0.0, 0.25, 0.5, 0.75, 1.0)],
        "x_ticks": [{"x": x(k), "label": k} for k in sorted({1, *range(5, max_k + 1, 5)})],
        "tick_end": top + plot_h + 4, "tick_text_y": top + plot_h + 16,
        "tick_text_x": left - 6, "x_label_x": f"{left + plot_w / 2:.1f}",
        "x_label_y": height - 6, "y_label_y": middle,
        "legend_x1": left + plot_w + 12, "legend_x2": left + plot_w + 32,
        "legend_text_x": left + plot_w + 38, "lines": lines}


def _example_rows(evaluation: Evaluation, chosen: list[int],
                  thumbnail: Callable[[Path], str | None]) -> list[list[dict[str, Any]]]:
    """Per chosen query: its cell, then one per result in its top `EXAMPLE_TOP`."""
    uris: dict[Path, str | None] = {}

    def cell(row: Row, css: str, **caption: Any) -> dict[str, Any]:
        if row.path not in uris:
            uris[row.path] = thumbnail(row.path)
        return {"css": css, "uri": uris[row.path], "label": row.labels["label"],
                "title": f"{row.path.name}\n{row.labels['label']}", **caption}

    rows = []
    for position in chosen:
        query = evaluation.queries[position]
        cells = [cell(query, "query", is_query=True)]
        for rank in range(min(EXAMPLE_TOP, evaluation.order.shape[1])):
            if not evaluation.valid[position, rank]:
                break
            g = int(evaluation.order[position, rank])
            item = evaluation.gallery[g]
            same = item.labels["label"] == query.labels["label"]
            cells.append(cell(item, "hit" if same else "miss", mark="✓" if same else "✗",
                              similarity=f"{evaluation.similarity[position, g]:.3f}"))
        rows.append(cells)
    return rows


def report_context(evaluation: Evaluation, *, examples: int = 12, seed: int = 0,
                   thumbnail: Callable[[Path], str | None] = thumbnail_data_uri
                   ) -> dict[str, Any]:
    """What the report template shows, every number already formatted."""
    metrics = evaluation.metrics
    per_label = metrics["metrics"]
    counts, embedding = metrics["counts"], metrics["embedding"]
    chosen = choose_examples(evaluation, examples, seed)
    return {
        "name": Path(metrics["csv"]).name,
        "meta": [
            ("CSV", metrics["csv"]), ("Date", metrics["date"]), ("Mode", metrics["mode"]),
            ("Embedder", metrics["embedder"]["fingerprint"]),
            ("Settings differing from defaults", json.dumps(metrics["settings"], default=str)),
            ("Queries / gallery", f"{counts['queries']} / {counts['gallery']}"),
            ("Skipped images", counts["skipped_images"]),
            ("Embedding", f"{format_value(embedding['seconds'], 1)} s, "
                          f"{format_value(embedding['images_per_second'], 1)} images/s")],
        "headers": SUMMARY_HEADERS,
        "rows": [{"label": name, "cells": [format_value(values[c]) for c in SUMMARY_COLUMNS],
                  "queries": values["queries"],
                  "without_relevant": values["queries_without_relevant"]}
                 for name, values in per_label.items()],
        "knn": {"k": metrics["knn_vote"]["k"],
                "temperature": f"{metrics['knn_vote']['temperature']:g}"},
        "chart": recall_chart({name: values["recall_curve"]
                               for name, values in per_label.items()}),
        "example_top": EXAMPLE_TOP,
        "examples": _example_rows(evaluation, chosen, thumbnail),
        "skipped": metrics["skipped"],
    }


def render_report(evaluation: Evaluation, *, examples: int = 12, seed: int = 0,
                  thumbnail: Callable[[Path], str | None] = thumbnail_data_uri) -> str:
    """The self-contained HTML report: metrics tables, the recall@K plot, skipped images and
    a grid of example queries with their top-5 results (thumbnails as data URIs)."""
    context = report_context(evaluation, examples=examples, seed=seed, thumbnail=thumbnail)
    return template_engine().get_template(TEMPLATE).render(Context(context))


def format_summary(metrics: dict[str, Any]) -> str:
    """A plain-text table of the main metrics per label column, with the counts."""
    lines = _text_table(metrics["metrics"])
    counts, embedding = metrics["counts"], metrics["embedding"]
    lines += ["",
              f"{counts['queries']} queries, {counts['gallery']} gallery images "
              f"({metrics['mode']}); {counts['skipped_images']} skipped",
              f"embedder {metrics['embedder']['fingerprint']}: "
              f"{format_value(embedding['seconds'], 1)} s, "
              f"{format_value(embedding['images_per_second'], 1)} images/s"]
    return "\n".join(lines)


def _text_table(per_label: dict[str, dict[str, Any]]) -> list[str]:
    """The lines of a plain-text table of the main metrics per label column."""
    headers = ["label", *SUMMARY_HEADERS, "queries"]
    rows = [[name, *(format_value(values[c]) for c in SUMMARY_COLUMNS), str(values["queries"])]
            for name, values in per_label.items()]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
             for r in [headers, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return lines


def format_mode_summary(metrics: dict[str, Any]) -> str:
    """Per measured mode: its blend, the table of `format_summary` and the other-variant
    metrics (when a variant label was given)."""
    parts = []
    for name, mode in metrics.get("modes", {}).items():
        blend = json.dumps(mode["blend"], sort_keys=True)
        lines = ["", f"mode {name}: {blend}, {mode['candidates']} candidates",
                 *_text_table(mode["metrics"])]
        variants = mode.get("other_variants")
        if variants:
            lines.append(f"other variants ({variants['group_label']}, "
                         f"{variants['queries']} queries): "
                         f"R@5 {format_value(variants['recall@5'])}, "
                         f"hit@5 {format_value(variants['hit@5'])}")
        parts.append("\n".join(lines))
    return "\n".join(parts)
