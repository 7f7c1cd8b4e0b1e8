"""The field registry: several embedding fields on one model, embedded models that are not
the product (a gallery image with a foreign key), and ``field=`` honoured by every part.

Vectors here are synthetic where the ranking is under test; the real pipeline with two
fields and two models runs in tests/test_pipeline.py.
"""

import io

import numpy as np
import pytest
from django.apps.registry import Apps
from django.contrib.auth import get_user_model
from django.core import checks
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection, models
from django.db.migrations.loader import MigrationLoader
from django.template import Context, Template
from django.test import RequestFactory
from pgvector import HalfVector

from tests.celery_app import app as celery_app
from tests.conftest import upload
from tests.testapp.models import GarmentPhoto, Item, ItemImage, Kit, Look
from visual_reco.classifier import classifier_path
from visual_reco.fields import ImageEmbeddingField
from visual_reco.jobs import reindex, sweep
from visual_reco.models import EmbeddingStatus
from visual_reco.registry import (
    embedded_models,
    embedding_fields,
    get_embedding_field,
    product_model,
)
from visual_reco.result_cache import similar_products

pytestmark = pytest.mark.django_db
DIMS = 2048


@pytest.fixture
def sent(monkeypatch):
    """(model label, field, pks) of every embedding task published."""
    tasks = []
    monkeypatch.setattr(celery_app, "send_task",
                        lambda name, args, **kwargs: tasks.append(tuple(args)))
    return tasks


def test_registry_knows_every_field_in_declaration_order():
    assert set(embedded_models()) == {Item, ItemImage, Look, GarmentPhoto, Kit}
    assert [f.name for f in embedding_fields(Look)] == ["photo_embedding", "detail_embedding"]
    assert get_embedding_field(Look).name == "photo_embedding"  # the first is the default
    assert get_embedding_field(Look, "detail_embedding").source == "detail"
    assert all(f.embedder == "default" for f in embedding_fields(Look))
    with pytest.raises(ImproperlyConfigured, match="photo_embedding, detail_embedding"):
        get_embedding_field(Look, "nope")


def test_historical_models_of_migrations_do_not_register():
    historical = MigrationLoader(connection).project_state().apps.get_model("testapp", "Look")
    assert historical is not Look
    assert embedding_fields(historical) == []
    assert get_embedding_field(Look, "detail_embedding").model is Look


def test_a_field_without_companions_on_a_model_of_another_registry_registers():
    """The benchmarks' unmanaged tables (their own `Apps`, no companion columns) are
    searched through the same field and queryset as a shop's model."""
    meta = type("Meta", (), {"managed": False, "db_table": "elsewhere_rows",
                             "app_label": "elsewhere", "apps": Apps()})
    model = type("ElsewhereRow", (models.Model,), {
        "__module__": __name__, "image": models.CharField(max_length=10),
        "embedding": ImageEmbeddingField(source="image", dimensions=4, with_companions=False),
        "Meta": meta})
    assert get_embedding_field(model).name == "embedding"
    assert [f.name for f in model._meta.fields] == ["id", "image", "embedding"]


def test_each_field_has_its_own_lifecycle(photos, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        look = Look.objects.create(name="a", photo=upload(photos[0].path))
    assert look.photo_embedding_status == EmbeddingStatus.PENDING
    assert look.detail_embedding_status == EmbeddingStatus.NO_IMAGE
    assert sent == [("testapp.Look", "photo_embedding", [look.pk])]
    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        look.detail = upload(photos[1].path)
        look.save()
    assert sent == [("testapp.Look", "detail_embedding", [look.pk])]
    look.refresh_from_db()
    assert look.photo_embedding_status == EmbeddingStatus.PENDING  # untouched


def test_a_child_image_model_is_embedded_on_its_own(photos, sent,
                                                    django_capture_on_commit_callbacks):
    item = Item.objects.create(name="item")
    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        image = ItemImage.objects.create(item=item, image=upload(photos[2].path))
    assert sent == [("testapp.ItemImage", "embedding", [image.pk])]
    assert image.embedding_status == EmbeddingStatus.PENDING


@pytest.fixture
def looks():
    """Five looks whose two embeddings rank the others in opposite orders."""
    rng = np.random.default_rng(5)
    base = rng.random(DIMS)
    made = []
    for i in range(5):
        near = base + rng.random(DIMS) * i * 0.3  # look 0's photo neighbours: 1, 2, 3, 4
        far = base + rng.random(DIMS) * (4 - i) * 0.3 if i else base + rng.random(DIMS) * 0.05
        made.append(Look(name=f"look {i}", photo=f"looks/{i}.jpg", detail=f"looks/d{i}.jpg",
                         photo_embedding=HalfVector(near), detail_embedding=HalfVector(far),
                         photo_embedding_status="ready", detail_embedding_status="ready"))
    return Look.objects.bulk_create(made)


def _names(rows):
    return [r.name for r in rows]


def test_queries_compare_the_named_field(looks):
    source = looks[0]
    assert _names(Look.objects.visually_similar(source, limit=4)) == [
        "look 1", "look 2", "look 3", "look 4"]
    assert _names(Look.objects.visually_similar(source, limit=4, field="detail_embedding")) == [
        "look 4", "look 3", "look 2", "look 1"]
    vector = np.asarray(source.detail_embedding.to_list())
    assert _names(Look.objects.similar_to_vector(vector, 1, field="detail_embedding")) == [
        "look 0"]


def test_tag_and_cache_keep_fields_apart(looks, settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "SIMILAR_CACHE": "shared"}
    caches["shared"].clear()
    try:
        by_photo = _names(similar_products(looks[0], limit=2))
        by_detail = _names(similar_products(looks[0], limit=2, field="detail_embedding"))
        assert by_photo == ["look 1", "look 2"] and by_detail == ["look 4", "look 3"]
        # Served from the cache, each under its own field.
        assert _names(similar_products(looks[0], limit=2, field="detail_embedding")) == by_detail
        assert _names(similar_products(looks[0], limit=2, field="photo_embedding")) == by_photo
        html = Template('{% load visual_reco %}{% visually_similar look limit=2 '
                        'field="detail_embedding" %}').render(
            Context({"look": looks[0], "request": RequestFactory().get("/")}))
        assert html.index(">look 4<") < html.index(">look 3<") and ">look 1<" not in html
    finally:
        caches["shared"].clear()


def test_api_serves_the_requested_field(client, looks, settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "PRODUCT_MODEL": "testapp.Look"}
    url = f"/api/visual-reco/products/{looks[0].pk}/similar/?limit=2"
    default = client.get(url).json()
    assert [r["name"] for r in default["results"]] == ["look 1", "look 2"]
    detail = client.get(url + "&field=detail_embedding")
    assert detail.status_code == 200
    assert [r["name"] for r in detail.json()["results"]] == ["look 4", "look 3"]
    assert detail.json()["results"][0]["image"].endswith("/media/looks/d4.jpg")
    unknown = client.get(url + "&field=price")
    assert unknown.status_code == 400
    assert "photo_embedding, detail_embedding" in unknown.json()["field"][0]


def _product_errors():
    return [m for m in checks.run_checks(tags=[checks.Tags.models]) if m.id == "visual_reco.E005"]


@pytest.mark.parametrize("label, message", [
    (None, "5 models have an ImageEmbeddingField or a gallery of them"),
    ("testapp.Nope", "is not an installed model"),
    ("auth.User", "has no ImageEmbeddingField"),
])
def test_an_ambiguous_or_wrong_product_model_is_a_check_error(settings, label, message):
    assert _product_errors() == []
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "PRODUCT_MODEL": label}
    (error,) = _product_errors()
    assert message in error.msg
    with pytest.raises(ImproperlyConfigured, match=message):
        product_model()


def test_sweep_and_reindex_cover_each_field(photos, sent):
    look = Look.objects.create(name="a", photo=upload(photos[0].path),
                               detail=upload(photos[1].path))
    Look.objects.filter(pk=look.pk).update(photo_embedding_updated_at=None,
                                           detail_embedding_updated_at=None)
    sent.clear()
    results = sweep()
    assert results["testapp.Look"].queued == 2
    assert sorted(task[1] for task in sent if task[0] == "testapp.Look") == [
        "detail_embedding", "photo_embedding"]
    sent.clear()
    Look.objects.filter(pk=look.pk).update(photo_embedding_status="ready",
                                           detail_embedding_status="failed")
    assert reindex(Look.objects.all(), field="detail_embedding").queued == 1
    assert sent == [("testapp.Look", "detail_embedding", [look.pk])]
    look.refresh_from_db()
    assert (look.photo_embedding_status, look.detail_embedding_status) == ("ready", "pending")
    sent.clear()
    call_command("visual_reco_reindex", "--model", "testapp.Look", "--field",
                 "photo_embedding", "--all", stdout=io.StringIO())
    assert sent == [("testapp.Look", "photo_embedding", [look.pk])]


def test_admin_shows_and_recomputes_every_field(client, looks, sent):
    user = get_user_model().objects.create_superuser("staff", "staff@example.com", "pw")
    client.force_login(user)
    Look.objects.filter(pk=looks[1].pk).update(detail_embedding_status="failed",
                                               detail_embedding_error="The file is empty.")
    html = client.get("/admin/testapp/look/").content.decode()
    assert "photo embedding: Ready" in html and "detail embedding: Failed" in html
    assert "The file is empty." in html
    failed = client.get("/admin/testapp/look/?detail_embedding_status__exact=failed")
    assert failed.context["cl"].result_count == 1
    response = client.post("/admin/testapp/look/", {
        "action": "recompute_embeddings", "_selected_action": [looks[0].pk]}, follow=True)
    assert [str(m) for m in response.context["messages"]] == [
        "Queued 2 image embeddings of 1 objects in 2 tasks."]
    assert sorted(task[1] for task in sent) == ["detail_embedding", "photo_embedding"]


def test_classifiers_are_kept_per_field(settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "CLASSIFIER_PATH": None}
    assert classifier_path(Look).name == "testapp.look.photo_embedding.keras"
    assert classifier_path(Look, "detail_embedding").name == "testapp.look.detail_embedding.keras"
