"""`VisualRecoAdminMixin`: embedding status columns and filters, error details, and a
"Recompute image embeddings" action."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import ngettext

from visual_reco.choices import EmbeddingStatus
from visual_reco.fields import ImageEmbeddingField
from visual_reco.jobs import reindex
from visual_reco.registry import selected_fields

STATUS_COLOURS = {
    EmbeddingStatus.READY: "#1a7f37",
    EmbeddingStatus.PENDING: "#9a6700",
    EmbeddingStatus.STALE: "#9a6700",
    EmbeddingStatus.FAILED: "#cf222e",
    EmbeddingStatus.NO_IMAGE: "#6e7781",
}


class VisualRecoAdminMixin:
    """Mix into a ``ModelAdmin`` of a model with embedding fields::

        class ProductAdmin(VisualRecoAdminMixin, admin.ModelAdmin): ...

    Shows and filters by the status of ``visual_reco_field`` (None: every embedding field of
    the model) and adds the action that recomputes them.
    """

    visual_reco_field: str | None = None

    def _embeddings(self) -> list[ImageEmbeddingField]:
        return selected_fields(self.model, self.visual_reco_field)

    def get_list_display(self, request: HttpRequest) -> Any:
        return [*super().get_list_display(request), "visual_reco_status"]

    def get_list_filter(self, request: HttpRequest) -> Any:
        return [*super().get_list_filter(request), *(e.status_name for e in self._embeddings())]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        companions = [name for e in self._embeddings()
                      for name in (e.error_name, e.fingerprint_name, e.updated_at_name)]
        return [*super().get_readonly_fields(request, obj), "visual_reco_status", *companions]

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        if self.has_change_permission(request):
            action = VisualRecoAdminMixin.recompute_embeddings
            actions["recompute_embeddings"] = (action, "recompute_embeddings",
                                               action.short_description)
        return actions

    @admin.display(description="Image embedding")
    def visual_reco_status(self, obj: Any) -> str:
        """Each embedding's status as a coloured label; an error shows on hover."""
        embeddings = self._embeddings()
        labelled = len(embeddings) > 1
        return format_html_join(
            mark_safe("<br>"), '<span style="color:{}" title="{}">{}{}{}</span>',
            ((STATUS_COLOURS.get(getattr(obj, e.status_name), "inherit"),
              getattr(obj, e.error_name), f"{e.verbose_name}: " if labelled else "",
              EmbeddingStatus(getattr(obj, e.status_name)).label,
              " ⚠" if getattr(obj, e.error_name) else "") for e in embeddings))

    @admin.action(description="Recompute image embeddings")
    def recompute_embeddings(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Mark the selected objects pending and queue their embeddings."""
        total = queryset.count()
        fields = len(self._embeddings())
        result = reindex(queryset, field=self.visual_reco_field)
        if result.error:
            self.message_user(request, (
                f"Marked {total} for recomputing, but the task queue is unavailable "
                f"({result.error}). They stay pending and are queued when it recovers."),
                messages.WARNING)
            return
        if fields == 1:
            text = ngettext("Queued %(n)d object for embedding",
                            "Queued %(n)d objects for embedding", result.queued) % {
                                "n": result.queued}
        else:
            text = f"Queued {result.queued} image embeddings of {total} objects"
        text += f" in {result.tasks} task{'s' if result.tasks != 1 else ''}"
        skipped = total * fields - result.queued
        if skipped:
            text += f"; {skipped} without an image were skipped"
        self.message_user(request, text + ".", messages.SUCCESS)


VisualRecoAdmin = VisualRecoAdminMixin  # the name before 0.2
