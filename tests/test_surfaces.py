"""What shop developers and staff see: the template tag, the API, the schema, the admin."""

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.template import Context, Template
from django.test import RequestFactory
from django.utils import translation
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer

from tests.celery_app import app as celery_app
from tests.conftest import upload
from tests.test_reasons import write_mo
from tests.testapp.models import Item
from visual_reco.api.serializers import SimilarItemSerializer, similar_items
from visual_reco.colour import DIMENSIONS
from visual_reco.models import EmbeddingStatus
from visual_reco.registry import get_embedding_field

pytestmark = pytest.mark.django_db


def render(template: str, **context) -> str:
    request = RequestFactory().get("/")
    return Template("{% load visual_reco %}" + template).render(
        Context({"request": request, **context}))


def test_template_tag_renders_neighbours_in_order(items):
    html = render("{% visually_similar item limit=3 %}", item=items[0])
    assert html.count('class="visual-reco__item"') == 3
    positions = [html.index(f">item {i}<") for i in (1, 2, 3)]
    assert positions == sorted(positions)
    assert ">item 0<" not in html
    assert items[1].photo.url in html


def test_template_tag_takes_a_queryset_and_template(items):
    html = render("{% visually_similar item limit=5 queryset=qs %}", item=items[0],
                  qs=Item.objects.filter(in_stock=True))
    assert ">item 2<" not in html
    assert html.count('class="visual-reco__item"') == 4


def test_template_tag_explains_a_pending_product(items, photos):
    item = Item.objects.create(name="new", photo=upload(photos[0].path))
    html = render("{% visually_similar item %}", item=item)
    assert "pending" in html
    assert 'class="visual-reco__item"' not in html


def test_api_returns_similar_products(client, items):
    response = client.get(f"/api/visual-reco/products/{items[0].pk}/similar/?limit=3")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(items[0].pk)
    assert body["embedding_status"] == "ready"
    assert [r["id"] for r in body["results"]] == [str(items[i].pk) for i in (1, 2, 3)]
    first = body["results"][0]
    assert first["name"] == "item 1"
    assert first["image"].startswith("http://testserver/media/items/")
    assert first["url"] == f"http://testserver/items/{items[1].pk}/"
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= 1


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "101"])
def test_api_rejects_bad_limits(client, items, limit):
    response = client.get(f"/api/visual-reco/products/{items[0].pk}/similar/?limit={limit}")
    assert response.status_code == 400
    assert "limit" in response.json()


def test_api_unknown_product_is_404(client, items):
    assert client.get("/api/visual-reco/products/987654/similar/").status_code == 404


@pytest.mark.parametrize("pk", ["abc", "1%20OR%201=1", "%00", "1%00", "1.0", "1'", "-1", "0x1",
                                "99999999999999999999", "%C3%A9", "1e3"])
def test_api_malformed_product_id_is_404_not_500(client, items, pk):
    response = client.get(f"/api/visual-reco/products/{pk}/similar/")
    assert response.status_code == 404
    assert "detail" in response.json() and "Traceback" not in response.content.decode()


def test_openapi_schema_describes_the_endpoint(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    operation = schema["paths"]["/api/visual-reco/products/{id}/similar/"]["get"]
    assert any(p["name"] == "limit" for p in operation["parameters"])


@pytest.fixture
def staff_client(client):
    user = get_user_model().objects.create_superuser("staff", "staff@example.com", "pw")
    client.force_login(user)
    return client


def test_admin_shows_status_column_and_filter(staff_client, items):
    Item.objects.filter(pk=items[3].pk).update(embedding_status="failed",
                                               embedding_error="The file is empty (0 bytes).")
    page = staff_client.get("/admin/testapp/item/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Image embedding" in html and "The file is empty (0 bytes)." in html
    failed = staff_client.get("/admin/testapp/item/?embedding_status__exact=failed")
    assert failed.context["cl"].result_count == 1


def test_admin_change_form_shows_the_error(staff_client, items):
    Item.objects.filter(pk=items[3].pk).update(embedding_status="failed",
                                               embedding_error="The image is too large.")
    page = staff_client.get(f"/admin/testapp/item/{items[3].pk}/change/")
    assert "The image is too large." in page.content.decode()


def test_admin_action_queues_and_reports_counts(staff_client, items, monkeypatch):
    sent = []
    monkeypatch.setattr(celery_app, "send_task", lambda name, args, **kwargs: sent.append(args[2]))
    no_photo = Item.objects.create(name="no photo")
    selected = [items[0].pk, items[1].pk, no_photo.pk]
    response = staff_client.post("/admin/testapp/item/", {
        "action": "recompute_embeddings", "_selected_action": selected}, follow=True)
    messages = [str(m) for m in response.context["messages"]]
    assert messages == ["Queued 2 objects for embedding in 1 task; 1 without an image were "
                        "skipped."]
    assert sorted(sent[0]) == sorted(selected[:2])
    assert Item.objects.get(pk=items[0].pk).embedding_status == EmbeddingStatus.PENDING


def test_admin_action_with_broker_down_warns_and_keeps_rows_pending(staff_client, items,
                                                                   monkeypatch):
    def down(*args, **kwargs):
        raise ConnectionRefusedError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr(celery_app, "send_task", down)
    response = staff_client.post("/admin/testapp/item/", {
        "action": "recompute_embeddings", "_selected_action": [items[0].pk]}, follow=True)
    (message,) = [str(m) for m in response.context["messages"]]
    assert "task queue is unavailable" in message and "stay pending" in message
    assert Item.objects.get(pk=items[0].pk).embedding_status == EmbeddingStatus.PENDING


def test_plain_querysets_work_in_the_tag(items):
    from django.db.models import QuerySet

    plain = QuerySet(model=Item).filter(in_stock=True)
    html = render("{% visually_similar item limit=5 queryset=qs %}", item=items[0], qs=plain)
    assert html.count('class="visual-reco__item"') == 4


def test_the_similar_endpoint_is_rate_limited_per_client(client, items, settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "THROTTLE_RATES": {"similar": "3/min"},
                            "THROTTLE_CACHE": "shared"}
    caches["shared"].clear()
    url = f"/api/visual-reco/products/{items[0].pk}/similar/?limit=2"
    try:
        assert [client.get(url).status_code for _ in range(3)] == [200, 200, 200]
        refused = client.get(url)
        assert refused.status_code == 429
        assert 0 < int(refused["Retry-After"]) <= 60
        other = client.get(url, REMOTE_ADDR="127.0.0.2")  # another client has its own count
        assert other.status_code == 200
    finally:
        caches["shared"].clear()


class ItemWithCategory(SimilarItemSerializer):
    """A shop's own item serializer: the default's fields and one more."""

    category = serializers.CharField()


def test_results_without_drf_are_the_serializers_to_the_byte(items, settings, tmp_path):
    write_mo(tmp_path / "xx" / "LC_MESSAGES" / "django.mo", {
        "same colour: %(colour)s": "%(colour)s, couleur identique",
        "reason\x04%(first)s, %(second)s": "%(second)s ; %(first)s"})
    settings.LOCALE_PATHS = [str(tmp_path)]
    rows = list(Item.objects.defer("embedding").order_by("pk"))
    colour = get_embedding_field(Item).colour_attname
    palette = np.zeros(DIMENSIONS, dtype=np.float32)
    for index, row in enumerate(rows):  # every branch: scores, none, null parts, colours
        row.visual_score = [0.875, None, np.float64(0.5), 1, 0.25, 0.125][index]
        if index % 3:
            row.aspect_scores = {"shape": 0.9 - index / 10, "colour": None if index == 2
                                 else np.float32(0.3 + index / 10)}
        if index % 2:
            palette[:] = 0
            palette[index * 7 % len(palette)] = 1.0
            row.__dict__[colour] = palette.copy()
    rows[3].visual_image = rows[4]  # as a gallery search gives the photo that matched
    request = RequestFactory().get("/")
    for context in ({"request": request, "source_field": "photo", "colour_field": colour,
                     "mode": "same_colour", "source_colours": ["red"]},
                    {"request": request, "source_field": "photo", "colour_field": colour},
                    {"source_field": "photo", "mode": None}):
        for language in ("en", "xx"):
            with translation.override(language):
                expected = JSONRenderer().render(
                    SimilarItemSerializer(rows, many=True, context=context).data)
                assert JSONRenderer().render(similar_items(rows, context)) == expected
                assert b'"reason":"' in expected and b'"score":null' in expected
                assert f'"matching_image":{{"id":"{rows[4].pk}"'.encode() in expected


def test_a_shops_own_item_serializer_still_serialises_the_results(client, items, settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO,
                            "SIMILAR_SERIALIZER": "tests.test_surfaces.ItemWithCategory"}
    response = client.get(f"/api/visual-reco/products/{items[0].pk}/similar/?limit=3")
    assert [row["category"] for row in response.json()["results"]] == ["cups", "plates",
                                                                       "cups"]
