"""A whole evaluation run: read the CSV, evaluate under the ``--set`` overrides and write
``metrics.json`` and ``report.html``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visual_reco.evaluation.dataset import read_evaluation_csv
from visual_reco.evaluation.embedding import CHUNK_SIZE
from visual_reco.evaluation.evaluate import evaluate
from visual_reco.evaluation.overrides import settings_overridden
from visual_reco.evaluation.report import render_report
from visual_reco.modes import Blend, mode_blend, parse_blend

# The label column that groups variants when a run names none and the CSV has it.
DEFAULT_VARIANT_LABEL = "label_style"


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


def blends_to_measure(modes: Sequence[str] = (),
                      aspects: Sequence[Mapping[str, Any]] = ()) -> dict[str, Blend]:
    """The blends of ``modes`` (names in ``ASPECT_MODES``) and of ``aspects`` (blend specs,
    named by their JSON), in that order (`ValueError` for an unknown one)."""
    blends = {name: mode_blend(name) for name in modes}
    blends |= {json.dumps(spec, sort_keys=True): parse_blend(spec) for spec in aspects}
    return blends


def run_evaluation(csv_path: str | Path, out_dir: str | Path, *, limit: int | None = None,
                   seed: int = 0, examples: int = 12, overrides: dict[str, Any] | None = None,
                   chunk_size: int = CHUNK_SIZE, progress: bool = True,
                   modes: Sequence[str] = (), aspects: Sequence[Mapping[str, Any]] = (),
                   variant_label: str | None = None) -> dict[str, Any]:
    """Read ``csv_path``, evaluate under ``overrides`` of ``VISUAL_RECO`` and write
    ``out_dir/metrics.json`` and ``out_dir/report.html``; returns the metrics dict.

    ``modes`` and ``aspects`` are measured too (`blends_to_measure`), with the variant groups
    of ``variant_label`` (default `DEFAULT_VARIANT_LABEL` when the CSV has that column)."""
    dataset = read_evaluation_csv(csv_path)
    out_dir = Path(out_dir)
    if variant_label is None and DEFAULT_VARIANT_LABEL in dataset.label_names:
        variant_label = DEFAULT_VARIANT_LABEL
    with settings_overridden(overrides or {}):
        blends = blends_to_measure(modes, aspects)
        evaluation = evaluate(dataset, limit=limit, seed=seed, chunk_size=chunk_size,
                              progress=progress, overrides=overrides, blends=blends,
                              variant_label=variant_label if blends else None)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_metrics(evaluation.metrics, out_dir / "metrics.json")
        # Thumbnails are decoded under the same settings as the embeddings.
        report = render_report(evaluation, examples=examples, seed=seed)
    (out_dir / "report.html").write_text(report, encoding="utf-8")
    return evaluation.metrics
