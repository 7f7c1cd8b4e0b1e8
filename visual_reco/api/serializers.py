"""Serializers for the visual_reco API."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from visual_reco.reasons import colour_names, reason

# Products a picked-for-you request may ask to leave out (the page's other lists).
MAX_EXCLUDE = 100


class SimilarItemSerializer(serializers.Serializer):
    """One recommended object: id, name, page and image URLs, similarity score; when ranked
    by a blend of aspects (a mode), each aspect's cosine similarity and the ``reason`` it is
    shown (`visual_reco.reasons`, in the request's language; the context's ``mode`` and
    ``source_colours``, the product's own colour names); and
    the main colour names of its stored colour vector (the view's ``colour_field``), when it
    has one; for a gallery field, the ``matching_image`` of the product."""

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
        scores = getattr(obj, "aspect_scores", None)
        if scores is None:
            return None
        return reason(scores, self._colour_names(obj), self.context.get("mode"),
                      source_colours=self.context.get("source_colours"))

    def _colour_names(self, obj: Any) -> list[str] | None:
        """`colour_names` of ``obj``, computed once for its ``colours`` and its ``reason``
        (the fields of one row are serialised one after the other)."""
        named = getattr(self, "_named", None)
        if named is None or named[0] is not obj:
            named = self._named = (obj, colour_names(obj, self.context.get("colour_field")))
        return named[1]

    def get_name(self, obj: Any) -> str:
        """``obj.name`` when it exists, else ``str(obj)``."""
        return str(getattr(obj, "name", obj))

    def get_url(self, obj: Any) -> str | None:
        """Absolute URL of the object's page (``get_absolute_url``), if it has one."""
        if not hasattr(obj, "get_absolute_url"):
            return None
        return self._absolute(obj.get_absolute_url())

    def get_image(self, obj: Any) -> str | None:
        """Absolute URL of the source image: the matching image's in a gallery search."""
        match = self.get_matching_image(obj)
        if match is not None:
            return match["url"]
        image = getattr(obj, self.context["source_field"], None)
        return self._absolute(image.url) if image else None

    def get_matching_image(self, obj: Any) -> dict[str, Any] | None:
        """In a search of a gallery field (a product's several photos), the photo of the
        product that matched best: ``{"id", "url"}``; null otherwise."""
        image = getattr(obj, "visual_image", None)
        if image is None:
            return None
        found = getattr(image, self.context["source_field"], None)
        return {"id": str(image.pk), "url": self._absolute(found.url) if found else None}

    def _absolute(self, url: str) -> str:
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request else url


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
    """A photo search: the photo, how many results, whether to stay in its category, and
    which embedding field to compare."""

    image = serializers.FileField(allow_empty_file=True, use_url=False)
    limit = serializers.IntegerField(required=False, min_value=1)
    filter_by_predicted_category = serializers.BooleanField(required=False, default=False)
    field = serializers.CharField(required=False, max_length=100)


class CategorySerializer(serializers.Serializer):
    """A predicted category and its confidence."""

    name = serializers.CharField(source="category")
    confidence = serializers.FloatField()
    method = serializers.CharField()


class PhotoSearchResponseSerializer(serializers.Serializer):
    """Photo search results, the predicted category and where the time went."""

    predicted_category = CategorySerializer(allow_null=True)
    results = SimilarItemSerializer(many=True)
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
