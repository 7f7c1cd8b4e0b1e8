"""Products with several photos: a gallery field (``product=``) on a child image model serves
product-level results.

The ranking logic is checked on stored synthetic vectors (exact numbers); the real path, the
worker and the CNN embedding real Luma photos of a product's views, runs in the tests marked
``worker`` at the end.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict

import numpy as np
import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.models import Subquery
from django.template import Context, Template
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext

from tests.celery_app import app as celery_app
from tests.conftest import DATASETS, upload, wait_for_status
from tests.testapp.models import Garment, GarmentPhoto, Item
from visual_reco.choices import EmbeddingStatus
from visual_reco.colour import DIMENSIONS as COLOUR_DIMS
from visual_reco.gallery import Match, best_of
from visual_reco.modes import SHAPE, mode_blend
from visual_reco.query import DISTANCE, candidate_similarity, to_array
from visual_reco.reasons import colour_names, own_colour_names
from visual_reco.registry import (
    embedded_models,
    gallery_fields,
    gallery_products,
    get_embedding_field,
    is_gallery,
    product_model,
)
from visual_reco.result_cache import similar_products

DIMS = 2048


def unit(vector: np.ndarray) -> np.ndarray:
    """``vector`` scaled to length 1."""
    return vector / np.linalg.norm(vector)


def direction(seed: int, near: np.ndarray | None = None, spread: float = 0.0) -> np.ndarray:
    """A random non-negative unit vector, or one ``spread`` away from ``near``."""
    rng = np.random.default_rng(seed)
    noise = rng.random(DIMS)
    return unit(noise if near is None else near + spread * unit(noise - noise.mean()))


def photo(garment: Garment, vector: np.ndarray | None) -> GarmentPhoto:
    """A gallery photo of ``garment`` with ``vector`` stored as if a worker wrote it."""
    made = GarmentPhoto.objects.create(garment=garment, image=f"garments/{garment.pk}-x.jpg")
    status = EmbeddingStatus.READY if vector is not None else EmbeddingStatus.PENDING
    GarmentPhoto.objects.filter(pk=made.pk).update(embedding=vector, embedding_status=status)
    return made


@pytest.fixture
def wardrobe(db):
    """Garments a-e; ``a`` has two photos (front near ``b``'s, back near ``c``'s), ``d`` has
    three photos all near ``a``'s front (the one that would fill a list of image rows), ``e``
    has none with a vector yet."""
    front, back = direction(1), direction(2)
    made = {name: Garment.objects.create(name=name, category="tops", style=style)
            for name, style in [("a", "s1"), ("b", "s2"), ("c", "s3"), ("d", "s4"),
                                ("e", "s5")]}
    photos = {
        "a front": photo(made["a"], front), "a back": photo(made["a"], back),
        "b": photo(made["b"], direction(3, front, 0.4)),
        "c": photo(made["c"], direction(4, back, 0.2)),
        **{f"d{i}": photo(made["d"], direction(10 + i, front, 0.6)) for i in range(3)},
        "e": photo(made["e"], None),
    }
    return made, photos, front


@pytest.mark.django_db
def test_registry_maps_the_product_to_its_gallery():
    field = get_embedding_field(Garment)
    assert field.model is GarmentPhoto and field.product == "garment"
    assert gallery_fields(Garment) == [field] and gallery_fields(Item) == []
    assert is_gallery(field, Garment) and not is_gallery(field, GarmentPhoto)
    assert gallery_products(GarmentPhoto) == [Garment] and gallery_products(Item) == []
    assert GarmentPhoto in embedded_models()  # the pipeline embeds its rows
    assert get_embedding_field(GarmentPhoto).model is GarmentPhoto


@pytest.mark.django_db
def test_product_model_counts_a_gallery_product_and_not_its_images(settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "PRODUCT_MODEL": "testapp.Garment"}
    assert product_model() is Garment
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "PRODUCT_MODEL": None}
    with pytest.raises(ImproperlyConfigured, match="Garment") as raised:
        product_model()  # Item, Look and Garment; never the image models
    assert "GarmentPhoto" not in str(raised.value) and "ItemImage" in str(raised.value)


def test_a_foreign_key_that_is_not_one_is_refused():
    field = GarmentPhoto._meta.get_field("embedding")
    field.product = "image"
    try:
        with pytest.raises(ImproperlyConfigured, match="not a ForeignKey"):
            field.product_model()
        errors = [m for m in checks.run_checks(tags=[checks.Tags.models])
                  if m.id == "visual_reco.E010"]
        assert len(errors) == 1 and "product='image'" in errors[0].msg
    finally:
        field.product = "garment"
    assert not [m for m in checks.run_checks(tags=[checks.Tags.models])
                if m.id == "visual_reco.E010"]


def test_each_product_once_with_its_best_pair(wardrobe):
    made, photos, _ = wardrobe
    rows = list(Garment.objects.visually_similar(made["a"], limit=3))

    assert [row.name for row in rows] == ["c", "b", "d"]  # d's three photos count once
    assert rows[0].visual_image == photos["c"] and rows[0].visual_image_id == photos["c"].pk
    assert rows[1].visual_image == photos["b"]
    # The score is the best pair's cosine: c's photo against a's back.
    stored = {name: unit(to_array(GarmentPhoto.objects.get(pk=p.pk).embedding))
              for name, p in photos.items() if name != "e"}
    assert rows[0].visual_score == pytest.approx(float(stored["c"] @ stored["a back"]),
                                                 abs=2e-3)
    assert rows[0].visual_score >= rows[1].visual_score >= rows[2].visual_score
    assert getattr(rows[0], DISTANCE) == pytest.approx(1 - rows[0].visual_score, abs=1e-6)


def test_limit_counts_products_not_images(wardrobe, settings):
    made, _, front = wardrobe
    # One image row per product asked for: d's three photos fill the first try.
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "GALLERY_OVERSAMPLE": 1}
    rows = list(Garment.objects.similar_to_vector(front, limit=3))
    assert len(rows) == 3 and len({row.pk for row in rows}) == 3
    assert rows[0].name == "a"
    # d's own photos are each other's nearest: they fill the first tries, and are left out.
    similar = list(Garment.objects.visually_similar(made["d"], limit=3))
    assert len({row.pk for row in similar}) == 3 and made["d"].pk not in {r.pk for r in similar}


def test_filters_and_values_apply_to_products(wardrobe):
    made, _, front = wardrobe
    Garment.objects.filter(name="c").update(in_stock=False)
    rows = Garment.objects.filter(in_stock=True).visually_similar(made["a"], limit=5)
    assert [row.name for row in rows] == ["b", "d"]  # c out of stock, e has no vector
    named = list(Garment.objects.similar_to_vector(front, limit=2).values_list("name", DISTANCE))
    assert [name for name, _ in named] == ["a", "b"]


@pytest.fixture
def rack(db):
    """40 garments of 1-3 photos each (82 photos), each photo near its garment's direction,
    with colour vectors: more image rows than a search's pool, so the index answers."""
    rng = np.random.default_rng(7)
    garments = []
    for index in range(40):
        garment = Garment.objects.create(name=f"g{index}", category="tops",
                                         in_stock=index % 3 != 0)
        base, tint = direction(100 + index), rng.random(COLOUR_DIMS)
        for view in range(1 + index % 3):
            made = GarmentPhoto.objects.create(garment=garment, image=f"rack/{index}-{view}.jpg")
            GarmentPhoto.objects.filter(pk=made.pk).update(
                embedding=direction(1000 + 10 * index + view, base, 0.8),
                embedding_colour=unit(tint + 0.3 * rng.random(COLOUR_DIMS)),
                embedding_status=EmbeddingStatus.READY)
        garments.append(garment)
    return garments


def exact_ranking(source: Garment | tuple[np.ndarray, np.ndarray], candidates,
                  mode: str | None = None) -> list[tuple[int, float]]:
    """Every garment of ``candidates`` with a photo (but ``source``) by its best photo pair
    with ``source``'s photos (or the query's shape and colour vectors), by the plain cosine
    or ``mode``'s blend, best first: numpy on the stored vectors."""
    rows = list(GarmentPhoto.objects.exclude(embedding=None)
                .values_list("garment_id", "embedding", "embedding_colour"))
    owners = np.array([row[0] for row in rows])
    shape = np.array([unit(to_array(row[1])) for row in rows])
    colour = np.array([unit(to_array(row[2])) for row in rows])
    if isinstance(source, Garment):
        mine, left_out = owners == source.pk, {source.pk}
        queries = shape[mine], colour[mine]
    else:
        queries, left_out = (unit(source[0])[None, :], unit(source[1])[None, :]), set()
    cosines = {SHAPE: queries[0] @ shape.T, "colour": queries[1] @ colour.T}
    scores = cosines[SHAPE] if mode is None else mode_blend(mode).combine(cosines)
    best = scores.max(axis=0)
    allowed = set(candidates.values_list("pk", flat=True)) - left_out
    ranking = {}
    for owner, score in zip(owners, best, strict=True):
        if owner in allowed:
            ranking[int(owner)] = max(ranking.get(int(owner), -np.inf), float(score))
    return sorted(ranking.items(), key=lambda item: -item[1])


@pytest.mark.parametrize("mode", [None, "similar"])
@pytest.mark.parametrize("in_stock", [False, True])
def test_similar_products_are_the_exact_best_pair_ranking(rack, mode, in_stock):
    candidates = Garment.objects.filter(in_stock=True) if in_stock else Garment.objects.all()
    for source in rack[:9]:  # 1, 2 and 3 photos
        rows = list(candidates.visually_similar(source, limit=5, mode=mode))
        expected = exact_ranking(source, candidates, mode)
        reference = dict(expected)
        assert len(rows) == 5 and len({row.pk for row in rows}) == 5
        assert source.pk not in {row.pk for row in rows}
        for row, (_, score) in zip(rows, expected, strict=False):
            # Ties aside, the same products in the same order, each with its best pair.
            assert row.visual_score == pytest.approx(score, abs=2e-3)
            assert reference[row.pk] == pytest.approx(row.visual_score, abs=2e-3)
            assert row.visual_image.garment_id == row.pk
            assert (mode is None) == (getattr(row, "aspect_scores", None) is None)


@pytest.mark.parametrize("mode", [None, "similar"])
def test_a_photo_search_ranks_products_by_their_best_photo(rack, mode):
    stored = GarmentPhoto.objects.filter(garment=rack[4]).values_list(
        "embedding", "embedding_colour")[0]
    query = (to_array(stored[0]) + 0.02, to_array(stored[1]))
    expected = exact_ranking(query, Garment.objects.all(), mode)
    by_array = list(Garment.objects.similar_to_vector(query[0], limit=5, mode=mode,
                                                      colour=query[1]))
    # A query vector given as SQL (here a subquery) ranks alike.
    subquery = Subquery(GarmentPhoto.objects.filter(pk=GarmentPhoto.objects.filter(
        garment=rack[4]).order_by("pk").values("pk")[:1]).values("embedding")[:1])
    by_expression = list(Garment.objects.similar_to_vector(subquery, limit=5))
    assert by_array[0].pk == rack[4].pk
    for row, (_, score) in zip(by_array, expected, strict=False):
        assert row.visual_score == pytest.approx(score, abs=2e-3)
        assert dict(expected)[row.pk] == pytest.approx(row.visual_score, abs=2e-3)
    assert by_expression[0].pk == rack[4].pk
    assert by_expression[0].visual_score == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("mode", [None, "similar"])
def test_walks_that_meet_dead_rows_are_ranked_exactly(rack, mode):
    # Deleted in this transaction: invisible to it, still in the index, as dead tuples are
    # until a vacuum. 19 photos stay, fewer than a search's pool (20): every walk comes back
    # short, and those sources are ranked again exactly.
    GarmentPhoto.objects.filter(garment__in=rack[10:]).delete()
    for source in rack[:6]:
        rows = list(Garment.objects.visually_similar(source, limit=5, mode=mode))
        expected = exact_ranking(source, Garment.objects.all(), mode)
        assert [row.pk for row in rows] == [pk for pk, _ in expected[:5]]
        for row, (_, score) in zip(rows, expected, strict=False):
            assert row.visual_score == pytest.approx(score, abs=2e-3)


def test_similar_products_are_one_statement_whatever_the_photos(rack):
    for source in rack[:3]:  # 1, 2 and 3 photos
        with CaptureQueriesContext(connection) as captured:
            rows = list(Garment.objects.visually_similar(source, limit=4, mode="similar"))
        statements = [q["sql"] for q in captured.captured_queries
                      if "set_config('hnsw" not in q["sql"]]
        assert len(rows) == 4
        # The image searches of every photo, then the products by primary key.
        assert len(statements) == 2, statements
        assert "LATERAL" in statements[0]


def test_best_of_keeps_each_products_best_match():
    first = [Match(1, 0.9, "a"), Match(2, 0.5, "b")]
    second = [Match(2, 0.7, "c"), Match(3, 0.7, "d"), Match(1, 0.2, "e")]
    assert [(m.product, m.image) for m in best_of(first, second)] == [
        (1, "a"), (2, "c"), (3, "d")]  # 2 and 3 tie: the smaller key first


def test_a_product_without_ready_images_has_no_similar_products(wardrobe):
    made, _, _ = wardrobe
    assert list(Garment.objects.visually_similar(made["e"])) == []
    assert made["e"].pk not in {row.pk for row in Garment.objects.similar_to_vector(
        direction(99), limit=10)}


def test_deleting_the_matching_image_reranks(wardrobe):
    made, photos, _ = wardrobe
    assert Garment.objects.visually_similar(made["a"], limit=1)[0].name == "c"
    photos["a back"].delete()
    rows = list(Garment.objects.visually_similar(made["a"], limit=2))
    assert [row.name for row in rows] == ["b", "d"]


def test_collapse_keeps_one_product_per_variant_group(wardrobe, settings):
    made, _, _ = wardrobe
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "VARIANT_FIELD": "style"}
    Garment.objects.filter(name="b").update(style="s3")  # b and c: colours of one style
    rows = list(Garment.objects.visually_similar(made["a"], limit=3, collapse_variants=True))
    assert [row.name for row in rows] == ["c", "d"]


def test_other_colours_mode_puts_the_products_variants_first(wardrobe, settings):
    made, _, _ = wardrobe
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "VARIANT_FIELD": "style"}
    Garment.objects.filter(name="d").update(style="s1")  # d: another colour of a
    rows = list(Garment.objects.visually_similar(made["a"], limit=3,
                                                 mode="same_style_other_colours"))
    assert [row.name for row in rows][0] == "d" and len({row.pk for row in rows}) == 3


def test_similarity_of_products_is_their_best_image_pair(wardrobe):
    made, photos, _ = wardrobe
    from visual_reco.diversity import PLAIN

    pks = [made[name].pk for name in ("a", "b", "c", "e")]
    similarity = candidate_similarity(Garment, pks, PLAIN)
    rows = GarmentPhoto.objects.filter(garment__in=pks[:3]).exclude(embedding=None)
    vectors = {p.pk: unit(to_array(p.embedding)) for p in rows}
    best = max(float(vectors[photos[x].pk] @ vectors[photos["c"].pk])
               for x in ("a front", "a back"))
    assert similarity[0, 2] == pytest.approx(best, abs=1e-3)
    assert similarity[3, 0] == 0 and similarity[3, 3] == 1  # e: no vector


def test_cached_lists_keep_the_matching_image_and_images_invalidate_them(
        wardrobe, settings, django_capture_on_commit_callbacks):
    made, photos, _ = wardrobe
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "SIMILAR_CACHE": "shared",
                            "DEFAULT_MODE": None, "DIVERSITY": None}
    first = similar_products(made["a"], limit=2)
    cached = similar_products(made["a"], limit=2)  # read back from the cache
    assert [row.name for row in cached] == [row.name for row in first] == ["c", "b"]
    assert cached[0].visual_image.pk == photos["c"].pk
    assert cached[0].visual_image.image.name == photos["c"].image.name
    with django_capture_on_commit_callbacks(execute=True):
        photos["c"].delete()  # post_delete of an image drops the product's lists
    assert [row.name for row in similar_products(made["a"], limit=2)] == ["b", "d"]


def test_modes_blend_on_image_rows(wardrobe):
    made, photos, _ = wardrobe
    rows = list(Garment.objects.visually_similar(made["a"], limit=3, mode="similar"))
    assert len({row.pk for row in rows}) == 3
    assert all(set(row.aspect_scores) >= {"shape"} for row in rows)
    assert rows[0].visual_image is not None


def test_the_api_serves_products_with_the_matching_image(wardrobe, settings, client):
    made, photos, _ = wardrobe
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "PRODUCT_MODEL": "testapp.Garment"}
    response = client.get(f"/api/visual-reco/products/{made['a'].pk}/similar/?limit=3")
    assert response.status_code == 200, response.content
    body = response.json()
    assert [row["name"] for row in body["results"]][:2] == ["c", "b"]
    assert len({row["id"] for row in body["results"]}) == 3
    match = body["results"][0]["matching_image"]
    assert match["id"] == str(photos["c"].pk)
    assert match["url"].endswith(photos["c"].image.url)
    assert body["results"][0]["image"] == match["url"]
    assert body["embedding_status"] == EmbeddingStatus.READY
    empty = client.get(f"/api/visual-reco/products/{made['e'].pk}/similar/").json()
    assert empty["results"] == [] and empty["embedding_status"] == EmbeddingStatus.PENDING


def render_tag(source: Garment, extra: str = "") -> str:
    """``{% visually_similar %}`` of ``source`` as a visitor's request renders it."""
    request = RequestFactory().get("/")
    return Template("{% load visual_reco %}{% visually_similar source limit=3 " + extra
                    + " %}").render(Context({"request": request, "source": source}))


def test_the_tag_shows_products_with_their_matching_photo(wardrobe, settings):
    made, photos, _ = wardrobe
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "DEFAULT_MODE": None}
    html = render_tag(made["a"])
    assert html.count('class="visual-reco__item"') == 3
    assert html.index(">c<") < html.index(">b<") < html.index(">d<")
    assert photos["c"].image.url in html and photos["b"].image.url in html
    # Re-ranked by feedback (the default RANKING) and in a mode: still each product once.
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "DEFAULT_MODE": "similar",
                            "RANKING": {"RERANK": True, "EXPLORE": 0.0}}
    html = render_tag(made["a"], 'mode="similar"')
    pks = [int(pk) for pk in re.findall(r'data-pk="(\d+)"', html)]
    assert len(pks) == len(set(pks)) == 3 and made["a"].pk not in pks
    assert "Similar products appear once" in render_tag(made["e"])  # no photo ready


def test_the_classifier_learns_from_every_photo_with_its_products_category(wardrobe):
    from visual_reco.classifier import training_data
    from visual_reco.embedders import get_embedder

    made, _, _ = wardrobe
    fingerprint = get_embedding_field(Garment).fingerprint_for(get_embedder())
    GarmentPhoto.objects.update(embedding_fingerprint=fingerprint)
    Garment.objects.filter(name="b").update(category="shoes")
    vectors, labels = training_data(Garment)
    assert vectors.shape == (7, DIMS)  # every photo with a vector: a 2, b, c, d 3
    assert sorted(labels) == ["shoes"] + ["tops"] * 6


def test_picks_and_the_learned_ranking_read_a_products_photos(wardrobe):
    from visual_reco.feedback.learned import stored_vectors

    made, photos, _ = wardrobe
    vectors = stored_vectors(Garment, None, [made["a"].pk, made["b"].pk, made["e"].pk])
    assert set(vectors) == {str(made["a"].pk), str(made["b"].pk)}  # e: no photo embedded
    front = to_array(GarmentPhoto.objects.get(pk=photos["a front"].pk).embedding)
    back = to_array(GarmentPhoto.objects.get(pk=photos["a back"].pk).embedding)
    expected = unit(unit(front) + unit(back))
    assert float(vectors[str(made["a"].pk)] @ expected) == pytest.approx(1.0, abs=1e-4)


def test_admin_shows_each_image_inside_its_product(wardrobe, admin_client, monkeypatch):
    made, photos, _ = wardrobe
    GarmentPhoto.objects.filter(pk=photos["a back"].pk).update(
        embedding_status=EmbeddingStatus.FAILED, embedding_error="The image is too large.")
    listing = admin_client.get("/admin/testapp/garment/").content.decode()
    assert "garment photos: 1 of 2 ready" in listing  # a
    assert "garment photos: 0 of 1 ready" in listing  # e
    page = admin_client.get(f"/admin/testapp/garment/{made['a'].pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count("Ready") >= 1 and "The image is too large." in html and "Failed" in html

    sent = []
    monkeypatch.setattr(celery_app, "send_task",
                        lambda name, args, **kwargs: sent.append(tuple(args)))
    response = admin_client.post("/admin/testapp/garment/", {
        "action": "recompute_embeddings", "_selected_action": [made["a"].pk]}, follow=True)
    assert [str(m) for m in response.context["messages"]] == [
        "Queued 2 image embeddings of 1 objects in 1 task."]
    assert [(label, field, sorted(pks)) for label, field, pks in sent] == [
        ("testapp.GarmentPhoto", "embedding", sorted([photos["a front"].pk,
                                                      photos["a back"].pk]))]


# --- the real path: worker, CNN, Luma photos --------------------------------------------------

LUMA = DATASETS / "magento_luma"


def luma_views(count: int) -> list[tuple[str, str, list]]:
    """``count`` Luma items (style-colour) with 3+ views: (item, category, paths), two
    categories alternating so that neighbours are not all of one kind."""
    if not (LUMA / "labels.csv").exists():
        pytest.skip("../shared/datasets/magento_luma is absent")
    views = defaultdict(list)
    category = {}
    with open(LUMA / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["colour"]:
                item = f"{row['style']}-{row['colour']}"
                views[item].append(LUMA / row["path"])
                category[item] = row["category"]
    return [(item, category[item], paths) for item, paths in sorted(views.items())
            if len(paths) >= 3][:count]


def wait_for_photos(garments) -> None:
    """Wait until every photo of ``garments`` is embedded (ready or failed)."""
    for photo_row in GarmentPhoto.objects.filter(garment__in=garments):
        wait_for_status(photo_row, {EmbeddingStatus.READY, EmbeddingStatus.FAILED})


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_real_gallery_search_by_worker_and_cnn(celery_worker, settings, client):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "PRODUCT_MODEL": "testapp.Garment"}
    garments = []
    for item, category, paths in luma_views(4):
        garment = Garment.objects.create(name=item, category=category)
        for path in paths[:3]:
            GarmentPhoto.objects.create(garment=garment, image=upload(path))
        garments.append(garment)
    empty = Garment.objects.create(name="no photo yet")
    GarmentPhoto.objects.create(garment=empty)  # no image: never embedded
    wait_for_photos(garments)
    assert set(GarmentPhoto.objects.filter(garment__in=garments)
               .values_list("embedding_status", flat=True)) == {EmbeddingStatus.READY}
    fingerprints = set(GarmentPhoto.objects.exclude(embedding=None)
                       .values_list("embedding_fingerprint", flat=True))
    assert len(fingerprints) == 1 and "+colour" in fingerprints.pop()

    # Similar products: each other product once, with which of its photos matched.
    source = garments[0]
    rows = list(Garment.objects.visually_similar(source, limit=3))
    assert len(rows) == 3 and source.pk not in {row.pk for row in rows}
    assert len({row.pk for row in rows}) == 3
    for row in rows:
        assert row.visual_image.garment_id == row.pk
    assert list(Garment.objects.visually_similar(empty)) == []

    # Photo search with one of the first garment's own photos: it comes first, once.
    path = luma_views(4)[0][2][1]
    response = client.post("/api/visual-reco/search/",
                           {"image": upload(path), "limit": 4}, format="multipart")
    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert len(results) == 4 and len({row["id"] for row in results}) == 4
    assert results[0]["id"] == str(source.pk)
    photo_ids = set(map(str, source.photos.values_list("pk", flat=True)))
    assert results[0]["matching_image"]["id"] in photo_ids

    # Deleting the matching photo of the nearest product re-ranks with its other photos.
    nearest = rows[0]
    nearest.visual_image.delete()
    again = {row.pk: row for row in Garment.objects.visually_similar(source, limit=3)}
    assert nearest.pk in again
    assert again[nearest.pk].visual_image.pk != nearest.visual_image_id
    assert again[nearest.pk].visual_score <= nearest.visual_score + 1e-6


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_changed_or_reindexed_gallery_photo_goes_through_the_pipeline(celery_worker):
    (item, category, paths), = luma_views(1)
    garment = Garment.objects.create(name=item, category=category)
    first = GarmentPhoto.objects.create(garment=garment, image=upload(paths[0]))
    assert first.embedding_status == EmbeddingStatus.PENDING
    first = wait_for_status(first, {EmbeddingStatus.READY, EmbeddingStatus.FAILED})
    assert first.embedding_status == EmbeddingStatus.READY
    before = to_array(first.embedding)
    first.image = upload(paths[1])
    first.save()
    assert first.embedding_status == EmbeddingStatus.PENDING
    first = wait_for_status(first, {EmbeddingStatus.READY, EmbeddingStatus.FAILED})
    assert float(unit(to_array(first.embedding)) @ unit(before)) < 0.999
    from visual_reco.jobs import reindex

    reindex(GarmentPhoto.objects.filter(pk=first.pk))
    first.refresh_from_db()
    assert first.embedding_status in {EmbeddingStatus.PENDING, EmbeddingStatus.READY}
    first = wait_for_status(first, {EmbeddingStatus.READY, EmbeddingStatus.FAILED})
    assert first.embedding_status == EmbeddingStatus.READY


def test_a_gallery_products_own_colour_names_are_its_first_photos(rack):
    """Captions compare a result's colour names with the product's own: for a gallery
    product those of its first photo with a colour vector (the product row has none)."""
    embedding = get_embedding_field(Garment)
    for garment in rack[:6]:
        first = GarmentPhoto.objects.filter(garment=garment).order_by("pk").first()
        names = own_colour_names(garment, embedding)
        assert names and names == colour_names(first, "embedding_colour")
    bare = Garment.objects.create(name="no photos")
    assert own_colour_names(bare, embedding) is None
