"""Serializers for the visual_reco API."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rest_framework import serializers

from visual_reco.conf import reco_settings
from visual_reco.reasons import colour_names, reason
from visual_reco.text_search import TextQueryError, clean_text

# Products a picked-for-you request may ask to leave out (the page's other lists).
MAX_EXCLUDE = 100


class SimilarItemSerializer(serializers.Serializer):
    """One recommended object: id, name, page and image URLs, similarity score; when ranked
    by a blend of aspects (a mode), each aspect's cosine similarity and the ``reason`` it is
    shown (`visual_reco.reasons`, in the request's language; the context's ``mode`` and
    ``source_colours``, the product's own colour names); and
    the main colour names of its stored colour vector (the view's ``colour_field``), when it
    has one; for a gallery field, the ``matching_image`` of the product. `similar_items`
    gives the same representation without DRF's per-field work."""

    id = serializers.CharField(source="pk", read_only=True)
    name = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()
    image = serializers.SerializerMethodField()
    # Null for a product that is not ranked by looks (a best seller picked for a visitor).
    score = serializers.FloatField(source="visual_score", read_only=True, allow_null=True)
    aspect_scores = serializers.DictField(child=serializers.FloatField(allow_null=True),
                                          read_only=True, allow_null=True, default=None)
    colours = serializers.SerializerMethodField()
    reason = serializers.SerializerMethodField()
    matching_image = serializers.SerializerMethodField()

    def get_colours(self, obj: Any) -> list[str] | None:
        """The 1-3 main colour names (`visual_reco.colour.dominant_colours`), or null."""
        return self._colour_names(obj)

    def get_reason(self, obj: Any) -> str | None:
        """Why it is shown, e.g. "same shape, similar colour: navy"; null when it was not
        ranked by a blend."""
        return _reason(obj, self._colour_names(obj), self.context)

    def _colour_names(self, obj: Any) -> list[str] | None:
        """`colour_names` of ``obj``, computed once for its ``colours`` and its ``reason``
        (the fields of one row are serialised one after the other)."""
        named = getattr(self, "_named", None)
        if named is None or named[0] is not obj:
            named = self._named = (obj, colour_names(obj, self.context.get("colour_field")))
        return named[1]

    def get_name(self, obj: Any) -> str:
        """``obj.name`` when it exists, else ``str(obj)``."""
        return _name(obj)

    def get_url(self, obj: Any) -> str | None:
        """Absolute URL of the object's page (``get_absolute_url``), if it has one."""
        return _url(obj, self.context.get("request"))

    def get_image(self, obj: Any) -> str | None:
        """Absolute URL of the source image: the matching image's in a gallery search."""
        return _image(obj, self.context["source_field"], self.context.get("request"))

    def get_matching_image(self, obj: Any) -> dict[str, Any] | None:
        """In a search of a gallery field (a product's several photos), the photo of the
        product that matched best: ``{"id", "url"}``; null otherwise."""
        return _matching_image(obj, self.context["source_field"], self.context.get("request"))


def _name(obj: Any) -> str:
    return str(getattr(obj, "name", obj))


def _absolute(url: str, request: Any) -> str:
    return request.build_absolute_uri(url) if request else url


def _url(obj: Any, request: Any) -> str | None:
    if not hasattr(obj, "get_absolute_url"):
        return None
    return _absolute(obj.get_absolute_url(), request)


def _matching_image(obj: Any, source_field: str, request: Any) -> dict[str, Any] | None:
    image = getattr(obj, "visual_image", None)
    if image is None:
        return None
    found = getattr(image, source_field, None)
    return {"id": str(image.pk), "url": _absolute(found.url, request) if found else None}


def _image(obj: Any, source_field: str, request: Any,
           match: dict[str, Any] | None = None) -> str | None:
    match = match or _matching_image(obj, source_field, request)
    if match is not None:
        return match["url"]
    image = getattr(obj, source_field, None)
    return _absolute(image.url, request) if image else None


def _reason(obj: Any, colours: list[str] | None, context: dict[str, Any]) -> str | None:
    scores = getattr(obj, "aspect_scores", None)
    if scores is None:
        return None
    return reason(scores, colours, context.get("mode"),
                  source_colours=context.get("source_colours"))


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _item(obj: Any, context: dict[str, Any]) -> dict[str, Any]:
    """What `SimilarItemSerializer` makes of ``obj``, key for key and value for value."""
    request = context.get("request")
    source_field = context["source_field"]
    pk = obj.pk
    scores = getattr(obj, "aspect_scores", None)
    colours = colour_names(obj, context.get("colour_field"))
    match = _matching_image(obj, source_field, request)
    return {
        "id": None if pk is None else str(pk),
        "name": _name(obj),
        "url": _url(obj, request),
        "image": _image(obj, source_field, request, match),
        "score": _float(getattr(obj, "visual_score", None)),
        "aspect_scores": (None if scores is None else
                          {str(aspect): _float(score) for aspect, score in scores.items()}),
        "colours": colours,
        "reason": _reason(obj, colours, context),
        "matching_image": match,
    }


def similar_items(rows: Iterable[Any], context: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``results`` of a response: ``rows`` as ``SIMILAR_SERIALIZER`` represents them
    (``context`` as that serializer's). The default, `SimilarItemSerializer`, is applied
    without DRF's field machinery (building the serializer and calling each field of each
    row was the largest part of a cached list's time); another serializer is used as is."""
    serializer = reco_settings.SIMILAR_SERIALIZER
    if serializer is not SimilarItemSerializer:
        return serializer(rows, many=True, context=context).data
    return [_item(row, context) for row in rows]


class SimilarResponseSerializer(serializers.Serializer):
    """The similar-products response: the query object, its embedding status, the results,
    and the token that events about them send back (null when the visitor is not tracked)."""

    id = serializers.CharField()
    embedding_status = serializers.CharField()
    results = SimilarItemSerializer(many=True)
    token = serializers.CharField(allow_null=True)


class SimilarQuerySerializer(serializers.Serializer):
    """Query parameters of the similar-products endpoint: how many, which embedding, which
    mode (``ASPECT_MODES``) ranks them, and whether to keep one product per colour variant
    group (``collapse``: true/false, 1/0)."""

    limit = serializers.IntegerField(required=False, min_value=1)
    field = serializers.CharField(required=False, max_length=100)
    mode = serializers.CharField(required=False, max_length=100)
    collapse = serializers.BooleanField(required=False, default=False)


class PicksQuerySerializer(serializers.Serializer):
    """Query parameters of the picked-for-you endpoint: how many, which embedding, the
    page's product and category, and products the page already shows."""

    limit = serializers.IntegerField(required=False, min_value=1)
    field = serializers.CharField(required=False, max_length=100)
    category = serializers.CharField(required=False, allow_blank=True, max_length=1000)
    product = serializers.CharField(required=False, max_length=255)
    exclude = serializers.CharField(required=False, allow_blank=True, max_length=4000)

    def validate_exclude(self, value: str) -> list[str]:
        """Comma-separated primary keys, at most ``MAX_EXCLUDE``."""
        ids = [part.strip() for part in value.split(",") if part.strip()]
        if len(ids) > MAX_EXCLUDE:
            raise serializers.ValidationError(f"At most {MAX_EXCLUDE} products.")
        return ids


class PicksResponseSerializer(serializers.Serializer):
    """Products picked for the visitor, how they were picked (``taste``: near the visitor's
    taste; ``best_sellers``: the best-converting products), and the attribution token."""

    source = serializers.ChoiceField(["taste", "best_sellers"])
    results = SimilarItemSerializer(many=True)
    token = serializers.CharField(allow_null=True)


class PhotoSearchRequestSerializer(serializers.Serializer):
    """A search by photo, words or both: the photo, the words (``TEXT_SEARCH``), how many
    results, whether to stay in the photo's category, and which embedding field to
    compare."""

    image = serializers.FileField(required=False, allow_empty_file=True, use_url=False)
    text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=True,
                                 help_text="Words to search for with the photo, or alone "
                                 "(e.g. red, organic, a brand); at most TEXT_SEARCH "
                                 "MAX_LENGTH characters.")
    limit = serializers.IntegerField(required=False, min_value=1)
    filter_by_predicted_category = serializers.BooleanField(required=False, default=False)
    field = serializers.CharField(required=False, max_length=100)

    def validate_text(self, value: str) -> str:
        """The words, within ``TEXT_SEARCH["MAX_LENGTH"]`` and without NUL characters."""
        try:
            return clean_text(value)
        except TextQueryError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """A photo, words, or both."""
        if attrs.get("image") is None and not attrs.get("text"):
            raise serializers.ValidationError("Send a photo (image), words (text), or both.")
        return attrs


class SearchItemSerializer(SimilarItemSerializer):
    """One search result: as a similar product, and whether its words matched the search's
    (null when no words were searched for). ``score`` is the visual similarity, null for a
    product found by its words alone."""

    matched_text = serializers.BooleanField(read_only=True, allow_null=True)


def with_matches(items: list[dict[str, Any]], rows: Iterable[Any]) -> list[dict[str, Any]]:
    """``items`` (serialised ``rows``) with each row's ``matched_text``."""
    for item, row in zip(items, rows, strict=True):
        item["matched_text"] = getattr(row, "matched_text", None)
    return items


class CategorySerializer(serializers.Serializer):
    """A predicted category and its confidence."""

    name = serializers.CharField(source="category")
    confidence = serializers.FloatField()
    method = serializers.CharField()


class PhotoSearchResponseSerializer(serializers.Serializer):
    """Search results, what was searched (``photo``, ``text``), the photo's predicted
    category and where the time went."""

    predicted_category = CategorySerializer(allow_null=True)
    photo = serializers.BooleanField()
    text = serializers.CharField(allow_null=True)
    results = SearchItemSerializer(many=True)
    timings_ms = serializers.DictField(child=serializers.FloatField())
    token = serializers.CharField(allow_null=True)


class EventSerializer(serializers.Serializer):
    """One shopper action on a served list (for the schema; `feedback.events` validates)."""

    type = serializers.ChoiceField(["impression", "click", "add_to_cart", "favorite",
                                    "dismiss"])
    event_id = serializers.CharField(max_length=64)
    token = serializers.CharField(max_length=4096)
    product = serializers.CharField(max_length=64)
    position = serializers.IntegerField(required=False, min_value=1)
    ts = serializers.IntegerField(help_text="milliseconds since 1970")
    quantity = serializers.IntegerField(required=False, min_value=1, max_value=1000)


class EventBatchSerializer(serializers.Serializer):
    """A batch of events, stored whole or refused whole."""

    events = EventSerializer(many=True)


class EventBatchResultSerializer(serializers.Serializer):
    """How many events of a batch were stored, and how many had been stored before."""

    stored = serializers.IntegerField()
    duplicates = serializers.IntegerField()
