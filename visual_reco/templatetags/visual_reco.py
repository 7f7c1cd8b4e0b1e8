"""Template tags: ``{% load visual_reco %}{% visually_similar product limit=8 %}``,
``{% picked_for_you limit=8 category=category %}``."""

from __future__ import annotations

from typing import Any

from django import template
from django.db import models
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse

from visual_reco.conf import reco_settings
from visual_reco.feedback.events import Serving, serving, token_for
from visual_reco.feedback.picks import note_shown, picks_for
from visual_reco.feedback.similar import ranked_similar
from visual_reco.fields import ImageEmbeddingField
from visual_reco.gallery import status_of
from visual_reco.query import colour_attribute
from visual_reco.reasons import own_colour_names, reason_for
from visual_reco.registry import get_embedding_field, product_model

register = template.Library()
SURFACE = "similar"
PICKS_SURFACE = "picked_for_you"


@register.simple_tag(takes_context=True)
def visually_similar(context: template.Context, obj: Any, limit: int | None = None,
                     queryset: Any = None, template_name: str | None = None,
                     title: str = "You may also like", field: str | None = None,
                     mode: str | None = None, collapse_variants: bool = False,
                     reasons: bool | None = None) -> str:
    """Render the products that look like ``obj`` with ``visual_reco/similar.html``,
    ranked by the visitor's A/B variant (`visual_reco.feedback.similar.ranked_similar`).

    ``queryset`` restricts the candidates (e.g. ``in_stock`` products); ``field`` picks the
    embedding to compare (default: the model's first); ``mode`` says similar in what way (a
    name in ``ASPECT_MODES``, default ``DEFAULT_MODE``; an unknown one raises
    `visual_reco.modes.UnknownMode`); ``collapse_variants`` keeps the best product of each
    ``VARIANT_FIELD`` value; ``reasons`` captions each product with why it is shown
    (`visual_reco.reasons`; default: when a ``mode`` is given), in place of its score. The
    template can be overridden per call with ``template_name`` or globally in your templates
    directory; it gets the ``mode`` too, and each product its ``visual_reason``.
    """
    model = type(obj)
    embedding = get_embedding_field(model, field)
    candidates = queryset if queryset is not None else model._default_manager.all()
    request = context.get("request")
    tracked = serving(request, SURFACE) if _events_url() else None
    products = ranked_similar(obj, candidates, limit, field=embedding.name,
                              variant=tracked.variant if tracked else None, request=request,
                              mode=mode, collapse_variants=bool(collapse_variants))
    note_shown(request, [obj, *products])
    show_reasons = mode is not None if reasons is None else bool(reasons)
    if show_reasons:
        column = colour_attribute(embedding, model)
        own = own_colour_names(obj, embedding)
        for product in products:
            product.visual_reason = reason_for(product, column, mode, source_colours=own)
    return render_to_string(
        template_name or reco_settings.SIMILAR_TEMPLATE,
        {"source": obj, "products": products, "title": title, "image_field": embedding.source,
         "status": status_of(obj, embedding), "mode": mode,
         "show_reasons": show_reasons,
         "tracking": _tracking(tracked, SURFACE, obj.pk, products, embedding)},
        request=request,
    )


@register.simple_tag(takes_context=True)
def picked_for_you(context: template.Context, limit: int | None = None, category: Any = None,
                   queryset: Any = None, template_name: str | None = None,
                   title: str = "Picked for you", field: str | None = None,
                   exclude: Any = None, product: Any = None) -> str:
    """Render the products picked for this visitor (`visual_reco.feedback.picks`) with
    ``PICKS["TEMPLATE"]``, by the strategy of its A/B variant on surface
    ``picked_for_you``; nothing when there is nothing to show.

    ``product`` is the page's product: its look is blended into the visitor's taste, it is
    not shown, and its category is the default ``category`` (a visitor without history gets
    that category's best sellers). ``exclude`` is a product or a list of them not to show;
    what ``{% visually_similar %}`` showed earlier on the page is left out too. ``queryset``
    restricts the candidates (default: the product model's); ``field`` picks the embedding
    (default: the model's first).
    """
    candidates = queryset if queryset is not None else product_model()._default_manager.all()
    embedding = get_embedding_field(candidates.model, field)
    request = context.get("request")
    tracked = serving(request, PICKS_SURFACE) if _events_url() else None
    if exclude is None:
        exclude = []
    elif isinstance(exclude, models.Model | str | int):
        exclude = [exclude]
    picks = picks_for(request, candidates, limit, category=category, field=embedding.name,
                      variant=tracked.variant if tracked else None, exclude=exclude,
                      product=product)
    return render_to_string(
        template_name or reco_settings.PICKS["TEMPLATE"],
        {"products": picks.products, "source": picks.source, "title": title,
         "image_field": embedding.source,
         "tracking": _tracking(tracked, PICKS_SURFACE, picks.source, picks.products,
                               embedding)},
        request=request,
    )


@register.simple_tag(takes_context=True)
def tracked_list(context: template.Context, surface: str, source: Any, products: Any,
                 field: str | None = None) -> dict[str, Any] | None:
    """``{% tracked_list "photo_search" "photo" results as tracking %}``: what a list of
    your own template needs for the widget's script to report it (None when this visitor is
    not tracked). Put ``{% include "visual_reco/tracking_attributes.html" %}`` in its
    ``<section class="visual-reco">``, ``class="visual-reco__item" data-pk data-position``
    on its items, and load ``visual_reco/feedback.js``, as ``visual_reco/similar.html``
    does."""
    products = list(products or [])
    embedding = get_embedding_field(type(products[0]), field) if products else None
    tracked = serving(context.get("request"), surface) if _events_url() else None
    return _tracking(tracked, surface, source, products, embedding)


def _tracking(tracked: Serving | None, surface: str, source: Any, products: list[Any],
              embedding: ImageEmbeddingField | None) -> dict[str, Any] | None:
    """The token and the script's settings for a list served on ``surface``."""
    token = token_for(tracked, surface, source, products, embedding) if products else None
    if token is None:
        return None
    return {"token": token, "events_url": _events_url(), "new_visitor": tracked.new_visitor_id,
            "cookie": reco_settings.FEEDBACK["VISITOR_COOKIE"]}


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


@register.filter
def shown_file(obj: Any, name: str) -> Any:
    """``product|shown_file:"image"``: the photo to show for a result row: the file of the
    matching image of a gallery search (its ``visual_image``), else ``obj``'s own."""
    image = getattr(obj, "visual_image", None)
    return getattr(image if image is not None else obj, name, None)
