"""``manage.py visual_reco_status``: embedding counts per status; ``--wait`` for the workers."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from visual_reco.embedders import get_embedder
from visual_reco.jobs import WAITING, select, status_counts
from visual_reco.management.progress import wait_with_progress
from visual_reco.model_switch import describe
from visual_reco.registry import embedded_models, embedding_fields
from visual_reco.rollout import aliases


class Command(BaseCommand):
    """Print how many rows are ready, pending, failed, stale or without image, per field,
    with the live embedder's fingerprint and the coverage of an embedder being rolled out."""

    help = "Show embedding status counts; --wait until no row is pending or stale."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--wait", action="store_true",
                            help="wait, with a progress bar, until nothing is pending or stale")
        parser.add_argument("--timeout", type=float, default=3600.0)

    def handle(self, *args: Any, **options: Any) -> None:
        for model in embedded_models():
            if options["wait"]:
                pks = list(select(model, WAITING).values_list("pk", flat=True))
                if pks and not wait_with_progress(model, pks, options["timeout"]):
                    raise CommandError("Timed out waiting for the workers. Is a worker running?")
            counts = status_counts(model)
            for field in embedding_fields(model):
                summary = "  ".join(f"{status}={n}" for status, n in counts[field.name].items())
                live = aliases(field)
                self.stdout.write(f"{model._meta.label}.{field.name} "
                                  f"({field.fingerprint_for(get_embedder(live.live))}): "
                                  f"{summary}")
                if live.shadow and field.model is model:
                    self.stdout.write(f"  rollout: {describe(field)}")
