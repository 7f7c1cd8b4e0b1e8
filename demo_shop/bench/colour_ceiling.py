"""How far can a colour ranking go on fashion's ``baseColour`` labels (issue 12's colour P@10
>= 0.60 in ``same_colour``)? The labels' own ceiling, measured on the stored colour vectors.

Run: ``.venv/bin/python demo_shop/bench/colour_ceiling.py [--datasets DIR]`` (the model
inputs cached by ``colour_research.py`` or ``feature_maps.py``; no model pass).

1. **Near-identical histograms, different labels**: pairs of photos whose colour vectors
   have a cosine of at least t (t = 0.99, 0.98, 0.95, 0.90), and the share of them with the
   same label, a synonym label (`SYNONYMS`), the same basic colour.
2. **P@10 by label granularity**: colour alone and ``same_colour`` (w=3 s=1), scored with the
   exact label, with a label a careful annotator could have given instead (`SYNONYMS`), and
   with the 11 basic colours.
3. **What a ranking learned from the labels reaches**: a softmax regression from the colour
   vector to the label, fitted on the tune half (by the MD5 of the id) only, then the report
   half's photos ranked by the cosine of their predicted label distributions (the gallery:
   every photo). An upper bound of what this colour vector carries about these labels, not a
   candidate for the package (a shop has no such labels to fit on).
4. The same measures of the focused colour vector (`colour_vector(centre=0.25, skin=0.2)`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo_shop.bench import colour_research as research  # noqa: E402

# Labels a careful annotator could give the same photo (each label's set includes itself;
# not transitive: Navy Blue ~ Blue and Navy Blue ~ Black, but not Blue ~ Black).
_GROUPS = [
    ("Black", "Charcoal", "Navy Blue"), ("Blue", "Navy Blue", "Teal", "Turquoise Blue"),
    ("White", "Off White", "Cream", "Silver"), ("Grey", "Grey Melange", "Charcoal", "Silver",
                                                "Steel"),
    ("Brown", "Coffee Brown", "Tan", "Bronze", "Copper", "Rust", "Khaki"),
    ("Beige", "Cream", "Khaki", "Tan", "Off White", "Peach"),
    ("Red", "Maroon", "Burgundy", "Rust"), ("Maroon", "Burgundy", "Brown", "Coffee Brown"),
    ("Pink", "Magenta", "Peach", "Lavender"), ("Purple", "Lavender", "Magenta"),
    ("Green", "Olive", "Sea Green", "Fluorescent Green", "Teal"), ("Olive", "Khaki"),
    ("Yellow", "Mustard", "Gold"), ("Orange", "Rust", "Peach", "Mustard"),
    ("Gold", "Copper", "Bronze"), ("Steel", "Blue"),
]
SYNONYMS: dict[str, set[str]] = {}
for _group in _GROUPS:
    for _label in _group:
        SYNONYMS.setdefault(_label, {_label}).update(_group)


def pair_table(vectors: np.ndarray, labels: np.ndarray) -> list[list[str]]:
    """Rows of part 1: threshold, pairs, same label, synonym label, same basic colour."""
    basic = np.array([research.BASIC_COLOUR.get(c, c) for c in labels])
    cosine = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    upper = np.triu(np.ones(cosine.shape, dtype=bool), 1)
    rows = []
    for threshold in (0.99, 0.98, 0.95, 0.90):
        i, j = np.nonzero((cosine >= threshold) & upper)
        same = labels[i] == labels[j]
        synonym = np.array([labels[b] in SYNONYMS.get(labels[a], {labels[a]})
                            for a, b in zip(i, j, strict=True)], dtype=bool)
        rows.append([f">= {threshold:g}", str(len(i)), research.fmt(same.mean()),
                     research.fmt(synonym.mean()), research.fmt((basic[i] == basic[j]).mean())])
    all_i, all_j = np.nonzero(upper)
    rows.append(["any pair (chance)", str(len(all_i)),
                 research.fmt((labels[all_i] == labels[all_j]).mean()), "", ""])
    return rows


def precisions(scores: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> dict[str, float]:
    """P@10 of the queries ``rows`` (leave-one-out) by exact label, synonym and basic colour."""
    sim = scores[rows].astype(np.float64)
    sim[np.arange(len(rows)), rows] = -np.inf
    top = research.top_k(sim, 10)
    basic = np.array([research.BASIC_COLOUR.get(c, c) for c in labels])
    counts = {v: c for v, c in zip(*np.unique(labels, return_counts=True), strict=True)}
    evaluable = np.array([counts[labels[r]] >= 2 for r in rows])
    synonym = np.array([[labels[n] in SYNONYMS.get(labels[q], {labels[q]}) for n in top[i]]
                        for i, q in enumerate(rows)])
    return {"exact": float((labels[top] == labels[rows][:, None]).mean(axis=1)[evaluable].mean()),
            "synonym": float(synonym.mean(axis=1)[evaluable].mean()),
            "basic": float((basic[top] == basic[rows][:, None]).mean(axis=1)[evaluable].mean())}


def fit_softmax(x: np.ndarray, y: np.ndarray, classes: int, *, steps: int = 3000,
                rate: float = 0.5, decay: float = 1e-4) -> np.ndarray:
    """Weights (features + 1, classes) of an L2-regularised softmax regression, full-batch
    gradient descent (numpy; no library needed)."""
    x = np.hstack([x, np.ones((len(x), 1))])
    weights = np.zeros((x.shape[1], classes))
    target = np.eye(classes)[y]
    for _ in range(steps):
        logits = x @ weights
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        weights -= rate * (x.T @ (p - target) / len(x) + decay * weights)
    return weights


def predicted(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Class probabilities of the rows of ``x``."""
    logits = np.hstack([x, np.ones((len(x), 1))]) @ weights
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> None:
    """Print the tables of parts 1-4 (markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    args = parser.parse_args(argv)
    research.setup_django()
    started = time.perf_counter()
    _, fashion = research.load_photos(args.datasets)
    labels = fashion.labels["baseColour"]
    halves = np.array([research.half(p.stem) for p in fashion.paths])
    rows_of = {h: np.flatnonzero(halves == h) for h in ("tune", "report")}
    focused = replace(research.PLAIN, name="centre 0.25, skin 0.2", centre=0.25,
                               skin=0.2)
    vectors = {"today (every foreground pixel alike)": research.worker_colours(
        fashion.name, fashion.pixels), focused.name: research.design_vectors(focused, fashion)}
    cnn = fashion.cnn.astype(np.float64) @ fashion.cnn.T.astype(np.float64)
    for name, colour in vectors.items():
        print(f"\n## {name}\n\n### 1. Pairs of photos by colour cosine (all 3,000)\n")
        print(research.table(["colour cosine", "pairs", "same label", "synonym label",
                              "same basic colour"], pair_table(colour, labels)))
        cosine = colour.astype(np.float64) @ colour.T.astype(np.float64)
        rankings = {"colour alone": cosine + 1e-3 * cnn,
                    "`same_colour` (w=3 s=1, every photo a candidate)": cnn + 3.0 * cosine}
        classes, y = np.unique(labels, return_inverse=True)
        weights = fit_softmax(colour[rows_of["tune"]].astype(np.float64), y[rows_of["tune"]],
                              len(classes))
        probability = predicted(colour.astype(np.float64), weights)
        accuracy = (probability.argmax(axis=1) == y)
        unit = probability / np.linalg.norm(probability, axis=1, keepdims=True)
        rankings["predicted label distributions (fitted on tune)"] = unit @ unit.T
        table_rows = []
        for ranking, scores in rankings.items():
            cells = [ranking]
            for h in ("tune", "report"):
                found = precisions(scores, labels, rows_of[h])
                cells += [research.fmt(found[k]) for k in ("exact", "synonym", "basic")]
            table_rows.append(cells)
        print("\n### 2-3. Colour P@10 by label granularity\n")
        print(research.table(["ranking", *(f"{h} {k}" for h in ("tune", "report")
                                           for k in ("exact label", "synonym label",
                                                     "basic colour"))], table_rows))
        print(f"\nSoftmax regression label accuracy: tune (fitted) "
              f"{research.fmt(accuracy[rows_of['tune']].mean())}, report "
              f"{research.fmt(accuracy[rows_of['report']].mean())}; majority label "
              f"{research.fmt((labels == 'Black').mean())}")
    print(f"\n{research.cpu_model()}, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
