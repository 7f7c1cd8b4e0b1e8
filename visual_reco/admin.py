"""`VisualRecoAdmin`: status column and filter, error details, and a reindex action."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import ngettext

from visual_reco import indexing
from visual_reco.fields import ImageEmbeddingField, get_embedding_field
from visual_reco.models import EmbeddingStatus

STATUS_COLOURS = {
    EmbeddingStatus.READY: "#1a7f37",
    EmbeddingStatus.PENDING: "#9a6700",
    EmbeddingStatus.STALE: "#9a6700",
    EmbeddingStatus.FAILED: "#cf222e",
    EmbeddingStatus.NO_IMAGE: "#6e7781",
}


class VisualRecoAdmin:
    """Mix into a ``ModelAdmin`` of a model with an `ImageEmbeddingField`::

        class ProductAdmin(VisualRecoAdmin, admin.ModelAdmin): ...
    """

    visual_reco_field: str | None = None

    def _embedding(self) -> ImageEmbeddingField:
        return get_embedding_field(self.model, self.visual_reco_field)

    def get_list_display(self, request: HttpRequest) -> Any:
        return [*super().get_list_display(request), "visual_reco_status"]

    def get_list_filter(self, request: HttpRequest) -> Any:
        return [*super().get_list_filter(request), self._embedding().status_name]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        embedding = self._embedding()
        return [*super().get_readonly_fields(request, obj), "visual_reco_status",
                embedding.error_name, embedding.fingerprint_name, embedding.updated_at_name]

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        if self.has_change_permission(request):
            action = VisualRecoAdmin.recompute_embeddings
            actions["recompute_embeddings"] = (action, "recompute_embeddings",
                                               action.short_description)
        return actions

    @admin.display(description="Image embedding")
    def visual_reco_status(self, obj: Any) -> str:
        """The embedding status as a coloured label; the error shows on hover."""
        embedding = self._embedding()
        status = getattr(obj, embedding.status_name)
        error = getattr(obj, embedding.error_name)
        return format_html('<span style="color:{}" title="{}">{}{}</span>',
                           STATUS_COLOURS.get(status, "inherit"), error,
                           EmbeddingStatus(status).label, " ⚠" if error else "")

    def recompute_embeddings(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Mark the selected objects pending and queue their embeddings."""
        total = queryset.count()
        result = indexing.reindex(queryset, field=self.visual_reco_field)
        skipped = total - result.queued
        if result.error:
            self.message_user(request, (
                f"Marked {total} for recomputing, but the task queue is unavailable "
                f"({result.error}). They stay pending and are queued when it recovers."),
                messages.WARNING)
            return
        text = ngettext("Queued %(n)d object for embedding", "Queued %(n)d objects for embedding",
                        result.queued) % {"n": result.queued}
        text += f" in {result.tasks} task{'s' if result.tasks != 1 else ''}"
        if skipped:
            text += f"; {skipped} without an image were skipped"
        self.message_user(request, text + ".", messages.SUCCESS)

    recompute_embeddings.short_description = "Recompute image embeddings"  # type: ignore[attr-defined]
