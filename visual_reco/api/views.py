"""DRF views: similar products for a product."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.shortcuts import get_object_or_404
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from visual_reco.api.serializers import SimilarQuerySerializer, SimilarResponseSerializer
from visual_reco.conf import reco_settings
from visual_reco.fields import embedded_models, get_embedding_field
from visual_reco.query import visual

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
        limit = params.validated_data.get("limit", reco_settings.DEFAULT_LIMIT)
        if limit > reco_settings.MAX_LIMIT:
            message = f"Ensure this value is less than or equal to {reco_settings.MAX_LIMIT}."
            raise serializers.ValidationError({"limit": [message]})
        model = product_model()
        product = get_object_or_404(model._default_manager.all(), pk=pk)
        embedding = get_embedding_field(model)
        results = visual(self.get_queryset()).visually_similar(product, limit=limit)
        item_serializer = reco_settings.SIMILAR_SERIALIZER
        context = {"request": request, "source_field": embedding.source}
        return Response({
            "id": str(product.pk),
            "embedding_status": getattr(product, embedding.status_name),
            "results": item_serializer(results, many=True, context=context).data,
        })
