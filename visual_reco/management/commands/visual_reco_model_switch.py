"""``manage.py visual_reco_model_switch start|status|switch|rollback|finish``: change the
embedder of a field without downtime (`visual_reco.model_switch`)."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from visual_reco import model_switch
from visual_reco.fields import ImageEmbeddingField
from visual_reco.registry import embedded_models, selected_fields

ACTIONS = ("start", "status", "switch", "rollback", "finish")


class Command(BaseCommand):
    """Roll out another embedder into a shadow table, report coverage, switch, roll back."""

    help = ("start --embedder ALIAS fills a shadow with ALIAS's vectors while the column keeps "
            "serving; status reports coverage; switch swaps once coverage is complete; "
            "rollback swaps back; finish drops the shadow.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=ACTIONS)
        parser.add_argument("--embedder", help="the candidate's alias (start), a key of "
                            "VISUAL_RECO['EMBEDDERS'] or 'default'")
        parser.add_argument("--model", help="app_label.ModelName (default for status: every "
                            "embedded model)")
        parser.add_argument("--field", help="one embedding field of --model (default: all)")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "start" and not options["embedder"]:
            raise CommandError("start needs --embedder ALIAS.")
        if action != "status" and not options["model"]:
            raise CommandError(f"{action} needs --model (and --field for one of several).")
        for field in self._fields(options):
            try:
                self._run(action, field, options)
            except model_switch.SwitchRefused as exc:
                raise CommandError(str(exc)) from exc

    def _fields(self, options: dict[str, Any]) -> list[ImageEmbeddingField]:
        if options["field"] and not options["model"]:
            raise CommandError("--field needs --model.")
        try:
            models = [apps.get_model(options["model"])] if options["model"] else embedded_models()
            # Each field once, on the model that declares it (not a multi-table child's).
            return [field for model in models for field in selected_fields(model, options["field"])
                    if field.model is model._meta.concrete_model]
        except (LookupError, ValueError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from exc

    def _run(self, action: str, field: ImageEmbeddingField, options: dict[str, Any]) -> None:
        label = f"{field.model._meta.label}.{field.name}"
        if action == "start":
            result = model_switch.start(field, options["embedder"])
            if result.error:
                raise CommandError(f"{label}: could not queue tasks ({result.error}); run "
                                   "start again once the broker is back.")
            self.stdout.write(f"{label}: queued {result.queued} rows for "
                              f"{options['embedder']!r} in {result.tasks} tasks.")
        elif action in ("switch", "rollback"):
            done = getattr(model_switch, action)(field)
            self.stdout.write(f"{label}: {action} done; the column holds {done.fingerprint} "
                              f"({done}).")
        elif action == "finish":
            model_switch.finish(field)
            self.stdout.write(f"{label}: shadow vectors dropped.")
        self.stdout.write(str(model_switch.describe(field)))
