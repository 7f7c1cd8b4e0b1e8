"""Search by photo and words: the text index kept on save and delete (real Postgres), words
alone, words fused with a real photo's ranking, gallery products once, and bad input."""

from __future__ import annotations

import pytest
from django.core import checks
from django.core.management import call_command
from django.db import transaction
from django.test.utils import CaptureQueriesContext

from tests.test_gallery import wardrobe  # noqa: F401  the gallery fixture
from tests.test_search import SEARCH, customer_photo, post_photo
from tests.testapp.models import Garment, Item, Kit
from visual_reco import text_search
from visual_reco.fusion import BLEND, RRF, Fusion, fuse
from visual_reco.models import TextDocument
from visual_reco.search import ranked_search, search_by_photo


def documents(model) -> dict[str, str]:
    """The stored documents of ``model`` by object id, as Postgres prints the tsvector."""
    return dict(TextDocument.objects.filter(model=model._meta.label_lower)
                .values_list("object_id", "document"))


def words(queryset, text: str, limit: int = 10) -> list:
    """The primary keys `text_search.ranked` finds for ``text``."""
    return [pk for pk, _ in text_search.ranked(queryset, text, limit)]


@pytest.mark.django_db
def test_saves_updates_and_deletes_keep_the_index():
    mug = Item.objects.create(name="Red enamel mug", category="cups")
    plate = Item.objects.create(name="Blue plate", category="plates")
    stored = documents(Item)
    assert set(stored) == {str(mug.pk), str(plate.pk)}
    # Stemmed, weighted: the name is A, the category B.
    assert "'mug':3A" in stored[str(mug.pk)] and "'cup':4B" in stored[str(mug.pk)]
    assert words(Item.objects.all(), "red") == [mug.pk]
    mug.name = "Green enamel mug"
    mug.save()
    assert words(Item.objects.all(), "red") == []
    assert words(Item.objects.all(), "green mugs") == [mug.pk]
    # A save naming only fields that are not indexed writes nothing.
    with CaptureQueriesContext(transaction.get_connection()) as queries:
        mug.in_stock = False
        mug.save(update_fields=["in_stock"])
    assert not any("textdocument" in q["sql"] for q in queries.captured_queries)
    plate.delete()
    assert set(documents(Item)) == {str(mug.pk)}
    # A product without words has no document, and matches nothing.
    mug.name, mug.category = "", ""
    mug.save()
    assert documents(Item) == {}


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_save_leaves_the_index_as_it_was():
    kept = Item.objects.create(name="Linen napkin", category="textiles")
    with pytest.raises(RuntimeError), transaction.atomic():
        kept.name = "Silk scarf"
        kept.save()
        raise RuntimeError
    assert words(Item.objects.all(), "napkin") == [kept.pk]
    assert words(Item.objects.all(), "silk") == []


@pytest.mark.django_db
def test_uuid_keys_and_the_rebuild_command(settings):
    kit = Kit.objects.create(name="Organic cotton tote")
    other = Kit.objects.create(name="Steel bottle")
    assert words(Kit.objects.all(), "organic") == [kit.pk]
    # update() sends no signal: the index is stale until the command rebuilds it.
    Kit.objects.filter(pk=other.pk).update(name="Organic steel bottle")
    TextDocument.objects.create(model="testapp.kit", object_id="gone", document="",
                                fingerprint="x")
    assert words(Kit.objects.all(), "organic") == [kit.pk]
    call_command("visual_reco_text_index", "testapp.Kit", stdout=open("/dev/null", "w"))
    assert set(words(Kit.objects.all(), "organic")) == {kit.pk, other.pk}
    assert "gone" not in documents(Kit)


@pytest.mark.django_db
def test_changed_settings_are_reported_until_rebuilt(settings):
    Item.objects.create(name="Oak board", category="boards")

    def warned() -> bool:
        return any(m.id == "visual_reco.W004" for m in checks.run_checks(
            tags=[checks.Tags.database], databases=["default"]))

    assert not warned()
    settings.VISUAL_RECO = {**settings.VISUAL_RECO,
                            "TEXT_SEARCH": {"FIELDS": ["name"], "CONFIG": "simple"}}
    assert warned()
    call_command("visual_reco_text_index", stdout=open("/dev/null", "w"))
    assert not warned()
    # "simple" does not stem: "boards" no longer finds "board"; the category is not indexed.
    assert words(Item.objects.all(), "oak") and not words(Item.objects.all(), "boards")


@pytest.mark.django_db
def test_words_only_ranked_and_filtered():
    best = Item.objects.create(name="Red mug", category="red cups")
    good = Item.objects.create(name="Mug", category="red cups", in_stock=False)
    Item.objects.create(name="Blue mug", category="cups")
    # ts_rank_cd: the name (A) and the category (B) both match for `best`.
    assert words(Item.objects.all(), "red") == [best.pk, good.pk]
    assert words(Item.objects.filter(in_stock=True), "red") == [best.pk]
    found = search_by_photo(None, Item.objects.all(), text="red mug", limit=5)
    assert [row.pk for row in found.results][:2] == [best.pk, good.pk]
    assert all(row.matched_text and row.visual_score is None for row in found.results)


def test_fusion_rrf_and_blend():
    looks = [("a", 0.9), ("b", 0.8), ("c", 0.7)]
    text = [("c", 2.0), ("d", 1.0)]
    # c is in both lists: it rises above a and b.
    assert [key for key, _ in fuse(looks, text, Fusion(RRF, k=1))][:1] == ["c"]
    assert [key for key, _ in fuse(looks, [], Fusion(RRF, k=60))] == ["a", "b", "c"]
    blended = dict(fuse(looks, text, Fusion(BLEND, text_weight=0.5)))
    assert blended["c"] == pytest.approx(0.5 * 0.0 + 0.5 * 1.0)
    assert blended["a"] == pytest.approx(0.5)
    assert [key for key, _ in fuse(looks, text, Fusion(BLEND, text_weight=0.0))][:3] == [
        "a", "b", "c"]
    with pytest.raises(ValueError):
        Fusion("vote")


def test_photo_and_words_fused_through_the_api(client, catalog, photos, settings):
    index = 5
    photo = customer_photo(photos[index].path)
    plain = post_photo(client, photo, limit="8").json()
    assert plain["photo"] is True and plain["text"] is None
    assert plain["results"][0]["id"] == str(catalog[index].pk)
    assert all(row["matched_text"] is None for row in plain["results"])
    # Words that name a product ranked low by looks lift it into the first places.
    target = next(item for item in reversed(catalog)
                  if str(item.pk) not in {r["id"] for r in plain["results"][:4]})
    Item.objects.filter(pk=target.pk).update(name="Zanzibar teapot")
    text_search.index([Item.objects.get(pk=target.pk)])
    everything = [row["id"] for row in post_photo(client, photo, limit="18").json()["results"]]
    # The default fusion (a blend) lifts it too.
    blended = [row["id"] for row in post_photo(client, photo, limit="18",
                                                text="zanzibar").json()["results"]]
    assert blended.index(str(target.pk)) < everything.index(str(target.pk))
    assert blended[0] in (str(target.pk), str(catalog[index].pk))
    settings.VISUAL_RECO = {**settings.VISUAL_RECO,
                            "TEXT_SEARCH": {"FUSION": "rrf", "RRF_K": 5}}
    body = post_photo(client, photo, limit="8", text="zanzibar").json()
    assert body["photo"] is True and body["text"] == "zanzibar"
    ids = [row["id"] for row in body["results"]]
    assert ids.index(str(target.pk)) < 2
    assert str(catalog[index].pk) in ids[:2]
    matched = {row["id"]: row["matched_text"] for row in body["results"]}
    assert matched[str(target.pk)] is True and matched[str(catalog[index].pk)] is False
    assert len(ids) == len(set(ids)) == 8
    assert body["timings_ms"]["text"] >= 0


def test_words_only_through_the_api_with_filters(client, catalog, photos):
    cups = [item for item in catalog if item.category == photos[0].label]
    response = client.post(SEARCH, {"text": photos[0].label, "limit": "50"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["photo"] is False and body["predicted_category"] is None
    assert {row["id"] for row in body["results"]} == {str(item.pk) for item in cups}
    assert all(row["matched_text"] and row["score"] is None for row in body["results"])
    stocked = client.post(SEARCH, {"text": photos[0].label, "in_stock": "true"}).json()
    assert {row["id"] for row in stocked["results"]} == {
        str(item.pk) for item in cups if item.in_stock}


@pytest.mark.parametrize("text", ["&|!():*", "'", "\\", "a & !b | (c:*", '"unclosed',
                                  "-", "or", "the", "ﬁ ᾅ 😀 ‮x", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", " " * 5 + "x"])
def test_any_words_are_searched_or_refused_never_a_500(client, catalog, photos, text):
    alone = client.post(SEARCH, {"text": text})
    assert alone.status_code == 200, alone.content
    with_photo = post_photo(client, customer_photo(photos[2].path), text=text)
    assert with_photo.status_code == 200, with_photo.content
    # Words that match nothing leave the photo's own ranking.
    assert with_photo.json()["results"][0]["id"] == str(catalog[2].pk)


@pytest.mark.django_db
@pytest.mark.parametrize("data, field", [
    ({}, "non_field_errors"),
    ({"text": ""}, "non_field_errors"),
    ({"text": "   "}, "non_field_errors"),
    ({"text": "x" * 201}, "text"),
    ({"text": "mug\x00"}, "text"),
])
def test_bad_searches_are_400_with_a_reason(client, data, field):
    response = client.post(SEARCH, data)
    assert response.status_code == 400, response.content
    assert field in response.json()


def test_gallery_products_come_once_with_their_matching_image(wardrobe, settings):  # noqa: F811
    made, photos, front = wardrobe
    Garment.objects.filter(pk=made["c"].pk).update(name="c striped")
    text_search.rebuild(Garment)
    looks = [row.pk for row in ranked_search(Garment.objects.all(), 4, vector=front)]
    assert looks[:2] == [made["a"].pk, made["b"].pk]
    settings.VISUAL_RECO = {**settings.VISUAL_RECO,
                            "TEXT_SEARCH": {"FUSION": "rrf", "RRF_K": 1}}
    rows = ranked_search(Garment.objects.all(), 4, vector=front, text="striped")
    pks = [row.pk for row in rows]
    assert len(pks) == len(set(pks))
    assert pks[0] == made["c"].pk and rows[0].matched_text
    assert rows[0].visual_image.pk == photos["c"].pk
    assert {row.pk: row.visual_image.pk for row in rows}[made["a"].pk] == photos["a front"].pk
    # Words alone: products, not photos, without a visual score.
    alone = ranked_search(Garment.objects.all(), 4, text="striped")
    assert [row.pk for row in alone] == [made["c"].pk] and alone[0].visual_score is None


def test_the_schema_lists_the_words(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    body = schema["paths"]["/api/visual-reco/search/"]["post"]["requestBody"]
    reference = body["content"]["multipart/form-data"]["schema"]["$ref"]
    request = schema["components"]["schemas"][reference.rsplit("/", 1)[1]]
    assert "text" in request["properties"] and "image" not in request.get("required", [])
    item = schema["components"]["schemas"]["SearchItem"]
    assert "matched_text" in item["properties"]


def test_photo_and_words_keep_the_filters_and_the_predicted_category(client, catalog, photos):
    body = post_photo(client, customer_photo(photos[4].path), text=photos[1].label,
                      in_stock="true", filter_by_predicted_category="true").json()
    predicted = body["predicted_category"]["name"]
    allowed = {str(i.pk) for i in catalog if i.in_stock and i.category == predicted}
    ids = {row["id"] for row in body["results"]}
    assert ids and ids <= allowed
