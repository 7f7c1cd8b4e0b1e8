"""Issue 12's unmet Luma target with a view adapter: does the residual map of
`visual_reco.photo_adapter_learning` (issue 13's photo adapter), learned from the shop's own
multi-view gallery (the studio views of one Luma item: ``main``, ``back``, ``alt1``, ...),
raise "another view -> the same item" R@1 in ``similar``?

Run: ``.venv/bin/python demo_shop/bench/view_adapter.py [--datasets DIR]``. Reuses the
embeddings and colour vectors cached by ``demo_shop/bench/colour_research.py`` and the
metrics and ranking of ``demo_shop/bench/mode_tuning.py`` (same splits: Luma by the MD5 of
the style, fashion by the MD5 of the id; 100 candidates of each positive aspect).

- The adapter is `photo_adapter_learning.fit` on the Luma **tune** half of styles: each item
  (style + colour) a product, its ``main`` view the anchor, its other views the queries, every
  tune item's ``main`` a negative. Nothing of the report half trains or chooses anything.
- It is applied to every CNN vector, query and gallery (as a companion column of projected
  vectors would be), and ``similar``'s blend ``cos_shape + w * max(cos_colour, 0)^s`` is
  re-chosen over mode_tuning's grid.
- Choosing on the tune half with an adapter trained on it would flatter it, so the tune
  numbers are **out of fold**: the tune styles split in two folds (MD5 of ``fold:`` + style),
  each fold's queries ranked with an adapter fitted on the other fold. The report half is
  ranked with the adapter fitted on the whole tune half.
- Rule (issue 12's floors, as mode_tuning's ``--shape-gate``): over every (adapter, blend),
  the largest tune item R@1 whose tune category R@1 >= 0.88 and fashion tune type P@10 >=
  0.70 (fashion vectors projected by the whole-tune adapter: no fashion photo trains it).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo_shop.bench import colour_research as research  # noqa: E402
from demo_shop.bench import mode_tuning as tuning  # noqa: E402

# The adapter settings tried (the rest are `PHOTO_ADAPTER`'s defaults); None: no adapter.
VARIANTS: list[dict | None] = [None] + [{"RANK": r, "DECAY": d}
                                        for r in (32, 128) for d in (0.001, 0.1)]
COLUMNS = ["item R@1", "category R@1", "other colours R@5", "type P@10", "colour P@10"]


def fold(style: str) -> int:
    """0 or 1: the fold of a tune-half style for the out-of-fold numbers."""
    return int(hashlib.md5(f"fold:{style}".encode()).hexdigest(), 16) % 2


def view_photos(luma: research.Photos, rows: np.ndarray):
    """The `photo_adapter_learning.Photos` of the Luma photos ``rows``: an item a product,
    its ``main`` view first (the anchor), its other views extra photos, none held back."""
    from visual_reco.modes import unit_rows
    from visual_reco.photo_adapter_learning import Photos

    item, view = luma.labels["item"], luma.labels["view"]
    rows = sorted(rows, key=lambda r: (item[r], view[r] != "main", view[r]))
    products = sorted({item[r] for r in rows})
    index = {name: i for i, name in enumerate(products)}
    owners = np.array([index[item[r]] for r in rows], dtype=np.int64)
    extra = np.r_[False, owners[1:] == owners[:-1]]
    return Photos(products, owners, unit_rows(luma.cnn[rows], np.float32), None, extra,
                  np.zeros(len(rows), dtype=bool))


def fitted(luma: research.Photos, rows: np.ndarray, variant: dict):
    """The adapter fitted on the views of ``rows`` with ``variant`` over the defaults."""
    from visual_reco.conf import reco_settings
    from visual_reco.photo_adapter_learning import fit

    photos = view_photos(luma, rows)
    return fit(photos, {**reco_settings.PHOTO_ADAPTER, **variant}), int(photos.extra.sum())


def luma_results(luma: research.Photos, colour: np.ndarray, shapes: list[np.ndarray],
                 row_sets: list[np.ndarray], grid: list[dict]) -> dict[str, dict]:
    """`mode_tuning.luma_numbers` of every blend of ``grid``: the queries of each row set
    ranked against the gallery of its own shape vectors, pooled into one set of numbers."""
    rows = np.concatenate(row_sets)
    out = {}
    for blend_spec in grid:
        order = np.concatenate([tuning.ranked(blend_spec, {"shape": s, "colour": colour}, r)
                                for s, r in zip(shapes, row_sets, strict=True)])
        out[tuning.name_of(blend_spec)] = tuning.luma_numbers(order, luma, rows)
    return out


def main(argv: list[str] | None = None) -> None:
    """Fit, rank, choose on the tune half by the rule, print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    args = parser.parse_args(argv)
    research.setup_django()
    started = time.perf_counter()
    luma = research.load_luma(args.datasets)
    luma_colour = research.worker_colours(luma.name, luma.pixels)
    luma_half = np.array([research.half(s) for s in luma.labels["style"]])
    tune, report = np.flatnonzero(luma_half == "tune"), np.flatnonzero(luma_half == "report")
    folds = np.array([fold(s) for s in luma.labels["style"][tune]])
    grid = [{"shape": 1.0}] + [tuning.spec(w, s) for s in tuning.SHARPNESS
                               for w in tuning.WEIGHTS]

    luma_found: dict[str, dict[str, dict]] = {}
    whole: dict[str, object] = {}
    pairs: dict[str, str] = {}
    for variant in VARIANTS:
        name = "none" if variant is None else f"rank {variant['RANK']}, decay {variant['DECAY']:g}"
        if variant is None:
            whole[name] = None
            oof = [luma.cnn] * 2
            final = luma.cnn
        else:
            adapters = [fitted(luma, tune[folds != f], variant) for f in (0, 1)]
            whole[name], trained = fitted(luma, tune, variant)
            oof = [a.project(luma.cnn) for a, _ in adapters]
            final = whole[name].project(luma.cnn)
            pairs[name] = (f"{adapters[1][1]} / {adapters[0][1]} view pairs per fold, "
                           f"{trained} on the whole tune half")
        luma_found[name] = {
            "tune": luma_results(luma, luma_colour, oof, [tune[folds == 0], tune[folds == 1]],
                                 grid),
            "report": luma_results(luma, luma_colour, [final], [report], grid)}
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)

    fashion = research.load_fashion(args.datasets)
    fashion_colour = research.worker_colours(fashion.name, fashion.pixels)
    fashion_half = np.array([research.half(p.stem) for p in fashion.paths])
    fashion_cache: dict[tuple[str, str, str], dict] = {}

    def fashion_of(name: str, blend: str, h: str) -> dict:
        key = (name, blend, h)
        if key not in fashion_cache:
            adapter = whole[name]
            shape = fashion.cnn if adapter is None else adapter.project(fashion.cnn)
            rows = np.flatnonzero(fashion_half == h)
            blend_spec = next(g for g in grid if tuning.name_of(g) == blend)
            fashion_cache[key] = tuning.fashion_numbers(
                tuning.ranked(blend_spec, {"shape": shape, "colour": fashion_colour}, rows),
                fashion, rows)
        return fashion_cache[key]

    def choose(names: list[str]) -> str | None:
        """The rule, evaluating fashion lazily from the best tune item R@1 down."""
        ranked = sorted(((n, b) for n in names for b, r in luma_found[n]["tune"].items()
                         if r["category R@1"] >= tuning.CATEGORY_FLOOR),
                        key=lambda nb: -luma_found[nb[0]]["tune"][nb[1]]["item R@1"])
        for n, b in ranked:
            if fashion_of(n, b, "tune")["type P@10"] >= tuning.TYPE_FLOOR:
                return (n, b)
        return None

    def cells(n: str, b: str) -> list[str]:
        out = []
        for h in ("tune", "report"):
            found = {**luma_found[n][h][b], **fashion_of(n, b, h)}
            out += [research.fmt(found[c]) for c in COLUMNS]
        return out

    rows = []
    today = tuning.name_of(tuning.spec(0.3, 16.0))
    for n in luma_found:
        rows.append([f"{n}, shape only", *(research.fmt(luma_found[n][h]["shape only"][c])
                                           for h in ("tune", "report")
                                           for c in ("item R@1", "category R@1"))])
    shape_table = research.table(["adapter, ranking", "tune item R@1 (out of fold)",
                                  "tune category R@1", "report item R@1",
                                  "report category R@1"], rows)
    rows = []
    for n in luma_found:
        rows.append([f"{n}, {today} (`similar` today)", *cells(n, today)])
        chosen = choose([n])
        rows.append([f"{n}, {chosen[1]} (re-chosen)" if chosen else f"{n}: none meets the rule",
                     *(cells(*chosen) if chosen else [])])
    luma_rows = []
    for n in luma_found:
        # The category floor alone (no fashion check): what the type floor may be costing.
        allowed = {b: r for b, r in luma_found[n]["tune"].items()
                   if r["category R@1"] >= tuning.CATEGORY_FLOOR}
        b = max(allowed, key=lambda k: allowed[k]["item R@1"])
        luma_rows.append([f"{n}, {b}", *(research.fmt(luma_found[n][h][b][c])
                                         for h in ("tune", "report")
                                         for c in ("item R@1", "category R@1",
                                                   "other colours R@5"))])
    best = choose(list(luma_found))
    both = [(n, b) for n in luma_found for b, r in luma_found[n]["report"].items()
            if r["item R@1"] >= 0.60 and r["category R@1"] >= 0.88]
    print("Shape vector alone (Luma):\n\n" + shape_table + "\n")
    print(research.table(["adapter, blend", *(f"{h} {c}" for h in ("tune", "report")
                                              for c in COLUMNS)], rows))
    print("\nLuma alone, the best tune item R@1 with tune category R@1 >= "
          f"{tuning.CATEGORY_FLOOR} (no fashion floor):\n")
    print(research.table(["adapter, blend", *(f"{h} {c}" for h in ("tune", "report")
                                              for c in ("item R@1", "category R@1",
                                                        "other colours R@5"))], luma_rows))
    print(f"\nTraining: {'; '.join(f'{k}: {v}' for k, v in pairs.items())}")
    print(f"Chosen by the rule over every adapter and blend: {best}")
    print(f"(Read, not chosen on) with report item R@1 >= 0.60 and report category R@1 >= "
          f"0.88: {', '.join(f'{n} {b}' for n, b in both) or 'none'}")
    print(f"Luma: {len(tune)} tune photos ({int((folds == 0).sum())} / "
          f"{int((folds == 1).sum())} per fold), {len(report)} report; fashion "
          f"{int((fashion_half == 'tune').sum())} / {int((fashion_half == 'report').sum())}; "
          f"{research.cpu_model()}, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
