"""Tuning the blends of the ``similar`` and ``same_colour`` modes (issue 12, point 5) with the
scorer's own knobs (weights, sharpness), exactly as the query ranks (`Blend.scores`, with the
``ASPECT_CANDIDATES`` cut), on the tune halves; the report halves are printed beside them.

Run: ``.venv/bin/python demo_shop/bench/mode_tuning.py [--datasets DIR]``. Reuses the
embeddings cached by ``demo_shop/bench/colour_research.py`` (same splits: Luma by the MD5 of
the style, fashion by the MD5 of the id) and computes the colour vectors as a worker does
(`visual_reco.aspects.compute_aspects` on the model's input arrays).

- ``similar`` is chosen on the Luma tune half: the best same-item R@1 whose same-category
  R@1 stays at least `CATEGORY_FLOOR`; the fashion tune half's type P@10 must stay within
  `TYPE_DROP` of the CNN's.
- ``same_colour`` is chosen on the fashion tune half: the best colour P@10.

``--gated`` prints instead what the scorer cannot express (its candidates come from each
positive aspect's nearest): the CNN's top N re-ranked by colour alone, and colour alone, to show
the ceiling of the colour vector on fashion's colour labels.

``--shape-gate`` measures colour terms that count only where the shape is close enough
(`Gate`): ``cos_shape + w * max(cos_colour, 0)^s * g``, with ``g`` a hard gate on the shape
cosine, a ramp, a gate relative to the query's best shape cosine, or the shape's top N; all
are computable in the outer query of `visual_reco.query` from the shape cosine it already
has. The best by the same tune-half rule (category R@1 >= `CATEGORY_FLOOR`, fashion type P@10
>= `TYPE_FLOOR`) is printed with its report-half numbers, beside the linear blends.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo_shop.bench import colour_research as research  # noqa: E402

CANDIDATES = 100
CATEGORY_FLOOR = 0.88
TYPE_DROP = 0.01
WEIGHTS = [0.2, 0.3, 0.4, 0.6, 0.8, 0.99, 1.5, 2.0, 3.0, 5.0]
SHARPNESS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
# Issue 12's floor on fashion type P@10 in the default mode (the --shape-gate rule).
TYPE_FLOOR = 0.70
# Below 1, so that shape stays the heaviest aspect (the one the captions lead with).
GATE_WEIGHTS = [0.2, 0.3, 0.4, 0.6, 0.8, 0.99]
GATE_SHARPNESS = [2.0, 4.0, 8.0, 16.0, 32.0]
GATE_TAUS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85]
GATE_RAMPS = [(0.5, 0.7), (0.55, 0.75), (0.6, 0.8), (0.65, 0.85), (0.6, 0.7), (0.7, 0.8)]
GATE_RELATIVE = [0.05, 0.1, 0.15, 0.2, 0.3]
GATE_TOP = [5, 10, 20, 30, 50]


def spec(weight: float, sharpness: float, shape: float = 1.0) -> dict:
    """A blend spec of shape and colour."""
    return {"shape": shape, "colour": {"weight": weight, "sharpness": sharpness}}


def name_of(blend_spec: dict) -> str:
    """A short name: ``w=0.4 s=16`` (shape weight 1) or with the shape weight first."""
    colour = blend_spec.get("colour")
    if colour is None:
        return "shape only"
    shape = blend_spec["shape"]
    head = "" if shape == 1.0 else f"shape {shape:g}, "
    return f"{head}w={colour['weight']:g} s={colour['sharpness']:g}"


def ranked(blend_spec: dict, vectors: dict[str, np.ndarray], rows: np.ndarray,
           groups: np.ndarray | None = None) -> np.ndarray:
    """Each query row's gallery order (itself last) under the blend, as the query ranks."""
    from visual_reco.modes import parse_blend

    blend = parse_blend(blend_spec)
    itself = rows[:, None] == np.arange(len(vectors["shape"]))[None, :]
    same = None if groups is None else groups[rows][:, None] == groups[None, :]
    scores = blend.scores({k: v[rows] for k, v in vectors.items()}, vectors,
                          candidates=CANDIDATES, exclude=itself, same_variant=same)
    return np.argsort(-np.where(itself, -np.inf, scores), axis=1, kind="stable")


@dataclass(frozen=True)
class Cosines:
    """One half's queries against the whole gallery: the shape cosine of the `CANDIDATES`
    nearest by shape (-inf elsewhere and for the query itself), the raw colour cosine, and
    which rows are in the shape's top N (for each N of `GATE_TOP`)."""

    shape: np.ndarray
    colour: np.ndarray
    top: dict[int, np.ndarray]


def cosines(vectors: dict[str, np.ndarray], rows: np.ndarray) -> Cosines:
    """The `Cosines` of the queries ``rows``, each computed by `Blend.scores`."""
    from visual_reco.modes import parse_blend

    itself = rows[:, None] == np.arange(len(vectors["shape"]))[None, :]
    queries = {k: v[rows] for k, v in vectors.items()}

    def scores(blend_spec: dict, candidates: int | None) -> np.ndarray:
        return parse_blend(blend_spec).scores(queries, vectors, candidates=candidates,
                                              exclude=itself)

    shape = {"shape": 1.0}
    return Cosines(scores(shape, CANDIDATES),
                   scores({"colour": {"weight": 1.0, "sharpness": 1.0}}, None),
                   {n: np.isfinite(scores(shape, n)) for n in GATE_TOP})


@dataclass(frozen=True)
class Gate:
    """A colour term ``weight * max(cos_colour, 0)^sharpness`` times ``factor`` (0..1) of
    the shape cosines, among the shape's candidates."""

    name: str
    weight: float
    sharpness: float
    factor: Callable[[Cosines], np.ndarray | float]

    def order(self, found: Cosines) -> np.ndarray:
        """Each query's 10 best gallery rows under this gated blend, best first (the head
        of `ranked`'s order, all the metrics read)."""
        term = self.weight * np.maximum(found.colour, 0.0) ** self.sharpness
        return research.top_k(found.shape + term * self.factor(found), 10)


def best_shape(found: Cosines) -> np.ndarray:
    """Each query's highest shape cosine among its candidates (a column)."""
    return found.shape.max(axis=1, keepdims=True)


def gate_grid() -> list[Gate]:
    """The linear blends (no gate), then every gate family of the --shape-gate grid."""
    grid = []
    for w in GATE_WEIGHTS:
        for s in GATE_SHARPNESS:
            head = f"w={w:g} s={s:g}"
            grid.append(Gate(f"{head} (no gate)", w, s, lambda c: 1.0))
            grid += [Gate(f"{head}, shape >= {t:g}", w, s,
                          lambda c, t=t: (c.shape >= t).astype(float)) for t in GATE_TAUS]
            grid += [Gate(f"{head}, ramp {a:g}..{b:g}", w, s,
                          lambda c, a=a, b=b: np.clip((c.shape - a) / (b - a), 0.0, 1.0))
                     for a, b in GATE_RAMPS]
            grid += [Gate(f"{head}, shape >= best - {d:g}", w, s,
                          lambda c, d=d: (c.shape >= best_shape(c) - d).astype(float))
                     for d in GATE_RELATIVE]
            grid += [Gate(f"{head}, shape top {n}", w, s,
                          lambda c, n=n: c.top[n].astype(float)) for n in GATE_TOP]
    return grid


def luma_numbers(order: np.ndarray, luma: research.Photos, rows: np.ndarray) -> dict:
    """Same-item R@1 (queries with another photo of their item), same-category R@1 and the
    other-colour-variants R@5 of `visual_reco.evaluation.metrics.other_variant_metrics`."""
    from visual_reco.evaluation.metrics import other_variant_metrics

    item, style, category = (luma.labels[k] for k in ("item", "style", "category"))
    first = order[:, 0]
    counts = {i: c for i, c in zip(*np.unique(item, return_counts=True), strict=True)}
    with_item = np.array([counts[item[r]] >= 2 for r in rows])
    valid = np.ones(order[:, :5].shape, dtype=bool)
    variants = other_variant_metrics(order[:, :5], valid, item[rows], style[rows], item, style)
    return {"item R@1": float((item[first] == item[rows])[with_item].mean()),
            "category R@1": float((category[first] == category[rows]).mean()),
            "other colours R@5": variants["recall@5"]}


def fashion_numbers(order: np.ndarray, fashion: research.Photos, rows: np.ndarray) -> dict:
    """Precision@10 of article type and base colour (queries with another of their label)."""
    out = {}
    for key, labels in (("type P@10", fashion.labels["articleType"]),
                        ("colour P@10", fashion.labels["baseColour"])):
        counts = {v: c for v, c in zip(*np.unique(labels, return_counts=True), strict=True)}
        evaluable = np.array([counts[labels[r]] >= 2 for r in rows])
        hits = (labels[order[:, :10]] == labels[rows][:, None]).mean(axis=1)
        out[key] = float(hits[evaluable].mean())
    return out


def gated_table(luma: research.Photos, fashion: research.Photos, luma_half: np.ndarray,
                fashion_half: np.ndarray) -> str:
    """Fashion colour, basic colour and type P@10 per half, and Luma report-half item and
    category R@1, of the CNN's top N re-ranked by colour alone, and of colour alone."""
    fashion_colour = research.worker_colours(fashion.name, fashion.pixels)
    luma_colour = research.worker_colours(luma.name, luma.pixels)
    cnn = {"fashion": fashion.cnn @ fashion.cnn.T, "luma": luma.cnn @ luma.cnn.T}
    col = {"fashion": fashion_colour @ fashion_colour.T, "luma": luma_colour @ luma_colour.T}
    rows = []
    for top in (20, 50, 100, None):
        name, function = research.gated(top) if top else research.colour_only()
        cells = [name]
        for h in ("tune", "report"):
            found = research.fashion_metrics(function(cnn["fashion"], col["fashion"]), fashion,
                                             np.flatnonzero(fashion_half == h))
            cells += [research.fmt(found[k])
                      for k in ("colour P@10", "basic colour P@10", "type P@10")]
        found = research.luma_metrics(function(cnn["luma"], col["luma"]), luma,
                                      np.flatnonzero(luma_half == "report"))
        cells += [research.fmt(found["item R@1"]), research.fmt(found["category R@1"])]
        rows.append(cells)
    return research.table(["ranking", *(f"fashion {h} {k}" for h in ("tune", "report")
                                        for k in ("colour P@10", "basic colour P@10",
                                                  "type P@10")),
                           "Luma report item R@1", "Luma report category R@1"], rows)


def gate_search(luma: research.Photos, fashion: research.Photos, luma_half: np.ndarray,
                fashion_half: np.ndarray, luma_vectors: dict[str, np.ndarray],
                fashion_vectors: dict[str, np.ndarray]) -> str:
    """The --shape-gate grid on both halves: the tune-rule winner of each gate family and of
    all, the linear blends of `similar` today and of the rule, as a markdown table."""
    found = {}
    for h in ("tune", "report"):
        lrows, frows = np.flatnonzero(luma_half == h), np.flatnonzero(fashion_half == h)
        found[h] = (lrows, cosines(luma_vectors, lrows), frows, cosines(fashion_vectors, frows))
    # The gated path, with no gate, must rank as the query does.
    lrows, luma_found = found["tune"][:2]
    plain = Gate("check", 0.4, 16.0, lambda c: 1.0).order(luma_found)[:, :10]
    if not np.array_equal(plain, ranked(spec(0.4, 16.0), luma_vectors, lrows)[:, :10]):
        raise AssertionError("the gated path does not rank as Blend.scores does")
    results = {}
    for gate in gate_grid():
        results[gate.name] = {}
        for h, (lrows, lfound, frows, ffound) in found.items():
            results[gate.name][h] = {**luma_numbers(gate.order(lfound), luma, lrows),
                                     **fashion_numbers(gate.order(ffound), fashion, frows)}

    def rule(name: str) -> bool:
        tune = results[name]["tune"]
        return tune["category R@1"] >= CATEGORY_FLOOR and tune["type P@10"] >= TYPE_FLOOR

    def best(names: list[str]) -> str | None:
        allowed = [n for n in names if rule(n)]
        return max(allowed, key=lambda n: results[n]["tune"]["item R@1"]) if allowed else None

    families = {"no gate": "(no gate)", "hard gate": ", shape >= 0", "ramp": ", ramp",
                "relative gate": "best -", "shape top N": ", shape top"}
    picks = {"`similar` today": "w=0.4 s=16 (no gate)",
             "linear, chosen in the blend search": "w=0.6 s=32 (no gate)",
             "all, by the rule": best(list(results))}
    picks |= {f"{family}, by the rule": best([n for n in results if marker in n])
              for family, marker in families.items()}
    picks |= {f"shape >= {t:g}, by the rule": best([n for n in results
                                                     if n.endswith(f", shape >= {t:g}")])
              for t in GATE_TAUS}
    columns = ["item R@1", "category R@1", "other colours R@5", "type P@10", "colour P@10"]
    rows = [[f"{name} ({why})" if name else f"none ({why})",
             *(research.fmt(results[name][h][c]) if name else "-"
               for h in ("tune", "report") for c in columns)]
            for why, name in picks.items()]
    text = research.table(["blend (score = cos_shape + w * max(cos_colour, 0)^s * gate)",
                           *(f"{h} {c}" for h in ("tune", "report") for c in columns)], rows)
    both = [n for n, r in results.items()
            if r["report"]["item R@1"] >= 0.60 and r["report"]["category R@1"] >= 0.88]
    return (f"{text}\n\n{len(results)} blends; with report item R@1 >= 0.60 and report "
            f"category R@1 >= 0.88 (read, not chosen on): {', '.join(both) or 'none'}\n\n"
            f"{overlap(luma, *found['tune'][:2])}")


def overlap(luma: research.Photos, rows: np.ndarray, found: Cosines) -> str:
    """Why a shape gate cannot separate: on the Luma tune half, the shape cosines of the
    query's nearest other photo of its item, and of the first result of `similar` today when
    it is of another category (its errors of category)."""
    item, category = luma.labels["item"], luma.labels["category"]
    first = Gate("today", 0.4, 16.0, lambda c: 1.0).order(found)[:, 0]
    same = (item[rows][:, None] == item[None, :]) & np.isfinite(found.shape)
    views = [found.shape[q][same[q]].max() for q in range(len(rows)) if same[q].any()]
    wrong = [found.shape[q, first[q]] for q in range(len(rows))
             if category[first[q]] != category[rows[q]]]
    percent = (10, 25, 50, 75, 90)

    def line(name: str, values: list[float]) -> str:
        cells = ", ".join(f"p{p} {v:.3f}" for p, v in zip(percent, np.percentile(values, percent),
                                                           strict=True))
        return f"- {name} ({len(values)} queries): {cells}"

    return "\n".join(["Luma tune half, shape cosine of:",
                      line("the nearest other photo of the item, among the candidates", views),
                      line("`similar` today's first result when of another category", wrong)])


def main(argv: list[str] | None = None) -> None:
    """Measure the grid on both halves, choose on the tune halves, print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--gated", action="store_true",
                        help="only the CNN-top-N-by-colour forms and colour alone")
    parser.add_argument("--shape-gate", action="store_true",
                        help="only the grid of colour terms gated by the shape cosine")
    args = parser.parse_args(argv)
    research.setup_django()
    started = time.perf_counter()
    luma, fashion = research.load_photos(args.datasets)
    luma_vectors = {"shape": luma.cnn,
                    "colour": research.worker_colours(luma.name, luma.pixels)}
    fashion_vectors = {"shape": fashion.cnn,
                       "colour": research.worker_colours(fashion.name, fashion.pixels)}
    luma_half = np.array([research.half(s) for s in luma.labels["style"]])
    fashion_half = np.array([research.half(p.stem) for p in fashion.paths])
    halves = ("tune", "report")
    if args.gated:
        print(gated_table(luma, fashion, luma_half, fashion_half))
        return
    if args.shape_gate:
        print(gate_search(luma, fashion, luma_half, fashion_half, luma_vectors,
                          fashion_vectors))
        print(f"\n{CANDIDATES} candidates by shape; {research.cpu_model()}, "
              f"{time.perf_counter() - started:.0f} s")
        return

    def measure(blend_spec: dict) -> dict[str, dict]:
        result = {}
        for h in halves:
            lrows = np.flatnonzero(luma_half == h)
            frows = np.flatnonzero(fashion_half == h)
            result[h] = {**luma_numbers(ranked(blend_spec, luma_vectors, lrows), luma, lrows),
                         **fashion_numbers(ranked(blend_spec, fashion_vectors, frows),
                                           fashion, frows)}
        return result

    grid = [{"shape": 1.0}] + [spec(w, s) for s in SHARPNESS for w in WEIGHTS]
    results = {name_of(g): measure(g) for g in grid}
    cnn = results["shape only"]["tune"]
    allowed = [n for n, r in results.items()
               if r["tune"]["category R@1"] >= CATEGORY_FLOOR
               and r["tune"]["type P@10"] >= cnn["type P@10"] - TYPE_DROP]
    default = max(allowed, key=lambda n: results[n]["tune"]["item R@1"]) if allowed else None
    same_colour = max(results, key=lambda n: results[n]["tune"]["colour P@10"])
    columns = ["item R@1", "category R@1", "other colours R@5", "type P@10", "colour P@10"]
    rows = [[n + (" **(similar)**" if n == default else "")
             + (" **(same_colour)**" if n == same_colour else ""),
             *(research.fmt(r[h][c]) for h in halves for c in columns)]
            for n, r in results.items()]
    print(research.table(["blend (score = cos_shape + w * max(cos_colour, 0)^s)",
                          *(f"{h} {c}" for h in halves for c in columns)], rows))
    print(f"\nsimilar (Luma tune half, category R@1 >= {CATEGORY_FLOOR}, fashion tune type "
          f"P@10 within {TYPE_DROP} of the CNN's): {default}; same_colour (fashion tune "
          f"colour P@10): {same_colour}; {CANDIDATES} candidates by each positive aspect; "
          f"{research.cpu_model()}, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
