"""The cosines at which a result's caption says "same", "similar" or "other" shape and colour
(`visual_reco.reasons`), measured on Magento Luma photo pairs.

Run: ``.venv/bin/python demo_shop/bench/reason_thresholds.py [--datasets DIR]`` (the CNN vectors
and model inputs come from ``demo_shop/bench/colour_research.py``'s cache, embedded once).

Pairs of photos are put in three classes per aspect, from the dataset's labels:

- shape: same style (another view, or another colour of the design) / same category, another
  style / another category;
- colour: same item (style and colour: another view of it) / another item with the same
  colour label / another colour label.

Each threshold is the cosine that best separates two neighbouring classes (Youden's J: the
largest true-positive rate minus false-positive rate), "same" between the first two, "similar"
between the last two. Styles are split in halves by the MD5 of the style as in
colour_research.py: the thresholds are chosen on pairs within the ``tune`` half and the
captions they give are reported on pairs within the ``report`` half.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from demo_shop.bench.colour_research import (  # noqa: E402
    ROOT,
    cpu_model,
    embedded,
    fmt,
    half,
    luma_rows,
    setup_django,
    table,
)

LEVELS = ("same", "similar", "other")
CLASSES = {
    "shape": ("same style", "same category, other style", "other category"),
    "colour": ("same item", "other item, same colour label", "other colour label"),
}


def youden(positive: np.ndarray, negative: np.ndarray) -> tuple[float, float]:
    """The threshold t maximising P(positive >= t) - P(negative >= t), and that J."""
    candidates = np.unique(np.concatenate([positive, negative]))
    positive, negative = np.sort(positive), np.sort(negative)
    tpr = 1 - np.searchsorted(positive, candidates, side="left") / len(positive)
    fpr = 1 - np.searchsorted(negative, candidates, side="left") / len(negative)
    best = int(np.argmax(tpr - fpr))
    return float(candidates[best]), float(tpr[best] - fpr[best])


def pair_classes(labels: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """For every pair (i < j) of ``rows``: its class index (0, 1, 2) per aspect."""
    i, j = np.triu_indices(len(rows), k=1)
    a, b = rows[i], rows[j]
    style, item, category, colour = (labels[k] for k in ("style", "item", "category",
                                                          "colour"))
    shape = np.where(style[a] == style[b], 0, np.where(category[a] == category[b], 1, 2))
    named = (colour[a] != "") & (colour[b] != "")
    col = np.where(item[a] == item[b], 0, np.where(colour[a] == colour[b], 1, 2))
    # Photos without a colour label take part in the same-item class only.
    col = np.where(named | (col == 0), col, -1)
    return {"shape": shape, "colour": col, "a": a, "b": b}


def level_of(scores: np.ndarray, same: float, similar: float) -> np.ndarray:
    """0 (same), 1 (similar) or 2 (other) for each cosine, as `visual_reco.reasons` does."""
    return np.where(scores >= same, 0, np.where(scores >= similar, 1, 2))


def main(argv: list[str] | None = None) -> None:
    """Choose the thresholds on the tune half, report the captions on the report half."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    args = parser.parse_args(argv)
    setup_django()
    from visual_reco.colour import colour_vector

    folder = args.datasets / "magento_luma"
    rows = luma_rows(folder)
    cnn, pixels = embedded("luma", [folder / r["path"] for r in rows])
    labels = {key: np.array([r[key] for r in rows])
              for key in ("item", "style", "colour", "category")}
    colours = np.stack([colour_vector(np.asarray(image)) for image in pixels])
    cosines = {"shape": cnn @ cnn.T, "colour": colours @ colours.T}
    halves = np.array([half(s) for s in labels["style"]])
    pairs = {h: pair_classes(labels, np.flatnonzero(halves == h)) for h in ("tune", "report")}

    out = ["Luma photos (gift cards out): "
           f"{int((halves == 'tune').sum())} tune / {int((halves == 'report').sum())} report; "
           f"{cpu_model()}.", "", "Tune half: pairs of each class (in the order of the docstring) "
           "and the thresholds chosen", ""]
    chosen: dict[str, tuple[float, float]] = {}
    choice_rows = []
    for aspect in ("shape", "colour"):
        tune = pairs["tune"]
        score = cosines[aspect][tune["a"], tune["b"]]
        by_class = [score[tune[aspect] == c] for c in range(3)]
        same, j_same = youden(by_class[0], by_class[1])
        similar, j_similar = youden(by_class[1], by_class[2])
        chosen[aspect] = (same, similar)
        choice_rows.append([aspect, *(f"{len(s)}, median {fmt(float(np.median(s)))}"
                                      for s in by_class),
                            f"{same:.2f} (J {j_same:.2f})", f"{similar:.2f} (J {j_similar:.2f})"])
    out.append(table(["aspect", "class 0 pairs", "class 1 pairs", "class 2 pairs",
                      "same >= (tune)", "similar >= (tune)"], choice_rows))
    for aspect in ("shape", "colour"):
        report = pairs["report"]
        score = cosines[aspect][report["a"], report["b"]]
        said = level_of(score, *(round(t, 2) for t in chosen[aspect]))
        rows_out = []
        for c, name in enumerate(CLASSES[aspect]):
            of_class = said[report[aspect] == c]
            rows_out.append([name, str(len(of_class)),
                             *(fmt(float((of_class == k).mean())) for k in range(3))])
        out += ["", f"Report half, {aspect}: share of each class's pairs captioned",
                "", table(["pairs", "count", *(f'"{lv}"' for lv in LEVELS)], rows_out)]
    print("\n".join(out))


if __name__ == "__main__":
    main()
