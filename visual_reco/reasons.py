"""Why a result is shown: a short, translatable caption from its per-aspect scores and its
dominant colour, e.g. "same shape, similar colour: navy" or "same colour: navy".

Each aspect's cosine is put in a level, "same", "similar" or "other", by the thresholds of
``REASON_THRESHOLDS`` (measured on Luma photo pairs: demo_shop/bench/reason_thresholds.py,
docs/QUALITY.md). The caption names the aspect that finds a mode's candidates first (colour
for ``same_colour``, shape otherwise), leaving out a shape that is not at least similar when
colour leads. Every phrase is a gettext message with named placeholders, and the palette's
colour names (`visual_reco.colour.PALETTE`) are messages in the "colour" context, so that a
translation may reorder and inflect them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from django.core.signals import setting_changed
from django.utils.functional import Promise
from django.utils.translation import get_language, gettext, pgettext, pgettext_lazy

from visual_reco.colour import DIMENSIONS, dominant_colours
from visual_reco.conf import reco_settings
from visual_reco.modes import SHAPE, blend_for
from visual_reco.query import to_array
from visual_reco.registry import is_gallery

__all__ = ["COLOUR", "COLOUR_NAMES", "LEVELS", "colour_label", "colour_names", "level",
           "reason", "reason_for"]

COLOUR = "colour"
LEVELS = ("same", "similar", "other")

# The names of `visual_reco.colour.PALETTE` as shown to shoppers; the keys stay the API's
# `colours` values.
COLOUR_NAMES: dict[str, Promise] = {
    "black": pgettext_lazy("colour", "black"),
    "grey": pgettext_lazy("colour", "grey"),
    "white": pgettext_lazy("colour", "white"),
    "navy": pgettext_lazy("colour", "navy"),
    "blue": pgettext_lazy("colour", "blue"),
    "light blue": pgettext_lazy("colour", "light blue"),
    "teal": pgettext_lazy("colour", "teal"),
    "green": pgettext_lazy("colour", "green"),
    "olive": pgettext_lazy("colour", "olive"),
    "yellow": pgettext_lazy("colour", "yellow"),
    "orange": pgettext_lazy("colour", "orange"),
    "red": pgettext_lazy("colour", "red"),
    "maroon": pgettext_lazy("colour", "maroon"),
    "pink": pgettext_lazy("colour", "pink"),
    "purple": pgettext_lazy("colour", "purple"),
    "brown": pgettext_lazy("colour", "brown"),
    "beige": pgettext_lazy("colour", "beige"),
}


def colour_label(name: str) -> str:
    """The shopper-facing (translated) name of a palette colour; an unknown name as it is."""
    label = COLOUR_NAMES.get(name)
    return name if label is None else str(label)


def level(aspect: str, score: float | None,
          thresholds: Mapping[str, Mapping[str, float]] | None = None) -> str | None:
    """"same", "similar" or "other" for an aspect's cosine (None without a score)."""
    if score is None:
        return None
    limits = (reco_settings.REASON_THRESHOLDS if thresholds is None else thresholds)[aspect]
    if score >= limits["same"]:
        return "same"
    return "similar" if score >= limits["similar"] else "other"


def _shape_phrase(found: str) -> str:
    if found == "same":
        return gettext("same shape")
    if found == "similar":
        return gettext("similar shape")
    return gettext("other shape")


def _colour_phrase(found: str, name: str | None) -> str:
    if name is None:
        if found == "same":
            return gettext("same colour")
        if found == "similar":
            return gettext("similar colour")
        return gettext("other colour")
    if found == "same":
        return gettext("same colour: %(colour)s") % {"colour": name}
    if found == "similar":
        return gettext("similar colour: %(colour)s") % {"colour": name}
    return gettext("other colour: %(colour)s") % {"colour": name}


def reason(aspect_scores: Mapping[str, float | None] | None,
           colours: Sequence[str] | None = None, mode: str | None = None, *,
           source_colours: Sequence[str] | None = None,
           thresholds: Mapping[str, Mapping[str, float]] | None = None) -> str | None:
    """The caption of a result ranked by a blend: its ``aspect_scores`` ({aspect: cosine},
    None when it was not ranked by a blend), its dominant ``colours`` (palette names, main
    first) and the ``mode`` that ranked it (None: ``DEFAULT_MODE``). None when there is
    nothing to say. ``thresholds`` default to ``REASON_THRESHOLDS``.

    A result whose main colour has the name of the product's own main colour
    (``source_colours``) is never said to be of another colour: "other colour: green" under
    a green product reads as a mistake, whatever the shades' cosine. One whose main colour
    has another name is "similar" only from the colour threshold ``similar_other_name``
    (default: ``similar``): a pale colour shares its histogram bins with white and grey."""
    if aspect_scores is None:
        return None
    blend = blend_for(mode, default=True)
    colour_leads = blend is not None and blend.lead_aspect == COLOUR
    shape = level(SHAPE, aspect_scores.get(SHAPE), thresholds)
    colour = level(COLOUR, aspect_scores.get(COLOUR), thresholds)
    if colours and source_colours:
        if colour == "other" and colours[0] == source_colours[0]:
            colour = "similar"
        elif colour == "similar" and colours[0] != source_colours[0]:
            limits = (reco_settings.REASON_THRESHOLDS if thresholds is None
                      else thresholds)[COLOUR]
            if aspect_scores[COLOUR] < limits.get("similar_other_name", limits["similar"]):
                colour = "other"
    return _caption(get_language(), colour_leads, shape, colour,
                    colours[0] if colours else None)


# The captions are few (levels x palette names x languages) and each took several gettext
# calls; kept until a setting that changes translations does (as Django drops its catalogs).
@functools.lru_cache(maxsize=4096)
def _caption(language: str | None, colour_leads: bool, shape: str | None, colour: str | None,
             colour_name: str | None) -> str | None:
    """The caption of `reason`, in ``language`` (the active one: its key in the cache)."""
    name = colour_label(colour_name) if colour_name is not None else None
    phrases = []
    if colour_leads and colour is not None:
        phrases.append(_colour_phrase(colour, name))
        if shape in ("same", "similar"):
            phrases.append(_shape_phrase(shape))
    else:
        if shape is not None:
            phrases.append(_shape_phrase(shape))
        if colour is not None:
            phrases.append(_colour_phrase(colour, name))
    if not phrases:
        return None
    if len(phrases) == 1:
        return phrases[0]
    return pgettext("reason", "%(first)s, %(second)s") % {"first": phrases[0],
                                                          "second": phrases[1]}


def _forget_captions(setting: str, **kwargs: Any) -> None:
    if setting in {"LANGUAGES", "LANGUAGE_CODE", "LOCALE_PATHS", "INSTALLED_APPS"}:
        _caption.cache_clear()


setting_changed.connect(_forget_captions, dispatch_uid="visual_reco.reasons.captions")


def colour_names(obj: Any, column: str | None) -> list[str] | None:
    """The 1-3 main palette names of ``obj``'s stored colour vector in ``column``
    (`visual_reco.colour.dominant_colours`), or None when it has none."""
    return _vector_names(obj.__dict__.get(column) if column else None)


def own_colour_names(product: Any, embedding: Any) -> list[str] | None:
    """`colour_names` of the product results are similar to, compared on ``embedding``:
    its own colour vector, or for a gallery field its first photo's with one (the photo a
    product page shows first; the product row has no colour of its own)."""
    column = embedding.colour_attname
    if column is None:
        return None
    if not is_gallery(embedding, type(product)):
        return colour_names(product, column)
    photos = embedding.model._default_manager.filter(**{embedding.product: product.pk})
    first = (photos.exclude(**{f"{column}__isnull": True})
             .order_by(*(embedding.model._meta.ordering or ["pk"]))
             .values_list(column, flat=True)[:1])
    return _vector_names(first[0] if first else None)


def _vector_names(value: Any) -> list[str] | None:
    vector = to_array(value)
    if vector is None or len(vector) != DIMENSIONS:
        return None
    return list(_names_of(vector.tobytes()))


# A pure function of the stored vector, asked for again with every list a product is in.
@functools.lru_cache(maxsize=8192)
def _names_of(vector: bytes) -> tuple[str, ...]:
    """The dominant colours' names of a float32 colour vector given as its bytes."""
    return tuple(name for name, _ in dominant_colours(np.frombuffer(vector, dtype=np.float32)))


def reason_for(obj: Any, column: str | None, mode: str | None = None, *,
               source_colours: Sequence[str] | None = None) -> str | None:
    """`reason` of a result row: its ``aspect_scores`` (set by a blended search) and the
    colour names of its vector in ``column``; ``source_colours``: the product's own
    (`colour_names` of the product the results are similar to)."""
    scores = getattr(obj, "aspect_scores", None)
    if scores is None:
        return None
    return reason(scores, colour_names(obj, column), mode, source_colours=source_colours)
