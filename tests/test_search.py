"""Search by photo through the API, and every awkward upload through the API and a save."""

import io
import re

import numpy as np
import pytest
from django.core.cache import caches
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from PIL import Image

from tests.bad_uploads import UPLOADS
from tests.conftest import upload, wait_for_status
from tests.testapp.models import Item
from visual_reco.classifier import DenseHead, load_classifier
from visual_reco.conf import reco_settings
from visual_reco.embedders import get_embedder
from visual_reco.embedding import embed_objects
from visual_reco.images import ImageError
from visual_reco.models import EmbeddingStatus
from visual_reco.modes import mode_blend
from visual_reco.query import vector_of
from visual_reco.query_photos import embed_query_images

SEARCH = "/api/visual-reco/search/"


def test_indexing_code_gives_the_same_vectors(catalog, photo_vectors):
    embed_objects(Item, [catalog[0].pk], force=True)
    catalog[0].refresh_from_db()
    assert float(vector_of(catalog[0]) @ photo_vectors[0]) > 0.999


def customer_photo(path) -> bytes:
    """The catalog photo as a customer might send it: mirrored, smaller, re-encoded."""
    with Image.open(path) as image:
        image = image.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = image.resize((image.width // 2, image.height // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def post_photo(client, data: bytes, name="photo.jpg", **fields):
    return client.post(SEARCH, {"image": SimpleUploadedFile(name, data), **fields})


def test_search_finds_the_photographed_product_first(client, catalog, photos):
    for index in (1, 5, 9, 13):
        response = post_photo(client, customer_photo(photos[index].path), limit="5")
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["results"][0]["id"] == str(catalog[index].pk)
        assert len(body["results"]) == 5
        assert body["timings_ms"]["total"] > 0


def test_search_predicts_the_category(client, catalog, photos):
    labelled = [i for i, p in enumerate(photos) if p.label != "kitchenware"]
    correct = 0
    for index in labelled:
        body = post_photo(client, customer_photo(photos[index].path)).json()
        category = body["predicted_category"]
        assert 0 < category["confidence"] <= 1 and category["method"] == "knn"
        correct += category["name"] == photos[index].label
    assert correct / len(labelled) >= 0.8


def test_search_filters_and_predicted_category(client, catalog, photos):
    body = post_photo(client, customer_photo(photos[4].path), in_stock="true",
                      filter_by_predicted_category="true").json()
    assert "predicted_category" in body, body
    predicted = body["predicted_category"]["name"]
    ids = {r["id"] for r in body["results"]}
    in_stock_same_category = {str(i.pk) for i in catalog if i.in_stock and i.category == predicted}
    assert ids and ids <= in_stock_same_category


def test_search_rejects_a_bad_filter_value(client, catalog, photos):
    response = post_photo(client, customer_photo(photos[0].path), in_stock="maybe")
    assert response.status_code == 400
    assert "in_stock" in response.json()


@pytest.mark.parametrize("value, message", [("cup\x00", "Null characters"),
                                            ("x" * 51, "at most 50 characters")])
def test_search_rejects_filter_values_the_database_would_refuse(client, catalog, photos,
                                                                value, message):
    response = post_photo(client, customer_photo(photos[0].path), category=value)
    assert response.status_code == 400
    assert message in response.json()["category"][0]


def test_search_without_a_file_is_400(client, catalog):
    response = client.post(SEARCH, {"image_url": "http://169.254.169.254/latest/meta-data/"})
    assert response.status_code == 400
    # Neither a photo nor words: the reason names both fields.
    assert "(image)" in response.json()["non_field_errors"][0]


def test_photo_searches_are_rate_limited_per_client(client, catalog, settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "THROTTLE_CACHE": "shared",
                            "THROTTLE_RATES": {"photo_search": "2/min"}}
    caches["shared"].clear()
    try:
        # Refused uploads count too: the limit is on requests, before any work.
        assert [client.post(SEARCH, {}).status_code for _ in range(2)] == [400, 400]
        refused = client.post(SEARCH, {})
        assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    finally:
        caches["shared"].clear()


def test_a_process_runs_a_bounded_number_of_searches_at_once(client, catalog, photos, settings):
    from visual_reco.api.throttling import search_slots

    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "SEARCH_CONCURRENCY": 1}
    slots = search_slots()
    assert slots.acquire(blocking=False)  # one search is running
    try:
        busy = post_photo(client, customer_photo(photos[0].path))
        assert busy.status_code == 503 and busy["Retry-After"] == "1"
    finally:
        slots.release()
    assert post_photo(client, customer_photo(photos[0].path)).status_code == 200


def test_search_is_503_not_a_hang_when_no_worker_answers(client, catalog, photos, settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "QUERY_EMBEDDING": "worker",
                            "QUERY_TIMEOUT": 1.0, "TASK_QUEUE": "visual_reco_tests_nobody"}
    response = post_photo(client, customer_photo(photos[0].path))
    assert response.status_code == 503
    assert "unavailable" in response.json()["detail"]


@pytest.mark.parametrize("case", UPLOADS, ids=[u.kind for u in UPLOADS])
def test_every_awkward_upload_through_the_api(client, catalog, photos, case):
    response = post_photo(client, case.make(photos[3].path), name=case.filename)
    if case.refused:
        assert response.status_code == 400, case.kind
        (message,) = response.json()["image"]
        assert re.search(case.refused, message), message
    else:
        assert response.status_code == 200, response.content
        assert response.json()["results"], case.kind


@pytest.mark.django_db(transaction=True)
def test_every_awkward_upload_through_a_product_save(celery_worker, photos):
    with transaction.atomic():  # one commit: the bad files share tasks with good ones
        items = {case.kind: Item.objects.create(
                     name=case.kind, photo=SimpleUploadedFile(case.filename,
                                                              case.make(photos[3].path)))
                 for case in UPLOADS}
        good = Item.objects.create(name="good", photo=upload(photos[5].path))
    for item in [*items.values(), good]:
        wait_for_status(item, {EmbeddingStatus.READY, EmbeddingStatus.FAILED})

    for case in UPLOADS:
        item = items[case.kind]
        assert Item.objects.filter(pk=item.pk).exists()  # the product is kept
        if case.refused:
            assert item.embedding_status == EmbeddingStatus.FAILED, case.kind
            assert re.search(case.refused, item.embedding_error), item.embedding_error
        else:
            assert item.embedding_status == EmbeddingStatus.READY, (case.kind,
                                                                     item.embedding_error)
    assert good.embedding_status == EmbeddingStatus.READY


def test_trained_classifier_is_used_when_present(client, catalog, photos, photo_vectors,
                                                 settings, tmp_path):
    from django.core.management import call_command

    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "CLASSIFIER_PATH": str(tmp_path / "c.keras")}
    call_command("visual_reco_train_classifier", "--epochs", "30")
    assert (tmp_path / "c.keras").exists() and (tmp_path / "c.json").exists()
    # Searches run the head in numpy, as Keras would.
    import keras

    vectors = np.stack(photo_vectors).astype(np.float32)
    head = load_classifier(Item).network
    assert isinstance(head, DenseHead)
    np.testing.assert_allclose(
        head(vectors),
        np.asarray(keras.saving.load_model(tmp_path / "c.keras")(vectors)), atol=1e-5)

    body = post_photo(client, customer_photo(photos[4].path)).json()
    assert body["predicted_category"]["method"] == "classifier"
    assert body["predicted_category"]["name"] == photos[4].label

    # A classifier trained on another embedder's vectors is ignored.
    settings.VISUAL_RECO = {**settings.VISUAL_RECO,
                            "PREPROCESSING": {"RESIZE": "crop"}}
    assert load_classifier(Item) is None


def test_query_multi_crop_averages_six_views(photos, settings):
    from visual_reco.preprocessing import multi_crops

    with Image.open(photos[3].path) as image:
        image = image.convert("RGB")
    views = multi_crops(image, 0.7)
    assert len(views) == 6 and views[0] is image
    assert all(v.size == (int(image.width * 0.7), int(image.height * 0.7)) for v in views[1:])
    expected = get_embedder().embed(views).mean(axis=0)
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "QUERY_MULTI_CROP": 0.7}
    averaged = embed_query_images([image])[0]
    assert float(averaged @ (expected / np.linalg.norm(expected))) > 0.9999
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "QUERY_MULTI_CROP": None}
    whole = embed_query_images([image])[0]
    assert float(whole @ get_embedder().embed([image])[0]) > 0.9999
    assert float(whole @ averaged) < 0.999


def test_the_query_colour_comes_from_the_photo_centre(settings):
    """QUERY_ASPECT_CROP: a search photo's colour vector is its centre's (the product), not
    the whole frame's (the shelf around it)."""
    from visual_reco.aspects import compute_aspects
    from visual_reco.preprocessing import center_crop
    from visual_reco.query_photos import embed_query_images_with_aspects

    photo = Image.new("RGB", (400, 400), (30, 60, 200))  # a blue shelf...
    photo.paste((220, 30, 30), (110, 110, 290, 290))  # ...around a red product
    model = get_embedder()
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "QUERY_ASPECT_CROP": 0.7}
    _, centre = embed_query_images_with_aspects([photo], ["colour"])
    expected = compute_aspects([model.prepare(center_crop(photo, 0.7))], ["colour"])["colour"]
    np.testing.assert_allclose(centre["colour"], expected, atol=1e-6)
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "QUERY_ASPECT_CROP": None}
    _, whole = embed_query_images_with_aspects([photo], ["colour"])
    red = compute_aspects([model.prepare(Image.new("RGB", (400, 400), (220, 30, 30)))],
                          ["colour"])["colour"][0]
    assert float(centre["colour"][0] @ red) > float(whole["colour"][0] @ red) + 0.1


def test_warm_up_embeds_one_photo_only_in_process_mode(settings, monkeypatch):
    from visual_reco import query_photos

    calls = []
    monkeypatch.setattr(query_photos, "embed_query_images",
                        lambda images, embedder: calls.append(images))
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "QUERY_EMBEDDING": "worker"}
    query_photos.warm_up()
    assert calls == []
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "QUERY_EMBEDDING": "process"}
    query_photos.warm_up()
    assert len(calls) == 1 and len(calls[0]) == 1 and calls[0][0].size == (320, 320)


def test_similar_to_image_takes_the_search_path(catalog, photos, settings):
    """The queryset's photo search is the API's: same vector (QUERY_MULTI_CROP), same size
    limit."""
    data = customer_photo(photos[9].path)
    found = list(Item.objects.similar_to_image(io.BytesIO(data), limit=3))
    assert found[0].pk == catalog[9].pk and len(found) == 3
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "QUERY_MULTI_CROP": 0.7}
    averaged = Item.objects.similar_to_image(io.BytesIO(data), limit=1)[0]
    assert averaged.pk == catalog[9].pk
    assert averaged.visual_score != pytest.approx(found[0].visual_score, abs=1e-4)
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "MAX_IMAGE_BYTES": len(data) - 1}
    with pytest.raises(ImageError, match="larger than"):
        Item.objects.similar_to_image(io.BytesIO(data))


def test_search_blends_the_photo_colour_by_search_mode(client, catalog, photos, settings):
    """SEARCH_MODE ranks by the mode's blend with the photo's own colour vector (each
    result's scores add up to it); None is the CNN cosine alone."""
    data = customer_photo(photos[5].path)
    body = post_photo(client, data, limit="6").json()
    assert body["results"][0]["id"] == str(catalog[5].pk)
    blend = mode_blend(reco_settings.SEARCH_MODE)
    weight = {t.aspect: t for t in blend.terms}
    for result in body["results"]:
        scores = result["aspect_scores"]
        assert set(scores) == {"shape", "colour"}, result
        expected = (weight["shape"].weight * scores["shape"] + weight["colour"].weight
                    * max(scores["colour"], 0.0) ** weight["colour"].sharpness)
        assert result["score"] == pytest.approx(expected, abs=1e-4)
    # The photo's colour matches its own product's stored colour far better than the rest.
    first, *rest = body["results"]
    assert first["aspect_scores"]["colour"] > max(r["aspect_scores"]["colour"] for r in rest)
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "SEARCH_MODE": None}
    plain = post_photo(client, data, limit="6").json()["results"]
    assert all(r["aspect_scores"] is None for r in plain)
    assert plain[0]["score"] == pytest.approx(first["aspect_scores"]["shape"], abs=1e-4)
    colour = Item.objects.similar_to_image(io.BytesIO(data), limit=3, mode="same_colour")
    assert colour[0].pk == catalog[5].pk and colour[0].aspect_scores["colour"] is not None


def test_embedders_decode_with_their_own_exif_rule(photos, settings):
    """EXIF orientation is part of an embedder's preprocessing, decided there only."""
    from visual_reco.embedders import build_embedder

    with Image.open(photos[0].path) as image:
        stored = image.convert("RGB").rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif)
    upright = build_embedder().decode(io.BytesIO(buffer.getvalue()))
    assert upright.size == (stored.height, stored.width)
    config = {"BACKEND": "visual_reco.embedders.keras.KerasApplicationEmbedder",
              "OPTIONS": {"preprocessing": {"EXIF_ORIENTATION": False}}}
    as_stored = build_embedder(config).decode(io.BytesIO(buffer.getvalue()))
    assert as_stored.size == stored.size
    assert build_embedder(config).fingerprint != build_embedder().fingerprint
