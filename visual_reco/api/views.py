"""DRF views: similar products for a product, products picked for a visitor, search by
photo, and shopper feedback."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError, models
from django.http import Http404
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from visual_reco.api.serializers import (
    CategorySerializer,
    EventBatchResultSerializer,
    EventBatchSerializer,
    PhotoSearchRequestSerializer,
    PhotoSearchResponseSerializer,
    PicksQuerySerializer,
    PicksResponseSerializer,
    SimilarQuerySerializer,
    SimilarResponseSerializer,
    similar_items,
    with_matches,
)
from visual_reco.api.throttling import (
    EventsAddressThrottle,
    EventsVisitorThrottle,
    PhotoSearchThrottle,
    PicksThrottle,
    SimilarThrottle,
    search_slots,
)
from visual_reco.conf import reco_settings
from visual_reco.databases import reading
from visual_reco.feedback.events import BatchError, Serving, accept_batch, serving, token_for
from visual_reco.feedback.picks import picks_for
from visual_reco.feedback.similar import ranked_similar
from visual_reco.fields import ImageEmbeddingField
from visual_reco.gallery import status_of
from visual_reco.images import ImageError
from visual_reco.modes import UnknownMode, mode_blend
from visual_reco.pk_rows import rows_by_pk
from visual_reco.query import colour_attribute, deferrable
from visual_reco.query_photos import SearchUnavailable
from visual_reco.reasons import own_colour_names
from visual_reco.registry import (
    get_embedding_field,
    product_model,
    searchable_fields,
)
from visual_reco.search import search_by_photo

try:
    from drf_spectacular.utils import OpenApiParameter, extend_schema
except ImportError:  # the schema is optional
    def extend_schema(*args: Any, **kwargs: Any):  # type: ignore[no-redef]  # noqa: D103
        return lambda view: view

    OpenApiParameter = None  # type: ignore[assignment,misc]


def _query_parameters() -> list[Any]:
    if OpenApiParameter is None:
        return []
    return [OpenApiParameter("limit", int, description="How many results (default 8)."),
            OpenApiParameter("field", str, description="Which embedding field to compare "
                             "(default: the view's `embedding_field`, else the model's first).")]


def _similar_parameters() -> list[Any]:
    if OpenApiParameter is None:
        return []
    return [*_query_parameters(),
            OpenApiParameter("mode", str, description="Similar in what way: a mode of "
                             "ASPECT_MODES (similar, same_colour, same_style_other_colours, "
                             "shape; default DEFAULT_MODE)."),
            OpenApiParameter("collapse", bool, description="Keep the best product of each "
                             "colour variant group (VARIANT_FIELD): true/false, 1/0 "
                             "(default false).")]


def _mode(requested: str | None) -> str | None:
    """The mode a request asks for (None: the default), or a 400 naming the known ones."""
    if requested is None:
        return None
    try:
        mode_blend(requested)
    except UnknownMode:
        names = ", ".join(sorted(reco_settings.ASPECT_MODES))
        raise serializers.ValidationError(
            {"mode": [f"Unknown mode; use one of {names}."]}) from None
    return requested


def model_value(field: models.Field, raw: Any) -> Any:
    """``raw`` from a request, parsed and validated by a model field (type, range, length).

    Raises Django's ``ValidationError`` for anything the database would refuse, NUL
    characters included, so that bad input is a 4xx and never reaches SQL.
    """
    if isinstance(raw, str) and "\x00" in raw:
        raise DjangoValidationError("Null characters are not allowed.")
    return field.clean(raw, None)


def parameter_value(field: models.Field, raw: Any, name: str) -> Any:
    """`model_value` of request parameter ``name``, or a 400 saying what is wrong with it."""
    try:
        return model_value(field, raw)
    except DjangoValidationError as exc:
        raise serializers.ValidationError({name: exc.messages}) from None


def _embedding(model: type[models.Model], requested: str | None,
               default: str | None) -> ImageEmbeddingField:
    """The embedding field a request asks for, or a 400 naming the ones that exist."""
    if requested is None:
        return get_embedding_field(model, default)
    try:
        return get_embedding_field(model, requested)
    except ImproperlyConfigured:
        names = ", ".join(f.name for f in searchable_fields(model))
        raise serializers.ValidationError(
            {"field": [f"Unknown embedding field; use one of {names}."]}) from None


logger = logging.getLogger("visual_reco")
DATABASE_RETRY_AFTER = 5
VISITOR_COOKIE_AGE = 365 * 24 * 3600


class VisualRecoAPIView(APIView):
    """The base of visual_reco's views: a database that cannot be reached (restarting,
    failing over, out of connections) is a 503 with ``Retry-After``, not a 500."""

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, OperationalError | InterfaceError):
            logger.warning("Database unavailable, answered 503: %s", exc)
            return Response({"detail": "The catalog is unavailable right now; try again "
                                       "shortly."}, status=status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": str(DATABASE_RETRY_AFTER)})
        return super().handle_exception(exc)


def _tracked(request: Request, tracked: Serving | None, response: Response) -> Response:
    """``response``, giving a new visitor the id its later events are counted under."""
    if tracked is not None and tracked.new_visitor_id:
        response.set_cookie(reco_settings.FEEDBACK["VISITOR_COOKIE"], tracked.new_visitor_id,
                            max_age=VISITOR_COOKIE_AGE, samesite="Lax",
                            secure=request.is_secure())
    return response


class SimilarProductsView(VisualRecoAPIView):
    """``GET products/<pk>/similar/?limit=N&field=F&mode=M&collapse=1``: the products that
    look most like ``pk``, compared on ``field`` (default `embedding_field`, else the model's
    first), ranked by ``mode`` (a name in ``ASPECT_MODES``, default ``DEFAULT_MODE``), one
    per ``VARIANT_FIELD`` value with ``collapse``, each with the ``reason`` it is shown, and
    the attribution ``token`` that events about them send back."""

    embedding_field: str | None = None
    surface = "similar_api"
    throttle_classes = [SimilarThrottle]

    def get_queryset(self) -> models.QuerySet:
        """The products results are drawn from (override to add filters, e.g. in stock)."""
        return product_model()._default_manager.all()

    @extend_schema(parameters=_similar_parameters(), responses=SimilarResponseSerializer)
    def get(self, request: Request, pk: str) -> Response:
        """Return the product's embedding status and its visually similar products."""
        params = SimilarQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        limit = _checked_limit(params.validated_data.get("limit"))
        model = product_model()
        embedding = _embedding(model, params.validated_data.get("field"), self.embedding_field)
        mode = _mode(params.validated_data.get("mode"))
        try:
            pk = model_value(model._meta.pk, pk)
        except DjangoValidationError:
            raise Http404(f"No {model._meta.verbose_name} has this id.") from None
        # The vector stays in the database: the similarity query reads it there.
        found = rows_by_pk(reading(model._default_manager.all()), [pk],
                           deferrable(embedding, model))
        if not found:  # get_object_or_404's answer
            raise Http404(f"No {model._meta.object_name} matches the given query.")
        product = found[0]
        tracked = serving(request, self.surface)
        results = ranked_similar(product, self.get_queryset(), limit, field=embedding.name,
                                 variant=tracked.variant if tracked else None,
                                 request=request, mode=mode,
                                 collapse_variants=params.validated_data["collapse"])
        colour_field = colour_attribute(embedding, model)
        context = {"request": request, "source_field": embedding.source, "mode": mode,
                   "colour_field": colour_field,
                   "source_colours": own_colour_names(product, embedding)}
        return _tracked(request, tracked, Response({
            "id": str(product.pk),
            "embedding_status": status_of(product, embedding),
            "results": similar_items(results, context),
            "token": token_for(tracked, self.surface, product.pk, results, embedding),
        }))


def _picks_parameters() -> list[Any]:
    if OpenApiParameter is None:
        return []
    return [*_query_parameters(),
            OpenApiParameter("product", str, description="The page's product: blended into "
                             "the visitor's taste, not shown, its category the default."),
            OpenApiParameter("category", str, description="The page's category: a visitor "
                             "without history gets its best-converting products."),
            OpenApiParameter("exclude", str, description="Comma-separated ids of products "
                             "the page already shows (at most 100).")]


class PickedForYouView(VisualRecoAPIView):
    """``GET picked-for-you/?limit=N&product=P&category=C&exclude=A,B&field=F``: the
    products picked for this visitor (its ``vr_vid`` cookie; a logged-in user's own events
    too with ``FEEDBACK["STORE_USER_ID"]``), near its taste blended with the page's
    ``product`` or, without history, the best-converting products of ``category`` (default:
    the product's); never what it bought, nor ``exclude``. With the attribution ``token``."""

    embedding_field: str | None = None
    surface = "picked_for_you_api"
    throttle_classes = [PicksThrottle]

    def get_queryset(self) -> models.QuerySet:
        """The products picks are drawn from (override to add filters, e.g. in stock)."""
        return product_model()._default_manager.all()

    @extend_schema(parameters=_picks_parameters(), responses=PicksResponseSerializer)
    def get(self, request: Request) -> Response:
        """Return the products picked for this visitor."""
        params = PicksQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        limit = _checked_limit(params.validated_data.get("limit"))
        candidates = self.get_queryset()
        embedding = _embedding(candidates.model, params.validated_data.get("field"),
                               self.embedding_field)
        category = params.validated_data.get("category")
        if category is not None:
            category = _category(candidates.model, category)
        product = params.validated_data.get("product")
        if product is not None:
            product = _page_product(candidates.model, product, embedding.attname)
        tracked = serving(request, self.surface)
        picks = picks_for(request, candidates, limit, category=category, field=embedding.name,
                          variant=tracked.variant if tracked else None, product=product,
                          exclude=_page_products(candidates.model,
                                                 params.validated_data.get("exclude", [])))
        context = {"request": request, "source_field": embedding.source}
        return _tracked(request, tracked, Response({
            "source": picks.source,
            "results": similar_items(picks.products, context),
            "token": token_for(tracked, self.surface, picks.source, picks.products,
                               embedding),
        }))


def _page_product(model: type[models.Model], raw: str, vector: str) -> models.Model:
    """The product a ``product`` parameter names (without its ``vector``), or a 400."""
    found = (model._base_manager.filter(pk=parameter_value(model._meta.pk, raw, "product"))
             .defer(vector).first())
    if found is None:
        raise serializers.ValidationError({"product": ["No product with this id."]})
    return found


def _page_products(model: type[models.Model], raw: list[str]) -> list[Any]:
    """The primary keys an ``exclude`` parameter lists, or a 400 naming a bad one."""
    return [parameter_value(model._meta.pk, value, "exclude") for value in raw]


def _category(model: type[models.Model], raw: str) -> Any:
    """A ``category`` parameter parsed by the model's ``CATEGORY_FIELD``, or a 400."""
    try:
        field = model._meta.get_field(reco_settings.CATEGORY_FIELD)
    except FieldDoesNotExist:
        raise serializers.ValidationError(
            {"category": ["These products have no category."]}) from None
    return parameter_value(field, raw, "category")


def _checked_limit(value: int | None) -> int:
    limit = reco_settings.DEFAULT_LIMIT if value is None else value
    if limit > reco_settings.MAX_LIMIT:
        message = f"Ensure this value is less than or equal to {reco_settings.MAX_LIMIT}."
        raise serializers.ValidationError({"limit": [message]})
    return limit


class PhotoSearchView(VisualRecoAPIView):
    """``POST search/`` (multipart ``image`` and/or ``text``): the products that look like
    the photo, that match the words, or both fused (`visual_reco.search.search_by_photo`).

    Optional form fields: ``limit``, ``filter_by_predicted_category``, and the fields listed
    in ``SEARCH_FILTERS`` (e.g. ``in_stock=true``). A photo that cannot be used, words too
    long, or neither is a 400 with a message; no worker answering
    (``QUERY_EMBEDDING="worker"``) is a 503.
    Only uploaded bytes are accepted: the server never fetches a URL.
    """

    embedding_field: str | None = None
    surface = "photo_search"
    parser_classes = [MultiPartParser, FormParser]
    throttle_classes = [PhotoSearchThrottle]

    def get_queryset(self) -> models.QuerySet:
        """The products searched (override to add business rules)."""
        return product_model()._default_manager.all()

    def filters(self, data: Any, model: type[models.Model]) -> dict[str, Any]:
        """The allowed ``SEARCH_FILTERS`` present in the request, parsed by their fields."""
        found = {}
        for name in reco_settings.SEARCH_FILTERS:
            if name not in data or not any(f.name == name for f in model._meta.fields):
                continue
            field = model._meta.get_field(name)
            if not isinstance(field, models.BooleanField):
                found[name] = parameter_value(field, data[name], name)
                continue
            try:  # true/false/1/0/yes/no
                found[name] = serializers.BooleanField().run_validation(data[name])
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({name: exc.detail}) from None
        return found

    @extend_schema(request={"multipart/form-data": PhotoSearchRequestSerializer},
                   responses={200: PhotoSearchResponseSerializer})
    def post(self, request: Request) -> Response:
        """Search the catalog with the uploaded photo, the words, or both."""
        params = PhotoSearchRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        limit = _checked_limit(params.validated_data.get("limit"))
        model = product_model()
        embedding = _embedding(model, params.validated_data.get("field"), self.embedding_field)
        filters = self.filters(request.data, model)
        image = params.validated_data.get("image")
        text = params.validated_data.get("text", "")
        # Only a photo needs one of the process's few slots (the CNN's memory and time).
        slots = search_slots() if image is not None else None
        if slots is not None and not slots.acquire(blocking=False):
            return Response({"detail": "Too many photo searches at once; try again shortly."},
                            status=status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": "1"})
        try:
            found = search_by_photo(
                image, self.get_queryset(), limit=limit, text=text,
                filter_by_predicted_category=params.validated_data["filter_by_predicted_category"],
                filters=filters, field=embedding.name)
        except ImageError as exc:
            return Response({"image": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        except SearchUnavailable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": "5"})
        finally:
            if slots is not None:
                slots.release()
        context = {"request": request, "source_field": embedding.source,
                   "colour_field": colour_attribute(embedding, model)}
        tracked = serving(request, self.surface)
        return _tracked(request, tracked, Response({
            "predicted_category": (CategorySerializer(found.category).data
                                   if found.category and found.category.category else None),
            "photo": image is not None,
            "text": found.text,
            "results": with_matches(similar_items(found.results, context), found.results),
            "timings_ms": {k: round(v, 1) for k, v in found.timings_ms.items()},
            "token": token_for(tracked, self.surface, "photo" if image is not None else "text",
                               found.results, embedding),
        }))


class EventsView(VisualRecoAPIView):
    """``POST events/`` (JSON ``{"events": [...]}``): shopper feedback from the widget's
    script, stored whole or refused whole with the reason (400).

    Same-origin only: a browser's cross-site request is refused (403) by its ``Origin`` and
    ``Sec-Fetch-Site`` headers, so no other site can post events for a shopper. No session
    authentication, hence no CSRF token: the script posts with ``navigator.sendBeacon``,
    which cannot send one.
    """

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    throttle_classes = [EventsVisitorThrottle, EventsAddressThrottle]

    @extend_schema(request=EventBatchSerializer, responses={200: EventBatchResultSerializer})
    def post(self, request: Request) -> Response:
        """Store a batch of events."""
        if not _same_origin(request):
            return Response({"detail": "Events are accepted from this shop's own pages only."},
                            status=status.HTTP_403_FORBIDDEN)
        limit = reco_settings.FEEDBACK["MAX_BATCH_BYTES"]
        length = request.META.get("CONTENT_LENGTH") or "0"
        if not length.isdigit() or int(length) > limit:
            return Response({"detail": f"The batch is larger than {limit} bytes."},
                            status=status.HTTP_400_BAD_REQUEST)
        body = request.body
        if len(body) > limit:
            return Response({"detail": f"The batch is larger than {limit} bytes."},
                            status=status.HTTP_400_BAD_REQUEST)
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return Response({"detail": "The batch is not JSON."},
                            status=status.HTTP_400_BAD_REQUEST)
        try:
            stored, duplicates = accept_batch(request, payload)
        except BatchError as exc:
            return Response({"detail": f"Nothing stored: {exc}."},
                            status=status.HTTP_400_BAD_REQUEST)
        return Response({"stored": stored, "duplicates": duplicates})


def _same_origin(request: Request) -> bool:
    """Whether a browser says the request comes from this site (non-browser clients, which
    send neither header, are judged by the throttles and the tokens alone)."""
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return False
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.get_host()
