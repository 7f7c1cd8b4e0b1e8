"""``manage.py quality_report``: run `visual_reco_evaluate` over the shared datasets with and
without each preprocessing step and crop strategy, and per aspect mode, and write the tables
to docs/QUALITY.md."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from demo_shop.bench.helpers import machine_line
from visual_reco.evaluation.run import run_evaluation

# (name, VISUAL_RECO overrides): each row changes one thing from the defaults.
GROCERY_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("defaults (pad, no trim, whole photo: one pass)", {}),
    ("query multi-crop 0.7 (six passes)", {"QUERY_MULTI_CROP": 0.7}),
    ("query multi-crop 0.5", {"QUERY_MULTI_CROP": 0.5}),
    ("trim uniform background", {"PREPROCESSING": {"TRIM_BACKGROUND": True}}),
    ("centre crop 0.8 (index and query)", {"PREPROCESSING": {"OBJECT_CROP": "center"}}),
    ("resize by centre crop instead of pad", {"PREPROCESSING": {"RESIZE": "crop"}}),
    ("auto-contrast", {"PREPROCESSING": {"AUTOCONTRAST": True}}),
    ("denoise (median 3x3)", {"PREPROCESSING": {"DENOISE": True}}),
]
LUMA_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("defaults (pad, no trim)", {}),
    ("trim uniform background", {"PREPROCESSING": {"TRIM_BACKGROUND": True}}),
    ("resize by centre crop instead of pad", {"PREPROCESSING": {"RESIZE": "crop"}}),
]
MARKER = "<!-- quality_report -->"
# dataset -> (title, variants, label columns, their names in the table), in document order.
TABLES: dict[str, tuple[str, list, list[str], list[str]]] = {
    "grocery": ("Search by photo: Grocery Store (phone photos -> studio photos)",
                GROCERY_VARIANTS, ["label", "label_coarse"], ["fine", "coarse"]),
    "luma": ("Item to item: Magento Luma (every view, leave-one-out)", LUMA_VARIANTS,
             ["label", "label_category"], ["same item", "same category"]),
}


# The aspect modes table: every mode on Luma and fashion (one embedding pass per dataset).
# The photo search ranks by the CNN alone (visual_reco.search), so a mode cannot change
# grocery; it is measured in two modes to show what a blend would do to it.
MODES = ["shape", "similar", "same_colour", "same_style_other_colours"]
GROCERY_MODES = ["shape", "similar"]
MODES_TITLE = "Similar in what way: aspect modes"
SECTIONS = [*TABLES, "modes"]


def _sections(text: str) -> list[str]:
    """The tables below the marker, each from its ``## `` heading (as `_table` writes them)."""
    return ["\n## " + part.rstrip() + "\n" for part in text.split("\n## ")[1:]]


def _row(name: str, metrics: dict[str, Any], labels: list[str]) -> str:
    cells = [name]
    for label in labels:
        m = metrics["metrics"][label]
        cells += [f"{m['recall@1']:.3f}", f"{m['recall@5']:.3f}"]
    first = metrics["metrics"][labels[0]]
    cells += [f"{first['mAP']:.3f}", f"{first['knn_accuracy']:.3f}"]
    return "| " + " | ".join(cells) + " |"


class Command(BaseCommand):
    """Measure retrieval quality per preprocessing choice on grocery_store and magento_luma."""

    help = "Regenerate the measured tables of docs/QUALITY.md."

    def add_arguments(self, parser: CommandParser) -> None:
        base = Path(settings.BASE_DIR)
        parser.add_argument("--datasets", default=str(base.parent / "shared" / "datasets"))
        parser.add_argument("--work", default=str(base / ".cache" / "quality"))
        parser.add_argument("--out", default=str(base / "docs" / "QUALITY.md"))
        parser.add_argument("--only", choices=sorted(SECTIONS),
                            help="measure one table (a dataset, or the aspect modes) and keep "
                                 "the others as they are")

    def handle(self, *args: Any, datasets: str, work: str, out: str, only: str | None,
               **options: Any) -> None:
        if not (Path(datasets) / "grocery_store").exists():
            raise CommandError(f"No datasets under {datasets}")
        work_dir = Path(work)
        work_dir.mkdir(parents=True, exist_ok=True)
        path = Path(out)
        text = path.read_text() if path.exists() else "# Retrieval quality\n"
        head, _, tail = text.partition(MARKER)
        kept = {name: part for name, part in zip(SECTIONS, _sections(tail), strict=False)}
        command = f"make quality ONLY={only}" if only else "make quality"
        sections = []
        for name in SECTIONS:
            if only not in (None, name):
                sections.append(kept.get(name, ""))
            elif name == "modes":
                sections.append(self._modes_table(datasets, work_dir, command))
            else:
                sections.append(self._table(name, *TABLES[name], datasets, work_dir, command))
        sections = [section for section in sections if section]
        path.write_text(f"{head.rstrip()}\n\n{MARKER}\n" + "\n".join(sections))
        self.stdout.write(f"Wrote {path}")

    def _table(self, dataset: str, title: str, variants: list, labels: list[str],
               names: list[str], datasets: str, work_dir: Path, command: str) -> str:
        """Measure every variant of ``dataset``; return its section of docs/QUALITY.md."""
        csv_path = work_dir / f"{dataset}.csv"
        call_command("eval_csv", dataset, str(csv_path), datasets=datasets)
        header = ["variant"] + [f"{n} R@{k}" for n in names for k in (1, 5)]
        header += [f"{names[0]} mAP", f"{names[0]} kNN acc"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        first = None
        started = time.perf_counter()
        for index, (name, overrides) in enumerate(variants):
            self.stdout.write(f"{dataset}: {name}")
            metrics = run_evaluation(csv_path, work_dir / f"{dataset}-{index}",
                                     overrides=overrides, progress=False)
            first = first or metrics
            lines.append(_row(name, metrics, labels))
        counts = first["counts"]
        return (f"\n## {title}\n\n{counts['queries']} queries, {counts['gallery']} gallery "
                f"images; embedder `{first['embedder']['fingerprint']}` (defaults row). "
                f"Measured {time.strftime('%Y-%m-%d')} in {time.perf_counter() - started:.0f} s"
                f" with `{command}`.\n\n" + "\n".join(lines) + "\n")

    def _modes_table(self, datasets: str, work_dir: Path, command: str) -> str:
        """Measure every aspect mode on Luma, fashion and grocery; return its section."""
        started = time.perf_counter()
        runs = {}
        for dataset, modes in (("luma", MODES), ("fashion", MODES), ("grocery", GROCERY_MODES)):
            csv_path = work_dir / f"{dataset}.csv"
            call_command("eval_csv", dataset, str(csv_path), datasets=datasets)
            self.stdout.write(f"modes: {dataset}")
            runs[dataset] = run_evaluation(csv_path, work_dir / f"modes-{dataset}",
                                           modes=modes, progress=False)
        header = ["mode", "Luma same item R@1", "Luma same category R@1",
                  "Luma other colours R@5", "Luma other colour in top 5",
                  "fashion type P@10", "fashion colour P@10", "grocery fine R@1"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for mode in MODES:
            luma, fashion = runs["luma"]["modes"][mode], runs["fashion"]["modes"][mode]
            grocery = runs["grocery"]["modes"].get(mode)
            cells = [f"`{mode}`" + (" (plain cosine)" if mode == "shape" else ""),
                     _cell(luma["metrics"]["label"]["recall@1"]),
                     _cell(luma["metrics"]["label_category"]["recall@1"]),
                     _cell(luma["other_variants"]["recall@5"]),
                     _cell(luma["other_variants"]["hit@5"]),
                     _cell(fashion["metrics"]["label"]["precision@10"]),
                     _cell(fashion["metrics"]["label_colour"]["precision@10"]),
                     _cell(grocery["metrics"]["label"]["recall@1"]) if grocery else "not run"]
            lines.append("| " + " | ".join(cells) + " |")
        counts = {name: run["counts"] for name, run in runs.items()}
        variants = runs["luma"]["modes"][MODES[0]]["other_variants"]
        return (f"\n## {MODES_TITLE}\n\n"
                f"Luma {counts['luma']['queries']} photos leave-one-out ("
                f"{variants['queries']} of them with other colours of their style), fashion "
                f"{counts['fashion']['queries']} leave-one-out, grocery "
                f"{counts['grocery']['queries']} phone photos against "
                f"{counts['grocery']['gallery']} studio photos; "
                f"{runs['luma']['modes'][MODES[0]]['candidates']} candidates per query; "
                f"embedder `{runs['luma']['embedder']['fingerprint']}`. Measured on "
                f"{machine_line()} in {time.perf_counter() - started:.0f} s with `{command}` "
                "(`visual_reco_evaluate --mode NAME` per dataset).\n\n"
                + "\n".join(lines) + "\n")


def _cell(value: float | None) -> str:
    """A metric to 3 decimals, a dash when there is none."""
    return "–" if value is None or value != value else f"{value:.3f}"
