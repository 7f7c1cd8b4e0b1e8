"""``manage.py visual_reco_evaluate CSV --out DIR``: retrieval metrics and an HTML report.

The work is done by `visual_reco.evaluation.run`; this command parses options and prints.
"""

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from visual_reco.evaluation.embedding import CHUNK_SIZE
from visual_reco.evaluation.overrides import parse_overrides
from visual_reco.evaluation.report import format_mode_summary, format_summary
from visual_reco.evaluation.run import run_evaluation


class Command(BaseCommand):
    """Embed the images of a labelled CSV and measure how well the gallery is ranked."""

    help = ("Evaluate the configured embedder on a CSV of path,label,role (+ label_* columns); "
            "writes DIR/metrics.json and DIR/report.html.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("csv", help="CSV with columns path,label,role (paths relative to it)")
        parser.add_argument("--out", required=True, help="output folder")
        parser.add_argument("--limit", type=int, default=None,
                            help="evaluate a seeded random subsample of N queries")
        parser.add_argument("--seed", type=int, default=0,
                            help="seed of --limit and of the example choice (default 0)")
        parser.add_argument("--set", dest="overrides", action="append", default=[],
                            metavar="KEY=VALUE",
                            help="override a VISUAL_RECO setting for this run (VALUE as JSON "
                                 "when it parses; KEY may be dotted, e.g. "
                                 "EMBEDDER.OPTIONS.input_size); repeatable")
        parser.add_argument("--examples", type=int, default=12,
                            help="example queries shown in the report (default 12)")
        parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE,
                            help="images decoded and embedded at a time")
        parser.add_argument("--mode", dest="modes", action="append", default=[],
                            metavar="NAME",
                            help="also rank by this aspect mode (ASPECT_MODES), as the "
                                 "blended query does; every mode from one embedding pass; "
                                 "repeatable")
        parser.add_argument("--aspects", action="append", default=[], metavar="JSON",
                            help='also rank by this blend, e.g. \'{"shape": 1, "colour": '
                                 '0.4}\'; repeatable')
        parser.add_argument("--variant-label", default=None, metavar="COLUMN",
                            help="label column naming each image's variant group (e.g. the "
                                 "style) for variants_first and the other-variant metrics "
                                 "(default: label_style when the CSV has it)")

    def handle(self, *args: Any, **options: Any) -> None:
        csv_path = Path(options["csv"])
        if not csv_path.is_file():
            raise CommandError(f"{csv_path} is not a file.")
        if options["limit"] is not None and options["limit"] < 1:
            raise CommandError("--limit must be at least 1.")
        if options["chunk_size"] < 1:
            raise CommandError("--chunk-size must be at least 1.")
        try:
            aspects = [json.loads(spec) for spec in options["aspects"]]
        except json.JSONDecodeError as exc:
            raise CommandError(f"--aspects is not JSON: {exc}") from exc
        try:
            overrides = parse_overrides(options["overrides"])
            metrics = run_evaluation(
                csv_path, options["out"], limit=options["limit"], seed=options["seed"],
                examples=options["examples"], overrides=overrides,
                chunk_size=options["chunk_size"], progress=options["verbosity"] > 0,
                modes=options["modes"], aspects=aspects,
                variant_label=options["variant_label"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if options["verbosity"] > 0:
            self.stdout.write(format_summary(metrics))
            if "modes" in metrics:
                self.stdout.write(format_mode_summary(metrics))
            out = Path(options["out"])
            self.stdout.write(f"Wrote {out / 'metrics.json'} and {out / 'report.html'}")
