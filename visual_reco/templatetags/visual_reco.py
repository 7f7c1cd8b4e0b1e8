"""Template tags: ``{% load visual_reco %}{% visually_similar product limit=8 %}``."""

from __future__ import annotations

from typing import Any

from django import template
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse

from visual_reco.conf import reco_settings
from visual_reco.embedders import get_embedder
from visual_reco.feedback.events import serving, token_for
from visual_reco.registry import get_embedding_field
from visual_reco.result_cache import similar_products

register = template.Library()
SURFACE = "similar"


@register.simple_tag(takes_context=True)
def visually_similar(context: template.Context, obj: Any, limit: int | None = None,
                     queryset: Any = None, template_name: str | None = None,
                     title: str = "You may also like", field: str | None = None) -> str:
    """Render the products that look like ``obj`` with ``visual_reco/similar.html``.

    ``queryset`` restricts the candidates (e.g. ``in_stock`` products); ``field`` picks the
    embedding to compare (default: the model's first); the template can be overridden per
    call with ``template_name`` or globally in your templates directory.
    """
    model = type(obj)
    embedding = get_embedding_field(model, field)
    candidates = queryset if queryset is not None else model._default_manager.all()
    request = context.get("request")
    tracked = serving(request, SURFACE) if _events_url() else None
    products = similar_products(obj, candidates, limit, field=embedding.name)
    token = token_for(tracked, SURFACE, obj.pk, products,
                      get_embedder(embedding.embedder).fingerprint)
    return render_to_string(
        template_name or reco_settings.SIMILAR_TEMPLATE,
        {"source": obj, "products": products, "title": title, "image_field": embedding.source,
         "status": getattr(obj, embedding.status_name),
         "tracking": token and {"token": token, "events_url": _events_url(),
                                "new_visitor": tracked.new_visitor_id,
                                "cookie": reco_settings.FEEDBACK["VISITOR_COOKIE"]}},
        request=request,
    )


def _events_url() -> str | None:
    """The events endpoint, when the project includes visual_reco's API URLs."""
    try:
        return reverse("visual_reco:events")
    except NoReverseMatch:
        return None


@register.filter
def field_file(obj: Any, name: str) -> Any:
    """``obj|field_file:"image"``: the file of a field named at run time."""
    return getattr(obj, name, None)
