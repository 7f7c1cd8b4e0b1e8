"""``manage.py visual_reco_train_photo_adapter``: learn photo search's adapter from a
gallery's extra photos (customer or in-store shots), judge it on the held-back ones, and
serve it when it beats the search without it there."""

from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from visual_reco.photo_adapter_learning import learn
from visual_reco.registry import product_model


class Command(BaseCommand):
    """Train a version of the photo adapter (`visual_reco.photo_adapter_learning`)."""

    help = ("Fit a map of the CNN vectors from the products' extra photos (each image after "
            "a product's first), print held-back photo search R@1/R@5 without and with it, "
            "and serve it for photo search when it wins there.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--model", help="app_label.ModelName (default: PRODUCT_MODEL)")
        parser.add_argument("--field",
                            help="embedding field, a gallery field with the extra photos "
                                 "(default: the model's first)")
        parser.add_argument("--dry-run", action="store_true",
                            help="train and judge, but store and serve nothing")
        parser.add_argument("--min-photos", type=int,
                            help="extra photos needed to train (PHOTO_ADAPTER['MIN_PHOTOS'])")
        parser.add_argument("--margin", type=float,
                            help="held-back R@1 an adapter must gain (PHOTO_ADAPTER['MARGIN'])")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            model = apps.get_model(options["model"]) if options["model"] else product_model()
        except (LookupError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        overrides = {name: options[key] for key, name in (("min_photos", "MIN_PHOTOS"),
                                                          ("margin", "MARGIN"))
                     if options[key] is not None}
        try:
            result = learn(model, options["field"], dry_run=options["dry_run"],
                           echo=self.stdout.write, **overrides)
        except ImproperlyConfigured as exc:  # no such field
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{result.model}.{result.field} version {result.version or '-'}")
        metrics = result.metrics
        if metrics:
            for name in ("without", "adapted", "serving_version"):
                numbers = metrics.get(name)
                if numbers:
                    self.stdout.write(f"  {name:15} R@1 {numbers['r1']}  R@5 {numbers['r5']}")
            if "fit_seconds" in metrics:
                self.stdout.write(f"trained in {metrics['fit_seconds']} s")
        state = "serving" if result.serving else "not serving"
        stored = "" if result.saved else " (nothing stored)"
        self.stdout.write(f"{state}: {result.reason}{stored}")
        if not result.version:
            raise CommandError(result.reason)
