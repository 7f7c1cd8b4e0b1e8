"""`VisualRecoAdminMixin`: embedding status columns and filters, error details, and a
"Recompute image embeddings" action; `VisualRecoInlineMixin`: the status of each gallery
image inside its product; the shopper-feedback analytics page; the learned ranking's
versions with their held-back numbers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import ngettext

from visual_reco import photo_adapter_learning
from visual_reco.choices import EmbeddingStatus
from visual_reco.feedback.analytics import Report, ctr_chart, default_period, report, to_csv
from visual_reco.feedback.learning import retire, serve
from visual_reco.feedback.rollup import WATERMARK
from visual_reco.fields import ImageEmbeddingField
from visual_reco.jobs import QueueResult, reindex
from visual_reco.models import FeedbackDaily, FeedbackRollup, LearnedRanking, PhotoAdapter
from visual_reco.registry import gallery_fields, selected_fields
from visual_reco.versions import current_fingerprint

STATUS_COLOURS = {
    EmbeddingStatus.READY: "#1a7f37",
    EmbeddingStatus.PENDING: "#9a6700",
    EmbeddingStatus.STALE: "#9a6700",
    EmbeddingStatus.FAILED: "#cf222e",
    EmbeddingStatus.NO_IMAGE: "#6e7781",
}
MAX_DAYS = 366


def status_label(obj: Any, embedding: ImageEmbeddingField, labelled: bool = False) -> str:
    """``obj``'s status of ``embedding`` as a coloured label; its error shows on hover."""
    status = getattr(obj, embedding.status_name)
    error = getattr(obj, embedding.error_name)
    return format_html('<span style="color:{}" title="{}">{}{}{}</span>',
                       STATUS_COLOURS.get(status, "inherit"), error,
                       f"{embedding.verbose_name}: " if labelled else "",
                       EmbeddingStatus(status).label, " ⚠" if error else "")


def _ready_name(field: ImageEmbeddingField) -> str:
    return f"_visual_reco_{field.name}_ready"


def _total_name(field: ImageEmbeddingField) -> str:
    return f"_visual_reco_{field.name}_images"


class VisualRecoAdminMixin:
    """Mix into a ``ModelAdmin`` of a model with embedding fields::

        class ProductAdmin(VisualRecoAdminMixin, admin.ModelAdmin): ...

    Shows and filters by the status of ``visual_reco_field`` (None: every embedding field of
    the model) and adds the action that recomputes them. For a product with a gallery
    (image rows with ``ImageEmbeddingField(product=...)``), the column also counts its
    images ready, and the action recomputes them too; `VisualRecoInlineMixin` shows each
    image's status in the product's page.
    """

    visual_reco_field: str | None = None

    def _embeddings(self) -> list[ImageEmbeddingField]:
        """The model's own embedding fields shown (none when ``visual_reco_field`` names a
        gallery field)."""
        if self.visual_reco_field is not None and any(
                f.name == self.visual_reco_field for f in self._galleries()):
            return []
        return selected_fields(self.model, self.visual_reco_field)

    def _galleries(self) -> list[ImageEmbeddingField]:
        fields = gallery_fields(self.model)
        if self.visual_reco_field is None:
            return fields
        return [f for f in fields if f.name == self.visual_reco_field]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        for field in self._galleries():
            # One join per gallery: images ready and images in all, for the status column.
            related = field.product_key().related_query_name()
            ready = Q(**{f"{related}__{field.status_name}": EmbeddingStatus.READY})
            queryset = queryset.annotate(**{
                _ready_name(field): Count(related, filter=ready, distinct=True),
                _total_name(field): Count(related, distinct=True)})
        return queryset

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
        """Each embedding's status as a coloured label (an error shows on hover), and for
        each gallery how many of the product's images are ready."""
        embeddings = self._embeddings()
        galleries = self._galleries()
        labelled = len(embeddings) + len(galleries) > 1
        labels = [status_label(obj, e, labelled) for e in embeddings]
        for field in galleries:
            ready = getattr(obj, _ready_name(field), None)
            total = getattr(obj, _total_name(field), None)
            if total is None:  # not read through get_queryset (a detail page): count now
                images = field.model._base_manager.filter(
                    **{field.product_key().attname: obj.pk})
                total = images.count()
                ready = images.filter(**{field.status_name: EmbeddingStatus.READY}).count()
            colour = STATUS_COLOURS[EmbeddingStatus.NO_IMAGE if not total else
                                    EmbeddingStatus.READY if ready == total else
                                    EmbeddingStatus.PENDING]
            name = field.model._meta.verbose_name_plural
            labels.append(format_html('<span style="color:{}">{}: {} of {} ready</span>',
                                      colour, name, ready, total))
        return format_html_join(mark_safe("<br>"), "{}", ((label,) for label in labels))

    @admin.action(description="Recompute image embeddings")
    def recompute_embeddings(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Mark the selected objects (and their gallery images) pending and queue their
        embeddings."""
        total = queryset.count()
        fields = len(self._embeddings())
        galleries = self._galleries()
        if galleries:  # the list's queryset counts images: select the rows plainly
            queryset = self.model._base_manager.filter(
                pk__in=list(queryset.values_list("pk", flat=True)))
        result = QueueResult()
        if fields:
            result.add(reindex(queryset, field=self.visual_reco_field))
        for field in galleries:
            images = field.model._base_manager.filter(
                **{f"{field.product_key().name}__in": queryset.values("pk")})
            result.add(reindex(images, field=field.name))
        if result.error:
            self.message_user(request, (
                f"Marked {total} for recomputing, but the task queue is unavailable "
                f"({result.error}). They stay pending and are queued when it recovers."),
                messages.WARNING)
            return
        if fields == 1 and not galleries:
            text = ngettext("Queued %(n)d object for embedding",
                            "Queued %(n)d objects for embedding", result.queued) % {
                                "n": result.queued}
        else:
            text = f"Queued {result.queued} image embeddings of {total} objects"
        text += f" in {result.tasks} task{'s' if result.tasks != 1 else ''}"
        skipped = total * fields - result.queued
        if skipped and not galleries:
            text += f"; {skipped} without an image were skipped"
        self.message_user(request, text + ".", messages.SUCCESS)


VisualRecoAdmin = VisualRecoAdminMixin  # the name before 0.2


class VisualRecoInlineMixin:
    """Mix into an inline of a gallery image model (rows with an embedding field, e.g.
    ``ImageEmbeddingField(source="image", product="product")``), shown in its product's
    page::

        class ProductImageInline(VisualRecoInlineMixin, admin.TabularInline):
            model = ProductImage

    Each image gets its embedding status (coloured, its error on hover) and when it was
    computed; saving the product with a new or changed image queues its embedding as any
    save does.
    """

    visual_reco_field: str | None = None

    def _embeddings(self) -> list[ImageEmbeddingField]:
        return selected_fields(self.model, self.visual_reco_field)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        updated = [e.updated_at_name for e in self._embeddings()]
        return [*super().get_readonly_fields(request, obj), "visual_reco_status", *updated]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # An inline that lists its ``fields`` shows the status all the same.
        fields = list(super().get_fields(request, obj))
        return fields if "visual_reco_status" in fields else [*fields, "visual_reco_status"]

    @admin.display(description="Image embedding")
    def visual_reco_status(self, obj: Any) -> str:
        """The image's embedding status (an error shows on hover); "-" before it is saved."""
        if obj is None or obj.pk is None:
            return "-"
        embeddings = self._embeddings()
        return format_html_join(mark_safe("<br>"), "{}",
                                ((status_label(obj, e, len(embeddings) > 1),)
                                 for e in embeddings))


@admin.register(FeedbackDaily)
class FeedbackAnalyticsAdmin(admin.ModelAdmin):
    """Shopper-feedback analytics, read from the daily aggregates: the changelist of
    `FeedbackDaily` is the analytics page, with its CSV export next to it. Staff with the
    view permission of the aggregates see it; nothing here can be added or edited."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        return [path("export.csv", self.admin_site.admin_view(self.export_csv),
                     name="{}_{}_export".format(*info)), *super().get_urls()]

    def _period(self, request: HttpRequest) -> tuple[date, date, list[str]]:
        start, end = default_period(timezone.now().date())
        errors = []
        for name in ("start", "end"):
            value = request.GET.get(name)
            if not value:
                continue
            try:
                parsed = date.fromisoformat(value)
            except ValueError:
                errors.append(f"{name}: {value!r} is not a date (YYYY-MM-DD)")
                continue
            start, end = (parsed, end) if name == "start" else (start, parsed)
        if start > end:
            errors.append("the start is after the end")
            start, end = end, start
        if (end - start).days > MAX_DAYS:
            errors.append(f"at most {MAX_DAYS} days at once")
            start = end - timedelta(days=MAX_DAYS)
        return start, end, errors

    def _report(self, request: HttpRequest) -> tuple[Report, list[str]]:
        if not self.has_view_permission(request):
            raise PermissionDenied
        start, end, errors = self._period(request)
        return report(start, end), errors

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        """The analytics page."""
        result, errors = self._report(request)
        charts = [(surface, ctr_chart(surface)) for surface in result.surfaces]
        context = {
            **self.admin_site.each_context(request),
            "title": "Feedback analytics", "opts": self.opts, "report": result,
            "charts": charts, "errors": errors,
            "csv_url": reverse(f"{self.admin_site.name}:visual_reco_feedbackdaily_export")
            + f"?start={result.start}&end={result.end}",
            "rollup": FeedbackRollup.objects.filter(name=WATERMARK).first(),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "visual_reco/admin/analytics.html", context)

    def export_csv(self, request: HttpRequest) -> HttpResponse:
        """The analytics table as CSV."""
        result, _ = self._report(request)
        response = HttpResponse(to_csv(result), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = (
            f'attachment; filename="feedback-{result.start}-{result.end}.csv"')
        return response


def version_actions(serve_row: Callable[[Any], None], retire_row: Callable[[Any], None], *,
                    serves: str, retired: str) -> tuple[Callable[..., None], Callable[..., None]]:
    """The admin actions of a trained model's versions: "Serve this version" with
    ``serve_row`` (its message says the version serves ``serves`` and the field) and "Stop
    serving (``retired``)" with ``retire_row``."""

    @admin.action(description="Serve this version", permissions=["change"])
    def serve_version(modeladmin: admin.ModelAdmin, request: HttpRequest,
                      queryset: QuerySet) -> None:
        """Serve the one selected version (for its field; the one before stops)."""
        if queryset.count() != 1:
            modeladmin.message_user(request, "Select one version to serve.", messages.WARNING)
            return
        row = queryset.get()
        try:
            serve_row(row)
        except ValueError as exc:
            modeladmin.message_user(request, str(exc), messages.ERROR)
            return
        modeladmin.message_user(request, f"{row.version} serves {serves}{row.model}."
                                f"{row.field}.", messages.SUCCESS)

    @admin.action(description=f"Stop serving ({retired})", permissions=["change"])
    def retire_version(modeladmin: admin.ModelAdmin, request: HttpRequest,
                       queryset: QuerySet) -> None:
        """Stop serving the selected versions."""
        for row in queryset.filter(serving=True):
            retire_row(row)
        modeladmin.message_user(request, "The selected versions do not serve.",
                                messages.SUCCESS)

    return serve_version, retire_version


class TrainedVersionAdmin(admin.ModelAdmin):
    """The versions of a trained model (`visual_reco.models.LearnedVersion`), newest first:
    read-only but for serving; a subclass adds its numbers and ``version_actions``."""

    list_filter = ["serving", "model", "field"]
    ordering = ["-created_at"]
    actions = ["serve_version", "retire_version"]
    exclude = ["weights"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [field.name for field in self.opts.fields if field.name != "weights"]

    @admin.display(description="field")
    def field_label(self, obj: Any) -> str:
        """``app.model.field``."""
        return f"{obj.model}.{obj.field}"


@admin.register(LearnedRanking)
class LearnedRankingAdmin(TrainedVersionAdmin):
    """The versions `manage.py visual_reco_learn` trained, newest first: which one serves
    and their numbers on the held-back lists against the visual order. Read-only; staff who
    may change them can serve or retire one."""

    list_display = ["version", "created_at", "field_label", "serving_label", "held_back",
                    "ndcg", "mrr", "auc", "decision"]
    serve_version, retire_version = version_actions(serve, retire, serves="",
                                                    retired="visual order")

    @admin.display(description="serving")
    def serving_label(self, obj: LearnedRanking) -> str:
        """Whether it serves, and a warning when the field's embedder changed since."""
        try:
            stale = obj.fingerprint != current_fingerprint(obj)
        except (LookupError, ImproperlyConfigured):  # the model or field is gone
            stale = True
        if stale:
            return format_html('<span style="color:#cf222e">{}</span>',
                               "trained on another embedder: never serves")
        return "yes" if obj.serving else "no"

    @admin.display(description="held-back lists")
    def held_back(self, obj: LearnedRanking) -> Any:
        """How many held-back lists with a click it was judged on."""
        return obj.metrics.get("lists")

    def _pair(self, obj: LearnedRanking, name: str) -> str:
        visual = (obj.metrics.get("visual") or {}).get(name)
        learned = (obj.metrics.get("learned") or {}).get(name)
        return f"{visual} → {learned}" if visual is not None else "-"

    @admin.display(description="NDCG visual → learned")
    def ndcg(self, obj: LearnedRanking) -> str:
        """NDCG of the visual order and of this version on the held-back lists."""
        return self._pair(obj, "ndcg")

    @admin.display(description="MRR visual → learned")
    def mrr(self, obj: LearnedRanking) -> str:
        """Mean reciprocal rank of the first click, visual order and this version."""
        return self._pair(obj, "mrr")

    @admin.display(description="AUC visual → learned")
    def auc(self, obj: LearnedRanking) -> str:
        """Clicked ranked above skipped, visual order and this version."""
        return self._pair(obj, "auc")


@admin.register(PhotoAdapter)
class PhotoAdapterAdmin(TrainedVersionAdmin):
    """The photo adapters `manage.py visual_reco_train_photo_adapter` trained, newest
    first: which one serves photo search and its held-back R@1 without and with it.
    Read-only; staff who may change them can serve or retire one."""

    list_display = ["version", "created_at", "field_label", "serving", "held",
                    "catalog_r1", "gallery_r1", "decision"]
    serve_version, retire_version = version_actions(
        photo_adapter_learning.serve, photo_adapter_learning.retire,
        serves="photo search on ", retired="raw vectors")

    def _pair(self, obj: PhotoAdapter, before: str, after: str) -> str:
        without = (obj.metrics.get(before) or {}).get("r1")
        adapted = (obj.metrics.get(after) or {}).get("r1")
        return f"{without} → {adapted}" if without is not None else "-"

    @admin.display(description="R@1 catalog photos")
    def catalog_r1(self, obj: PhotoAdapter) -> str:
        """Held-back photos against the catalog photos: without → with the adapter."""
        return self._pair(obj, "catalog_without", "catalog_adapted")

    @admin.display(description="R@1 gallery")
    def gallery_r1(self, obj: PhotoAdapter) -> str:
        """Held-back photos against the whole gallery: without → with the adapter."""
        return self._pair(obj, "without", "adapted")
