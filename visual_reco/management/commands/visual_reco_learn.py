"""``manage.py visual_reco_learn``: learn the ranking from shopper feedback, judge it on the
held-back lists, and serve it when it beats the visual order there."""

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError

from visual_reco.feedback.learning import learn
from visual_reco.registry import product_model


class Command(BaseCommand):
    """Train a version of the learned ranking (`visual_reco.feedback.learning`)."""

    help = ("Fit a correction to the visual similarity from the served lists' clicks and "
            "skips, print its numbers on the held-back lists, and serve it when it beats the "
            "visual order there (the beat task visual_reco.learn_ranking does the same).")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--model", help="app_label.ModelName (default: PRODUCT_MODEL)")
        parser.add_argument("--field", help="embedding field (default: the model's first)")
        parser.add_argument("--dry-run", action="store_true",
                            help="train and judge, but store and serve nothing")
        parser.add_argument("--min-lists", type=int,
                            help="held-back lists with a click needed to judge "
                                 "(LEARNING['MIN_LISTS'])")
        parser.add_argument("--margin", type=float,
                            help="NDCG a version must gain over the visual order "
                                 "(LEARNING['MARGIN'])")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            model = apps.get_model(options["model"]) if options["model"] else product_model()
        except (LookupError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        overrides = {name: options[key] for key, name in (("min_lists", "MIN_LISTS"),
                                                          ("margin", "MARGIN"))
                     if options[key] is not None}
        result = learn(model, options["field"], dry_run=options["dry_run"],
                       echo=self.stdout.write, **overrides)
        self.stdout.write(f"{result.model}.{result.field} version {result.version or '-'}")
        metrics = result.metrics
        if metrics:
            self.stdout.write(f"held-back lists with a click: {metrics['lists']} "
                              f"(NDCG@{metrics['ndcg_at']}, clicks debiased by position)")
            for name in ("visual", "learned", "served_order"):
                numbers = metrics.get(name) or {}
                self.stdout.write(f"  {name:13} MRR {numbers.get('mrr')}  NDCG "
                                  f"{numbers.get('ndcg')}  AUC {numbers.get('auc')}")
            if "fit_seconds" in metrics:
                self.stdout.write(f"trained in {metrics['fit_seconds']} s "
                                  f"({metrics.get('steps')} steps)")
        state = "serving" if result.serving else "not serving"
        stored = "" if result.saved else " (nothing stored)"
        self.stdout.write(f"{state}: {result.reason}{stored}")
