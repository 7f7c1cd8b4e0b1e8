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
from pathlib import Path

from demo_shop.bench import colour_research as research


def main(argv: list[str] | None = None) -> None:
    """Print the naming table (markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=str(research.ROOT.parent / "shared" / "datasets"))
    args = parser.parse_args(argv)
    research.setup_django()

    luma, fashion = research.load_photos(Path(args.datasets))
    sets = []
    for photos, labels, names, part, rows in research.naming_sets(luma, fashion):
        vectors = research.worker_colours(photos.name, photos.pixels)
        for source, names_of in (("stored vector", research.names_by_row(vectors)),
                                 ("pixels", research.names_by_row(photos.pixels))):
            first, any_, total, mistakes = research.naming_accuracy(names_of, labels, names,
                                                                    rows)
            sets.append([f"{part} ({total})", source, f"{first:.3f}", f"{any_:.3f}",
                         ", ".join(f"{a} as {b} ({n})" for (a, b), n in mistakes)])
    print(research.table(["photos", "named from", "first name right", "a name right",
                          "commonest mistakes"], sets))
    print(f"\n{research.cpu_model()}")


if __name__ == "__main__":
    main()
