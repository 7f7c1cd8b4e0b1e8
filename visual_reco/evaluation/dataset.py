"""Reading an evaluation CSV (``path,label,role`` plus ``label_*`` columns) and sampling
its queries."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROLES = ("query", "gallery", "")


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
