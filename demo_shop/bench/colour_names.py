"""How often the colour names of a product (`visual_reco.colour.dominant_colours`) match the
datasets' colour labels, named from the stored colour vector (what the API and the captions
use) and from the photo's pixels.

Run: ``.venv/bin/python -m demo_shop.bench.colour_names [--datasets DIR]``.

The photos and model inputs come from `demo_shop.bench.colour_research` (cached under
``.cache/colour-research/``). A name is right if it is one of the palette names mapped to
the label (``LUMA_NAMES``, ``FASHION_NAMES`` there). The palette was adjusted on the Luma
tune half of styles and the first half of the fashion photos; the other halves report.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from demo_shop.bench import colour_research as research


def accuracy(name_of, labels: np.ndarray, right_names: dict[str, set[str]],
             rows: np.ndarray) -> tuple[float, float, int, list[tuple[tuple[str, str], int]]]:
    """First name right, any name right, photos counted, and the commonest mistakes."""
    first = any_ = total = 0
    mistakes: Counter = Counter()
    for row in rows:
        right = right_names.get(str(labels[row]))
        if not right:
            continue
        found = name_of(row)
        total += 1
        first += found[0] in right
        any_ += bool(right & set(found))
        if found[0] not in right:
            mistakes[(str(labels[row]), found[0])] += 1
    return first / max(total, 1), any_ / max(total, 1), total, mistakes.most_common(4)


def main(argv: list[str] | None = None) -> None:
    """Print the naming table (markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=str(research.ROOT.parent / "shared" / "datasets"))
    args = parser.parse_args(argv)
    research.setup_django()
    from visual_reco.colour import colour_vector, dominant_colours

    luma, fashion = research.load_photos(Path(args.datasets))
    sets = []
    for photos, labels, names in ((luma, luma.labels["colour"], research.LUMA_NAMES),
                                  (fashion, fashion.labels["baseColour"],
                                   research.FASHION_NAMES)):
        vectors = np.stack([colour_vector(pixels) for pixels in photos.pixels])
        if photos is luma:
            halves = np.array([research.half(style) for style in luma.labels["style"]])
            parts = {"tune half of styles": np.flatnonzero(halves == "tune"),
                     "report half of styles": np.flatnonzero(halves != "tune")}
        else:
            middle = len(photos.paths) // 2
            parts = {"first half (tune)": np.arange(middle),
                     "second half (report)": np.arange(middle, len(photos.paths))}
        for part, rows in parts.items():
            for source, name_of in (
                    ("stored vector", lambda row, v=vectors: [n for n, _ in
                                                              dominant_colours(v[row])]),
                    ("pixels", lambda row, p=photos: [n for n, _ in
                                                      dominant_colours(p.pixels[row])])):
                first, any_, total, mistakes = accuracy(name_of, labels, names, rows)
                sets.append([f"{photos.name}, {part} ({total})", source, f"{first:.3f}",
                             f"{any_:.3f}", ", ".join(f"{a} as {b} ({n})"
                                                     for (a, b), n in mistakes)])
    print(research.table(["photos", "named from", "first name right", "a name right",
                          "commonest mistakes"], sets))
    print(f"\n{research.cpu_model()}")


if __name__ == "__main__":
    main()
