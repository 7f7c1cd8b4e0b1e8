"""The evaluation command: metric functions on hand-made similarities with known answers,
and real runs of ``visual_reco_evaluate`` on the kitchenware photos."""

from __future__ import annotations

import csv
import html
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from PIL import Image, ImageOps

from visual_reco.conf import DEFAULTS
from visual_reco.embedders import get_embedder
from visual_reco.evaluation.dataset import read_evaluation_csv, sample_queries
from visual_reco.evaluation.evaluate import search_vote
from visual_reco.evaluation.metrics import (
    average_precision,
    label_metrics,
    macro_f1,
    other_variant_metrics,
    precision_at_k,
    rank_gallery,
    recall_at_k,
)
from visual_reco.evaluation.overrides import parse_overrides
from visual_reco.images import open_image
from visual_reco.modes import parse_blend

# The photo search's vote at its default temperature, over the k nearest.
TEMPERATURE = DEFAULTS["CATEGORY_TEMPERATURE"]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def rel(path: Path, csv_path: Path) -> str:
    return os.path.relpath(path, csv_path.parent)


def evaluate_command(csv_path: Path, out: Path, *args: str) -> tuple[dict, str, str]:
    stdout = io.StringIO()
    call_command("visual_reco_evaluate", str(csv_path), "--out", str(out), *args,
                 stdout=stdout, stderr=io.StringIO())
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics, (out / "report.html").read_text(), stdout.getvalue()


# ------------------------------------------------------------------ metrics, known answers

def test_recall_precision_map_and_knn_on_a_hand_made_matrix():
    gallery = ["b", "a", "a", "b"]
    similarity = np.array([
        [0.9, 0.1, 0.8, 0.3],    # "a": ranks b a b a -> hits at 2 and 4: AP (1/2 + 2/4) / 2
        [0.95, 0.5, 0.1, 0.6],   # "b": ranks b b a a -> AP 1
        [0.1, 0.2, 0.3, 0.4],    # "c": no gallery item is "c"
    ])
    m = label_metrics(similarity, ["a", "b", "c"], gallery, knn=search_vote(2, TEMPERATURE))

    assert m["queries"] == 3
    assert m["queries_evaluated"] == 2
    assert m["queries_without_relevant"] == 1
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["recall_curve"][:2] == pytest.approx([0.5, 1.0])
    # Top 5 of a 4-item gallery: precision over the 4 available ranks.
    assert m["precision@5"] == pytest.approx(0.5)
    assert m["mAP"] == pytest.approx((0.5 + 1.0) / 2)
    # kNN (k=2, softmax at 0.05): a -> b (0.9 outweighs 0.8), b -> b, c -> b: one right of three.
    assert m["knn_accuracy"] == pytest.approx(1 / 3)
    # F1 per class: a 0, b 2*1/(2*1+2+0) = 0.5, c 0.
    assert m["knn_macro_f1"] == pytest.approx(0.5 / 3)


def test_average_precision_and_precision_functions():
    relevant = np.array([[1, 0, 1, 0, 0],
                         [0, 0, 0, 0, 1],
                         [0, 0, 0, 0, 0]], dtype=bool)
    ap = average_precision(relevant)
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
    assert ap[1] == pytest.approx(1 / 5)
    assert np.isnan(ap[2])
    assert recall_at_k(relevant, 1) == pytest.approx(1 / 3)
    assert recall_at_k(relevant, 5) == pytest.approx(2 / 3)
    assert precision_at_k(relevant, 2) == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert precision_at_k(relevant, 5) == pytest.approx((2 / 5 + 1 / 5) / 3)


def test_leave_one_out_excludes_the_query_itself():
    similarity = np.array([[1.0, 0.2, 0.9],
                           [0.2, 1.0, 0.1],
                           [0.9, 0.1, 1.0]])
    exclude = np.eye(3, dtype=bool)
    order, valid = rank_gallery(similarity, exclude)
    assert list(order[:, -1]) == [0, 1, 2] and not valid[:, -1].any() and valid[:, :2].all()

    m = label_metrics(similarity, ["x", "x", "y"], ["x", "x", "y"], exclude)
    # Item 0 ranks 2 (y) before 1 (x); item 1 finds 0 first; "y" has no other y.
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["mAP"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["precision@5"] == pytest.approx(0.5)  # 2 candidates each, one of them right
    assert m["queries_without_relevant"] == 1
    # Without the exclusion every item would find itself first.
    assert label_metrics(similarity, ["x", "x", "y"], ["x", "x", "y"])["recall@1"] == 1.0


def test_knn_vote_is_weighted_by_similarity_and_ties_go_to_the_nearest():
    """The evaluation's kNN is the photo search's `categories.vote`: softmax weights."""
    def knn(similarities: list[float], gallery: list[str], k: int,
            temperature: float = TEMPERATURE) -> float:
        return label_metrics(np.array([similarities]), ["a"], gallery,
                             knn=search_vote(k, temperature))["knn_accuracy"]

    gallery = ["b", "a", "a"]
    # Two a's close behind the b outvote it: 2 e^(-0.02/0.05) = 1.34 beats 1.
    assert knn([0.5, 0.48, 0.48], gallery, k=3) == 1.0
    # Far behind, they do not: 2 e^(-0.2/0.05) = 0.04 against 1.
    assert knn([0.5, 0.3, 0.3], gallery, k=3) == 0.0
    # At a high temperature similarity matters little and the two a's win again.
    assert knn([0.5, 0.3, 0.3], gallery, k=3, temperature=1.0) == 1.0
    # Only the nearest votes with k = 1.
    assert knn([0.5, 0.48, 0.48], gallery, k=1) == 0.0
    # An exact tie goes to the label of the nearest neighbour, whichever it is.
    assert knn([0.5, 0.5, 0.4, 0.4], ["b", "a", "a", "b"], k=4) == 0.0
    assert knn([0.5, 0.5, 0.4, 0.4], ["a", "b", "b", "a"], k=4) == 1.0
    # Unlabelled neighbours abstain: the nearest has no label, the next one decides.
    assert knn([0.9, 0.2, 0.1], ["", "a", "b"], k=3) == 1.0
    # With only unlabelled neighbours there is no prediction: an error, and no class.
    alone = label_metrics(np.array([[0.9, 0.2]]), ["a"], ["", "b"],
                          knn=search_vote(1, TEMPERATURE))
    assert alone["knn_accuracy"] == 0.0 and alone["knn_macro_f1"] == 0.0
    assert alone["knn_k"] == 1


def test_other_variant_metrics_count_distinct_other_items():
    # Gallery: style s has items a (2 photos), b, c, d; style t has e; one unstyled photo.
    items = ["a", "a", "b", "c", "d", "e", "f"]
    groups = ["s", "s", "s", "s", "s", "t", ""]
    order = np.array([[1, 2, 2, 5, 6, 3, 4],    # query a: b (twice) in the top 5 -> 1 of 3
                      [0, 3, 4, 1, 2, 5, 6],    # query b: a, c, d -> 3 of 3
                      [6, 5, 0, 1, 2, 3, 4],    # query e: t has no other item -> left out
                      [0, 1, 2, 3, 4, 5, 6]])   # query f: no group -> left out
    valid = np.ones(order.shape, dtype=bool)
    valid[1, 1] = False  # an excluded rank (the query itself) counts for nothing
    found = other_variant_metrics(order, valid, ["a", "b", "e", "f"], ["s", "s", "t", ""],
                                  items, groups)
    assert found["queries"] == 2
    assert found["recall@5"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert found["hit@5"] == 1.0
    # More other items than k: the denominator is k.
    many = other_variant_metrics(np.array([[1, 2, 0]]), np.ones((1, 3), dtype=bool), ["x"],
                                 ["g"], ["x", "y", "z"], ["g", "g", "g"], k=1)
    assert many == {"recall@1": 1.0, "hit@1": 1.0, "queries": 1}


def test_macro_f1():
    assert macro_f1(["a", "a", "b"], ["a", "a", "b"]) == 1.0
    # a: tp 1 fn 1 -> 2/3; b: tp 1 fp 1 -> 2/3; c: fn 1 -> 0; a missing prediction is no class.
    assert macro_f1(["a", "a", "b", "c"], ["a", "b", "b", None]) == pytest.approx(4 / 9)
    # A wrong prediction of a class that is never true still counts as a class with F1 0.
    assert macro_f1(["a", "a"], ["a", "z"]) == pytest.approx((2 / 3 + 0) / 2)


def test_sample_queries_is_seeded():
    first = sample_queries(100, 10, seed=3)
    assert list(first) == list(sample_queries(100, 10, seed=3))
    assert list(first) != list(sample_queries(100, 10, seed=4))
    assert len(set(first)) == 10 and list(first) == sorted(first) and first.max() < 100
    assert list(sample_queries(5, None)) == list(range(5))
    assert list(sample_queries(5, 50)) == list(range(5))


def test_parse_overrides():
    overrides = parse_overrides(['RESIZE="crop"', "BATCH_SIZE=8", "TASK_QUEUE=evaluation",
                                    "EMBEDDER.OPTIONS.input_size=224"])
    assert overrides["PREPROCESSING"] == {**DEFAULTS["PREPROCESSING"], "RESIZE": "crop"}
    assert overrides["BATCH_SIZE"] == 8
    assert overrides["TASK_QUEUE"] == "evaluation"
    assert overrides["EMBEDDER"]["OPTIONS"] == {**DEFAULTS["EMBEDDER"]["OPTIONS"],
                                                "input_size": 224}
    for bad in ["NO_SUCH_SETTING=1", "PREPROCESSING.NOPE=1", "RESIZE"]:
        with pytest.raises(ValueError):
            parse_overrides([bad])


def test_csv_errors_name_the_line(tmp_path):
    bad_role = write_csv(tmp_path / "a.csv", [{"path": "x.jpg", "label": "cup", "role": "q"}])
    with pytest.raises(ValueError, match="line 2.*'q'"):
        read_evaluation_csv(bad_role)
    no_label = write_csv(tmp_path / "b.csv", [{"path": "x.jpg", "role": ""}])
    with pytest.raises(ValueError, match="missing column"):
        read_evaluation_csv(no_label)


# ------------------------------------------------------------------ real runs

@pytest.fixture(scope="module")
def query_gallery_run(photos, tmp_path_factory):
    """Queries: six photos plus one without a match; gallery: a mirrored or half-size copy
    of each of the six, the other eleven photos as distractors, and three broken files.
    Every photo has its own ``label``, so only its copy is relevant."""
    root = tmp_path_factory.mktemp("evaluate")
    csv_path = root / "sets" / "kitchen.csv"
    queries, orphan = photos[:6], photos[6]
    distractors = photos[7:]

    def label(photo) -> str:
        return f"#{photo.ident} <{photo.label}>"

    rows = []
    for i, photo in enumerate(queries):
        rows.append({"path": rel(photo.path, csv_path), "label": label(photo),
                     "label_kind": photo.label, "role": "query"})
        image = Image.open(photo.path).convert("RGB")
        copy = (ImageOps.mirror(image) if i % 2 == 0
                else image.resize((image.width // 2, image.height // 2)))
        copy_path = csv_path.parent / "copies" / f"copy-{photo.ident}.jpg"
        copy_path.parent.mkdir(parents=True, exist_ok=True)
        copy.save(copy_path, quality=92)
        rows.append({"path": f"copies/{copy_path.name}", "label": label(photo),
                     "label_kind": photo.label, "role": "gallery"})
    rows.append({"path": rel(orphan.path, csv_path), "label": label(orphan),
                 "label_kind": orphan.label, "role": "query"})
    rows += [{"path": rel(p.path, csv_path), "label": label(p), "label_kind": p.label,
              "role": "gallery"} for p in distractors]
    broken = csv_path.parent / "broken"
    broken.mkdir()
    (broken / "truncated.jpg").write_bytes(queries[0].path.read_bytes()[:2048])
    (broken / "notes.jpg").write_text("not a photo at all")
    rows += [{"path": "broken/truncated.jpg", "label": "x", "label_kind": "x", "role": "gallery"},
             {"path": "broken/notes.jpg", "label": "y", "label_kind": "y", "role": "query"},
             {"path": "broken/missing.jpg", "label": "z", "label_kind": "z", "role": "gallery"}]
    write_csv(csv_path, rows)
    out = root / "out"
    metrics, report, stdout = evaluate_command(csv_path, out, "--examples", "4")
    return {"metrics": metrics, "report": report, "stdout": stdout, "out": out,
            "orphan": label(orphan), "queries": [label(p) for p in queries]}


def test_a_copy_of_the_query_is_retrieved_first(query_gallery_run):
    metrics = query_gallery_run["metrics"]
    assert metrics["mode"] == "query/gallery"
    assert metrics["counts"]["queries"] == 7
    assert metrics["counts"]["gallery"] == 6 + 11
    main = metrics["metrics"]["label"]
    assert main["queries_evaluated"] == 6
    assert main["queries_without_relevant"] == 1
    assert main["recall@1"] == 1.0
    assert main["mAP"] == 1.0
    assert main["precision@5"] == pytest.approx(1 / 5)
    # The copy outvotes every other (single, unique-label) neighbour; the orphan cannot win.
    assert main["knn_accuracy"] == pytest.approx(6 / 7)
    assert main["recall_curve"] == [1.0] * 20
    assert set(metrics["metrics"]) == {"label", "label_kind"}
    assert metrics["labels"] == ["label", "label_kind"]
    assert metrics["metrics"]["label_kind"]["queries"] == 7


def test_broken_images_are_skipped_and_reported(query_gallery_run):
    metrics = query_gallery_run["metrics"]
    skipped = {Path(s["path"]).name: s["error"] for s in metrics["skipped"]}
    assert set(skipped) == {"truncated.jpg", "notes.jpg", "missing.jpg"}
    assert "truncated or corrupt" in skipped["truncated.jpg"]
    assert "not an image" in skipped["notes.jpg"]
    assert "does not exist" in skipped["missing.jpg"]
    assert metrics["counts"]["skipped_images"] == 3
    assert "truncated.jpg" in query_gallery_run["report"]


def test_metrics_json_records_the_run(query_gallery_run):
    metrics = query_gallery_run["metrics"]
    assert metrics["embedder"]["fingerprint"] == get_embedder().fingerprint
    assert metrics["embedder"]["dimensions"] == get_embedder().dimensions
    assert metrics["embedding"]["seconds"] > 0
    assert metrics["embedding"]["images"] == 7 + 17 + 3
    assert metrics["embedding"]["images_per_second"] > 0
    assert metrics["date"].startswith("20")
    configured = settings.VISUAL_RECO
    assert metrics["settings"] == {key: value for key, value in configured.items()
                                   if DEFAULTS.get(key) != value}
    # The kNN columns are the photo search's category vote, with the search's settings.
    assert metrics["knn_vote"] == {"predictor": "visual_reco.categories.vote",
                                   "k": DEFAULTS["CATEGORY_NEIGHBOURS"],
                                   "temperature": DEFAULTS["CATEGORY_TEMPERATURE"]}
    assert metrics["metrics"]["label"]["knn_k"] == DEFAULTS["CATEGORY_NEIGHBOURS"]


def test_report_has_the_plot_and_the_example_grid(query_gallery_run):
    report, stdout = query_gallery_run["report"], query_gallery_run["stdout"]
    assert report.startswith("<!DOCTYPE html>")
    assert report.count("<svg") == 1
    assert report.count('class="recall-line"') == 2          # label and label_kind
    assert report.count('<tr class="example">') == 4
    # Query + top 5 per example, every one an inline JPEG.
    assert report.count('src="data:image/jpeg;base64,') == 4 * 6
    assert 'class="hit"' in report and 'class="miss"' in report
    # A failure is among the examples: the orphan query, whose label is escaped.
    assert html.escape(query_gallery_run["orphan"]) in report
    assert "<kitchenware>" not in report and "&lt;" in report
    assert "http://" not in report.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "R@1" in stdout and "label_kind" in stdout and "metrics.json" in stdout


def test_leave_one_out_matches_numpy(photos, tmp_path):
    csv_path = tmp_path / "loo.csv"
    write_csv(csv_path, [{"path": rel(p.path, csv_path), "label": p.label, "role": ""}
                         for p in photos])
    metrics, report, _ = evaluate_command(csv_path, tmp_path / "out", "--examples", "3")
    assert metrics["mode"] == "leave-one-out"
    assert metrics["counts"]["queries"] == metrics["counts"]["gallery"] == len(photos)

    labels = np.array([p.label for p in photos])
    images = []
    for p in photos:
        with open(p.path, "rb") as handle:
            images.append(open_image(handle))
    vectors = get_embedder().embed(images)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    has_other = np.array([(labels == label).sum() > 1 for label in labels])
    top = np.argsort(-similarity, axis=1)
    hits = labels[top] == labels[:, None]
    main = metrics["metrics"]["label"]
    # knife, spoon and fork appear once: nothing to retrieve for them.
    assert main["queries_without_relevant"] == int((~has_other).sum()) == 3
    assert main["recall@1"] == pytest.approx(hits[has_other, 0].mean())
    assert main["recall@5"] == pytest.approx(hits[has_other, :5].any(axis=1).mean())
    assert main["precision@5"] == pytest.approx(hits[has_other, :5].mean())
    assert report.count('<tr class="example">') == 3


def test_limit_keeps_a_seeded_subsample_of_queries(photos, tmp_path):
    csv_path = tmp_path / "loo.csv"
    write_csv(csv_path, [{"path": rel(p.path, csv_path), "label": p.label, "role": ""}
                         for p in photos])
    metrics, _, _ = evaluate_command(csv_path, tmp_path / "out", "--limit", "5",
                                     "--examples", "0", "--set", "CATEGORY_NEIGHBOURS=3")
    assert metrics["counts"]["queries"] == 5
    assert metrics["counts"]["gallery"] == len(photos)
    assert metrics["counts"]["queries_before_limit"] == len(photos)
    assert metrics["limit"] == 5
    assert metrics["metrics"]["label"]["queries"] == 5
    # --set reaches the kNN vote as it reaches the search.
    assert metrics["knn_vote"]["k"] == metrics["metrics"]["label"]["knn_k"] == 3


def test_unknown_setting_is_refused(photos, tmp_path):
    csv_path = write_csv(tmp_path / "one.csv", [
        {"path": str(photos[0].path), "label": "a", "role": ""}])
    with pytest.raises(CommandError, match="NO_SUCH_SETTING"):
        evaluate_command(csv_path, tmp_path / "out", "--set", "NO_SUCH_SETTING=1")
    assert not (tmp_path / "out").exists()


def test_set_resize_crop_changes_the_fingerprint(photos, tmp_path):
    default = get_embedder().fingerprint
    csv_path = write_csv(tmp_path / "two.csv", [
        {"path": rel(p.path, tmp_path / "two.csv"), "label": p.label, "role": ""}
        for p in photos[3:5]])
    metrics, _, _ = evaluate_command(csv_path, tmp_path / "out", "--set", 'RESIZE="crop"')
    assert metrics["embedder"]["fingerprint"] != default
    assert metrics["settings"]["PREPROCESSING"] == {"RESIZE": "crop"}
    assert metrics["overrides"]["PREPROCESSING"]["RESIZE"] == "crop"
    assert get_embedder().fingerprint == default   # the override ended with the run


def test_modes_from_one_embedding_pass(photos, tmp_path):
    csv_path = tmp_path / "styles.csv"
    # Each photo its own item; the kind (knife, cup, ...) plays the style of its variants.
    write_csv(csv_path, [{"path": rel(p.path, csv_path), "label": f"{p.label}-{p.ident}",
                          "label_style": p.label, "role": ""} for p in photos])
    plain, _, plain_out = evaluate_command(csv_path, tmp_path / "plain", "--examples", "0")
    spec = '{"shape": 1.0, "colour": {"weight": 2.0, "sharpness": 1.0}}'
    metrics, _, stdout = evaluate_command(
        csv_path, tmp_path / "modes", "--examples", "0", "--mode", "shape",
        "--mode", "same_style_other_colours", "--aspects", spec)
    # Without --mode nothing changes; with it, the plain numbers stay and modes are added.
    assert "modes" not in plain and "mode " not in plain_out
    assert metrics["metrics"] == plain["metrics"]
    assert metrics["embedding"]["images"] == len(photos)  # one pass for every mode
    modes = metrics["modes"]
    assert list(modes) == ["shape", "same_style_other_colours",
                           '{"colour": {"sharpness": 1.0, "weight": 2.0}, "shape": 1.0}']
    assert modes["shape"]["metrics"] == plain["metrics"]
    # variants_first puts the query's style first: every other item of it in the top 5.
    variants = modes["same_style_other_colours"]["other_variants"]
    assert variants["group_label"] == "label_style"
    assert variants["recall@5"] == variants["hit@5"] == 1.0
    assert modes["shape"]["other_variants"]["queries"] == variants["queries"] > 0
    assert modes["same_style_other_colours"]["metrics"]["label_style"]["recall@1"] == 1.0
    assert "mode same_style_other_colours" in stdout and "other variants" in stdout

    # The blend's numbers are those of the worker's vectors scored in numpy.
    images = []
    for p in photos:
        with open(p.path, "rb") as handle:
            images.append(get_embedder().decode(handle))
    vectors, aspects = get_embedder().embed_with_aspects(images, ("colour",))
    both = {"shape": vectors, "colour": aspects["colour"]}
    scores = parse_blend(json.loads(spec)).scores(both, both, exclude=np.eye(len(photos),
                                                                             dtype=bool))
    kinds = np.array([p.label for p in photos])
    top = np.argmax(scores, axis=1)
    has_other = np.array([(kinds == kind).sum() > 1 for kind in kinds])
    blended = modes['{"colour": {"sharpness": 1.0, "weight": 2.0}, "shape": 1.0}']
    assert blended["metrics"]["label_style"]["recall@1"] == pytest.approx(
        (kinds[top] == kinds)[has_other].mean())


def test_unknown_mode_and_bad_aspects_are_refused(photos, tmp_path):
    csv_path = write_csv(tmp_path / "one.csv", [
        {"path": str(photos[0].path), "label": "a", "role": ""}])
    with pytest.raises(CommandError, match="Unknown mode"):
        evaluate_command(csv_path, tmp_path / "out", "--mode", "bogus")
    with pytest.raises(CommandError, match="not JSON"):
        evaluate_command(csv_path, tmp_path / "out", "--aspects", "{shape")
    with pytest.raises(CommandError, match="label_style"):
        evaluate_command(csv_path, tmp_path / "out", "--mode", "similar",
                         "--variant-label", "label_style")
