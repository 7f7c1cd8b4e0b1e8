"""``manage.py eval_csv {grocery,luma,fashion} OUT.csv``: an input for visual_reco_evaluate.

Writes ``path,label,label_*,role`` rows for one of the shared datasets, with paths relative
to OUT.csv's folder:

- ``grocery``: queries are the ``val`` phone photos (``--split train``: the ``train`` ones,
  a second set to check a choice made on ``val``), the gallery the distinct iconic studio
  photos; ``label`` is the fine class, ``label_coarse`` the coarse class.
- ``luma``: every photo with a category, leave-one-out; ``label`` is the item
  (``style-colour``), ``label_category`` its category and ``label_style`` its style (the
  group of an item's colour variants).
- ``fashion``: every photo, leave-one-out; ``label`` is the article type,
  ``label_colour`` the base colour.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

FOLDERS = {"grocery": "grocery_store", "luma": "magento_luma", "fashion": "fashion_products"}
EXTRA_LABELS = {"grocery": ["label_coarse"], "luma": ["label_category", "label_style"],
                "fashion": ["label_colour"]}

# (absolute image path, label, the EXTRA_LABELS values, role)
Entry = tuple[Path, str, tuple[str, ...], str]


def grocery_entries(folder: Path, rows: list[dict[str, str]],
                    split: str = "val") -> list[Entry]:
    """The ``split``'s phone photos as queries, each class's iconic photo once as gallery."""
    entries = [(folder / r["path"], r["fine_name"], (r["coarse_name"],), "query")
               for r in rows if r["split"] == split]
    iconic: dict[str, dict[str, str]] = {}
    for row in rows:
        iconic.setdefault(row["iconic"], row)
    entries += [(folder / path, r["fine_name"], (r["coarse_name"],), "gallery")
                for path, r in iconic.items() if path]
    return entries


def luma_entries(folder: Path, rows: list[dict[str, str]]) -> list[Entry]:
    """Every categorised photo; the item is its style and colour (style alone if no colour)."""
    return [(folder / r["path"], f"{r['style']}-{r['colour']}" if r["colour"] else r["style"],
             (r["category"], r["style"]), "") for r in rows if r["category"].strip()]


def fashion_entries(folder: Path, rows: list[dict[str, str]]) -> list[Entry]:
    """Every photo, labelled by article type and base colour."""
    return [(folder / r["image"], r["articleType"], (r["baseColour"],), "") for r in rows]


BUILDERS = {"grocery": grocery_entries, "luma": luma_entries, "fashion": fashion_entries}


def _relative(path: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(path, start)).as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


class Command(BaseCommand):
    """Write an evaluation CSV for one of the shared datasets."""

    help = "Write a path,label,role CSV for visual_reco_evaluate from a shared dataset."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dataset", choices=sorted(BUILDERS))
        parser.add_argument("out", help="the CSV to write")
        parser.add_argument("--datasets", default=None,
                            help="folder of the shared datasets "
                                 "(default: ../shared/datasets next to the project)")
        parser.add_argument("--split", choices=["val", "train"], default="val",
                            help="grocery: the phone photos used as queries (default val)")

    def handle(self, *args: Any, **options: Any) -> None:
        root = (Path(options["datasets"]) if options["datasets"]
                else Path(settings.BASE_DIR).parent / "shared" / "datasets")
        folder = (root / FOLDERS[options["dataset"]]).resolve()
        labels = folder / "labels.csv"
        if not labels.is_file():
            raise CommandError(f"{labels} does not exist.")
        with open(labels, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if options["dataset"] == "grocery":
            entries = grocery_entries(folder, rows, options["split"])
        else:
            entries = BUILDERS[options["dataset"]](folder, rows)

        out = Path(options["out"]).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", *EXTRA_LABELS[options["dataset"]], "role"])
            for path, label, extras, role in entries:
                writer.writerow([_relative(path, out.parent), label, *extras, role])

        queries = sum(role in ("query", "") for *_, role in entries)
        gallery = sum(role in ("gallery", "") for *_, role in entries)
        missing = sum(not path.exists() for path, *_ in entries)
        self.stdout.write(f"Wrote {out}: {len(entries)} rows, {queries} queries, "
                          f"{gallery} gallery images"
                          + (f"; {missing} paths do not exist" if missing else "") + ".")
