"""``manage.py visual_reco_train_classifier``: train the category head on the catalog."""

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser

from visual_reco.api.views import product_model
from visual_reco.classifier import train_classifier


class Command(BaseCommand):
    """Train a small Keras classifier on the frozen embeddings and save it."""

    help = "Train the category classifier used by photo search (over the kNN vote)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", help="app_label.ModelName (default: the product model)")
        parser.add_argument("--epochs", type=int, default=60)

    def handle(self, *args: Any, **options: Any) -> None:
        model = apps.get_model(options["model"]) if options["model"] else product_model()
        try:
            report = train_classifier(model, epochs=options["epochs"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Trained on {report.examples} products in {report.classes} categories; "
            f"held-out accuracy {report.validation_accuracy:.3f}. Saved to {report.path}.")
