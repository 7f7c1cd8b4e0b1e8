"""``manage.py eval_csv``: the evaluation CSV it writes for a shared dataset."""

from __future__ import annotations

import csv
import io
from pathlib import Path, PurePosixPath

import pytest
from django.core.management import call_command

from demo_shop.bench.management.commands.eval_csv import Command as EvalCsvCommand
from tests.conftest import DATASETS
from visual_reco.evaluation.dataset import read_evaluation_csv

GROCERY = DATASETS / "grocery_store"


@pytest.mark.dataset
@pytest.mark.skipif(not (GROCERY / "labels.csv").exists(), reason="grocery_store dataset absent")
def test_eval_csv_grocery(tmp_path):
    with open(GROCERY / "labels.csv", newline="") as handle:
        source = list(csv.DictReader(handle))
    out = tmp_path / "csvs" / "grocery.csv"
    call_command(EvalCsvCommand(), "grocery", str(out), stdout=io.StringIO())

    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "label", "label_coarse", "role"]
    queries = [r for r in rows if r["role"] == "query"]
    gallery = [r for r in rows if r["role"] == "gallery"]
    assert len(queries) == sum(r["split"] == "val" for r in source) > 0
    assert len(gallery) == len({r["iconic"] for r in source}) == 81
    assert len(queries) + len(gallery) == len(rows)
    for row in rows:
        path = out.parent / row["path"]
        assert not Path(row["path"]).is_absolute() and path.is_file(), row["path"]
        # The dataset's folders are named after the fine class.
        assert PurePosixPath(row["path"]).parent.name == row["label"]
    assert {r["label"] for r in gallery} == {r["fine_name"] for r in source}
    assert {r["label_coarse"] for r in rows} <= {r["coarse_name"] for r in source}
    dataset = read_evaluation_csv(out)
    assert dataset.mode == "query/gallery"
    assert dataset.label_names == ["label", "label_coarse"]


LUMA = DATASETS / "magento_luma"


@pytest.mark.dataset
@pytest.mark.skipif(not (LUMA / "labels.csv").exists(), reason="magento_luma dataset absent")
def test_eval_csv_luma_has_the_style_of_each_item(tmp_path):
    out = tmp_path / "luma.csv"
    call_command(EvalCsvCommand(), "luma", str(out), datasets=str(DATASETS),
                 stdout=io.StringIO())
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "label", "label_category", "label_style", "role"]
    assert all(r["label_category"] and r["role"] == "" for r in rows)
    # The item is its style and colour: a style groups the items of its colours.
    assert all(r["label"] == r["label_style"] or r["label"].startswith(r["label_style"] + "-")
               for r in rows)
    items_per_style: dict[str, set[str]] = {}
    for row in rows:
        items_per_style.setdefault(row["label_style"], set()).add(row["label"])
    assert sum(len(items) > 1 for items in items_per_style.values()) > 10
    assert read_evaluation_csv(out).label_names == ["label", "label_category", "label_style"]
