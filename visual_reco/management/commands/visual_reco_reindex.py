"""``manage.py visual_reco_reindex``: queue (or compute) embeddings, with a progress bar."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from visual_reco.choices import EmbeddingStatus
from visual_reco.conf import reco_settings
from visual_reco.embedding import EmbedResult, embed_objects
from visual_reco.fields import ImageEmbeddingField
from visual_reco.jobs import mark_stale, reindex, select, status_counts
from visual_reco.management.progress import wait_with_progress
from visual_reco.registry import embedded_models, selected_fields


class Command(BaseCommand):
    """Queue embeddings for rows selected by status; optionally wait for the workers."""

    help = "Recompute image embeddings: --pending/--stale (default), --failed, or --all."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--all", action="store_true", help="every row with an image")
        parser.add_argument("--pending", action="store_true", help="rows waiting for a vector")
        parser.add_argument("--stale", action="store_true",
                            help="rows from another embedder or aspect version")
        parser.add_argument("--failed", action="store_true", help="rows whose image failed")
        parser.add_argument("--model", help="app_label.ModelName (default: every embedded model)")
        parser.add_argument("--field", help="one embedding field of --model (default: all)")
        parser.add_argument("--sync", action="store_true",
                            help="compute in this process instead of through Celery workers")
        parser.add_argument("--wait", action="store_true",
                            help="wait for the workers, showing progress")
        parser.add_argument("--timeout", type=float, default=3600.0,
                            help="seconds to wait with --wait (default 3600)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["field"] and not options["model"]:
            raise CommandError("--field needs --model.")
        try:
            models = [apps.get_model(options["model"])] if options["model"] else embedded_models()
            fields = [(model, field) for model in models
                      for field in selected_fields(model, options["field"])]
        except (LookupError, ValueError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from exc
        if not fields:
            raise CommandError("No model has an ImageEmbeddingField.")
        for model, field in fields:
            self.reindex_field(model, field, options)

    def _statuses(self, options: dict[str, Any]) -> list[str]:
        chosen = [s for s in ("pending", "stale", "failed") if options[s]]
        if options["all"]:
            chosen = [s.value for s in EmbeddingStatus if s != EmbeddingStatus.NO_IMAGE]
        return chosen or [EmbeddingStatus.PENDING, EmbeddingStatus.STALE]

    def reindex_field(self, model: Any, field: ImageEmbeddingField,
                      options: dict[str, Any]) -> None:
        """Select, mark and queue (or compute) one embedding field's rows."""
        label = f"{model._meta.label}.{field.name}"
        stale = mark_stale(model, field=field.name)
        if stale:
            self.stdout.write(f"{label}: {stale} vectors came from another embedder or aspect "
                              "version (stale).")
        queryset = select(model, self._statuses(options), field=field.name)
        pks = list(queryset.values_list("pk", flat=True))
        if not pks:
            self.stdout.write(f"{label}: nothing to do.")
            return
        if options["sync"]:
            self._compute_here(model, field.name, label, pks)
            return
        result = reindex(model._base_manager.filter(pk__in=pks), field=field.name)
        if result.error:
            raise CommandError(f"{label}: could not queue tasks ({result.error}); "
                               f"{len(pks)} rows stay pending.")
        self.stdout.write(f"{label}: queued {result.queued} objects in {result.tasks} tasks.")
        if options["wait"]:
            self._wait(model, field.name, label, pks, options["timeout"])

    def _compute_here(self, model: Any, field: str, label: str, pks: list[Any]) -> None:
        totals = EmbedResult()
        with tqdm(total=len(pks), desc=label, unit="img") as bar:
            for start in range(0, len(pks), reco_settings.BATCH_SIZE):
                chunk = pks[start:start + reco_settings.BATCH_SIZE]
                totals.add(embed_objects(model, chunk, field=field, force=True))
                bar.update(len(chunk))
        self.stdout.write(f"{label}: {totals.embedded} embedded, {totals.failed} failed.")

    def _wait(self, model: Any, field: str, label: str, pks: list[Any], timeout: float) -> None:
        finished = wait_with_progress(model, pks, timeout, field=field)
        counts = status_counts(model, field=field)[field]
        summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
        if not finished:
            raise CommandError(f"Timed out after {timeout:.0f}s; now: {summary}. "
                               "Is a Celery worker running?")
        self.stdout.write(f"{label}: done ({summary}).")
