"""``manage.py visual_reco_train_classifier``: train the category head on the catalog."""

from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from visual_reco.classifier import train_classifier
from visual_reco.registry import product_model


class Command(BaseCommand):
    """Train a small Keras classifier on the frozen embeddings and save it."""

    help = "Train the category classifier used by photo search (over the kNN vote)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", help="app_label.ModelName (default: the product model)")
        parser.add_argument("--field", help="embedding field (default: the model's first)")
        parser.add_argument("--epochs", type=int, default=60)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            model = apps.get_model(options["model"]) if options["model"] else product_model()
            report = train_classifier(model, field=options["field"], epochs=options["epochs"])
        except (LookupError, ValueError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Trained on {report.examples} products in {report.classes} categories; "
            f"held-out accuracy {report.validation_accuracy:.3f}. Saved to {report.path}.")
