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

Then colour's ``similar_other_name``: captions never call a result whose main colour name is
the product's "other colour", so the pairs whose main names differ may need a higher
"similar" threshold than the rest (a pale mint shares its bins with white and light grey).
It is chosen, in steps of 0.01 from ``similar`` up, by the same J between "same colour
label" and "another colour label" pairs, over all pairs as the captions would level them.
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


def at_least_similar(scores: np.ndarray, same_name: np.ndarray, similar: float,
                     other_name: float) -> np.ndarray:
    """Whether each pair's colour is captioned "same" or "similar" (`visual_reco.reasons`):
    always with the same main colour name, else from ``similar`` or, for names that
    differ, ``other_name``."""
    return same_name | (scores >= np.where(same_name, similar, max(similar, other_name)))


def other_name_rows(pairs: dict[str, dict[str, np.ndarray]], scores: np.ndarray,
                    first: np.ndarray, same: float, similar: float) -> tuple[float, list]:
    """Colour's ``similar_other_name`` chosen on the tune pairs (the best J of same-label
    against other-label pairs, the lowest on a tie), and a table row per half and
    threshold: J, the share of each class captioned at least "similar"."""
    def shares(h: str, other_name: float) -> list[float]:
        found = pairs[h]
        said = at_least_similar(scores[found["a"], found["b"]],
                                first[found["a"]] == first[found["b"]], similar, other_name)
        return [float(said[found["colour"] == c].mean()) for c in range(3)]

    grid = [round(v, 2) for v in np.arange(similar, same, 0.01)]
    tune = {t: shares("tune", t) for t in grid}
    chosen = max(grid, key=lambda t: (round(tune[t][1] - tune[t][2], 6), -t))
    rows = []
    for h in ("tune", "report"):
        for t in dict.fromkeys((similar, chosen)):
            found = tune[t] if h == "tune" else shares(h, t)
            rows.append([h, f"{t:.2f}" + (" (chosen)" if t == chosen else ""),
                         fmt(found[1] - found[2]), *(fmt(v) for v in found)])
    return chosen, rows


def explain_pair(colours: np.ndarray, cnn: np.ndarray, a: int, b: int, bins: int = 6) -> str:
    """The cosines of photos ``a`` and ``b``, their colour names, and the CIELAB bins that
    add most to their colour cosine (each bin's term and both photos' shares in it)."""
    from visual_reco.colour import BIN_CENTRES, dominant_colours

    terms = colours[a] * colours[b]
    lines = [f"shape cosine {float(cnn[a] @ cnn[b]):.3f}, colour cosine {float(terms.sum()):.3f}",
             *(f"names {i}: {dominant_colours(colours[i])}" for i in (a, b)),
             "| bin centre (L, a, b) | term of the cosine | share a | share b |",
             "|---|---|---|---|"]
    for k in np.argsort(-terms)[:bins]:
        centre = ", ".join(f"{v:.0f}" for v in BIN_CENTRES[k])
        lines.append(f"| {centre} | {terms[k]:.3f} | {colours[a][k] ** 2:.3f} | "
                     f"{colours[b][k] ** 2:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Choose the thresholds on the tune half, report the captions on the report half."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--pair", nargs=2, metavar="PHOTO",
                        help="only explain the colour cosine of two photos (file names)")
    args = parser.parse_args(argv)
    setup_django()
    from visual_reco.colour import colour_vector, dominant_colours

    folder = args.datasets / "magento_luma"
    rows = luma_rows(folder)
    cnn, pixels = embedded("luma", [folder / r["path"] for r in rows])
    labels = {key: np.array([r[key] for r in rows])
              for key in ("item", "style", "colour", "category")}
    colours = np.stack([colour_vector(np.asarray(image)) for image in pixels])
    cosines = {"shape": cnn @ cnn.T, "colour": colours @ colours.T}
    if args.pair:
        files = [Path(r["path"]).name for r in rows]
        print(explain_pair(colours, cnn, *(files.index(name) for name in args.pair)))
        return
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
    first = np.array([next(iter(dominant_colours(v)), ("", 0.0))[0] for v in colours])
    same, similar = (round(t, 2) for t in chosen["colour"])
    other_name, rows_out = other_name_rows(pairs, cosines["colour"], first, same, similar)
    out += ["", f"Colour similar_other_name: {other_name:.2f} (chosen on the tune half)", "",
            table(["half", "similar_other_name", "J (same label - other label)",
                   'same item: at least "similar"', 'same label: at least "similar"',
                   'other label: at least "similar"'], rows_out)]
    print("\n".join(out))


if __name__ == "__main__":
    main()
