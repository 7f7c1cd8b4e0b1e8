"""DRF views: similar products for a product."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from django.shortcuts import get_object_or_404
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from visual_reco.api.serializers import (
    CategorySerializer,
    PhotoSearchRequestSerializer,
    PhotoSearchResponseSerializer,
    SimilarQuerySerializer,
    SimilarResponseSerializer,
)
from visual_reco.conf import reco_settings
from visual_reco.fields import embedded_models, get_embedding_field
from visual_reco.images import ImageError
from visual_reco.result_cache import similar_products
from visual_reco.search import SearchUnavailable, search_by_photo

try:
    from drf_spectacular.utils import OpenApiParameter, extend_schema
except ImportError:  # the schema is optional
    def extend_schema(*args: Any, **kwargs: Any):  # type: ignore[no-redef]  # noqa: D103
        return lambda view: view

    OpenApiParameter = None  # type: ignore[assignment,misc]


def product_model() -> type[models.Model]:
    """The model the API serves: ``PRODUCT_MODEL``, or the only embedded model."""
    if reco_settings.PRODUCT_MODEL:
        return apps.get_model(reco_settings.PRODUCT_MODEL)
    candidates = embedded_models()
    if len(candidates) != 1:
        raise ImproperlyConfigured(
            "Set VISUAL_RECO['PRODUCT_MODEL']: found "
            f"{len(candidates)} models with an ImageEmbeddingField")
    return candidates[0]


def _limit_parameter() -> list[Any]:
    if OpenApiParameter is None:
        return []
    return [OpenApiParameter("limit", int, description="How many results (default 8).")]


class SimilarProductsView(APIView):
    """``GET products/<pk>/similar/?limit=N``: the products that look most like ``pk``."""

    def get_queryset(self) -> models.QuerySet:
        """The products results are drawn from (override to add filters, e.g. in stock)."""
        return product_model()._default_manager.all()

    @extend_schema(parameters=_limit_parameter(), responses=SimilarResponseSerializer)
    def get(self, request: Request, pk: str) -> Response:
        """Return the product's embedding status and its visually similar products."""
        params = SimilarQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        limit = _checked_limit(params.validated_data.get("limit"))
        model = product_model()
        embedding = get_embedding_field(model)
        # The vector stays in the database: the similarity query reads it there.
        product = get_object_or_404(model._default_manager.defer(embedding.attname), pk=pk)
        results = similar_products(product, self.get_queryset(), limit)
        item_serializer = reco_settings.SIMILAR_SERIALIZER
        context = {"request": request, "source_field": embedding.source}
        return Response({
            "id": str(product.pk),
            "embedding_status": getattr(product, embedding.status_name),
            "results": item_serializer(results, many=True, context=context).data,
        })


def _checked_limit(value: int | None) -> int:
    limit = reco_settings.DEFAULT_LIMIT if value is None else value
    if limit > reco_settings.MAX_LIMIT:
        message = f"Ensure this value is less than or equal to {reco_settings.MAX_LIMIT}."
        raise serializers.ValidationError({"limit": [message]})
    return limit


class PhotoSearchView(APIView):
    """``POST search/`` (multipart ``image``): the products that look like the photo.

    Optional form fields: ``limit``, ``filter_by_predicted_category``, and the fields listed
    in ``SEARCH_FILTERS`` (e.g. ``in_stock=true``). A photo that cannot be used is a 400
    with a message; no worker answering (``QUERY_EMBEDDING="worker"``) is a 503.
    Only uploaded bytes are accepted: the server never fetches a URL.
    """

    parser_classes = [MultiPartParser, FormParser]

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
            try:
                if isinstance(field, models.BooleanField):  # true/false/1/0/yes/no
                    found[name] = serializers.BooleanField().run_validation(data[name])
                else:
                    found[name] = field.to_python(data[name])
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({name: exc.detail}) from None
            except DjangoValidationError as exc:
                raise serializers.ValidationError({name: exc.messages}) from None
        return found

    @extend_schema(request={"multipart/form-data": PhotoSearchRequestSerializer},
                   responses={200: PhotoSearchResponseSerializer})
    def post(self, request: Request) -> Response:
        """Search the catalog with the uploaded photo."""
        params = PhotoSearchRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        limit = _checked_limit(params.validated_data.get("limit"))
        model = product_model()
        filters = self.filters(request.data, model)
        try:
            found = search_by_photo(
                params.validated_data["image"], self.get_queryset(), limit=limit,
                filter_by_predicted_category=params.validated_data["filter_by_predicted_category"],
                filters=filters)
        except ImageError as exc:
            return Response({"image": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        except SearchUnavailable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        context = {"request": request, "source_field": get_embedding_field(model).source}
        return Response({
            "predicted_category": (CategorySerializer(found.category).data
                                   if found.category and found.category.category else None),
            "results": reco_settings.SIMILAR_SERIALIZER(found.results, many=True,
                                                        context=context).data,
            "timings_ms": {k: round(v, 1) for k, v in found.timings_ms.items()},
        })
