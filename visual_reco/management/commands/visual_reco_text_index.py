"""``manage.py visual_reco_text_index [MODEL ...]``: (re)build the text index of search by
words from the products' ``TEXT_SEARCH["FIELDS"]``."""

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from visual_reco.text_search import fields_of, indexed_models, rebuild


class Command(BaseCommand):
    """Index every object of the indexed models again and drop documents of deleted ones:
    after a change of ``TEXT_SEARCH`` (check ``visual_reco.W004``), a ``QuerySet.update()``
    or ``bulk_create()`` (no signals), or a fixture load."""

    help = "Rebuild the text index (search by words) of the product models."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("models", nargs="*", metavar="app_label.Model",
                            help="only these models (default: every indexed model)")
        parser.add_argument("--database", default="default")

    def handle(self, *args: Any, models: list[str], database: str, **options: Any) -> None:
        chosen = indexed_models()
        if models:
            try:
                chosen = [apps.get_model(label) for label in models]
            except (LookupError, ValueError) as exc:
                raise CommandError(str(exc)) from None
        if not chosen:
            self.stdout.write("No model has a field of VISUAL_RECO['TEXT_SEARCH']['FIELDS'].")
        for model in chosen:
            if not fields_of(model):
                raise CommandError(f"{model._meta.label} has none of the TEXT_SEARCH fields.")
            # One transaction: searches see the old index or the new one, never half of it.
            with transaction.atomic(using=database):
                written = rebuild(model, database)
            fields = ", ".join(f"{path} ({weight})" for path, weight in fields_of(model))
            self.stdout.write(f"{model._meta.label}: {written} documents from {fields}.")
