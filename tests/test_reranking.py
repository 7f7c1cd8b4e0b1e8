"""Similar lists re-ranked with shopper feedback, as the API and the tag serve them: the exact
visual order without feedback, clicks that move a product up once rolled up, the prior,
exploration, the business hooks, the scores in the token and the A/B variant's options."""

import json
import re
import time

import numpy as np
import pytest
from django.template import Context, Template
from django.test import RequestFactory

from tests.testapp.models import Item
from visual_reco.colour import colour_vector
from visual_reco.feedback import record
from visual_reco.feedback.evidence import forget_priors
from visual_reco.feedback.experiments import assign
from visual_reco.feedback.rollup import rollup
from visual_reco.feedback.similar import ranked_similar
from visual_reco.feedback.tokens import read
from visual_reco.query import visual

pytestmark = pytest.mark.django_db
EVENTS = "/api/visual-reco/events/"


@pytest.fixture(autouse=True)
def fresh_priors():
    forget_priors()
    yield
    forget_priors()


def ranking(settings, **options):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "RANKING": options}


def similar(client, item, limit=5, visitor="v-reader-000000000001"):
    client.cookies["vr_vid"] = visitor
    body = client.get(f"/api/visual-reco/products/{item.pk}/similar/?limit={limit}").json()
    return body["token"], [int(result["id"]) for result in body["results"]]


def visual_order(item, limit=5):
    return [row.pk for row in visual(type(item).objects.all()).visually_similar(item, limit)]


def shoppers_click(client, item, product, visitors, *, clicks=True):
    """``visitors`` distinct visitors each get the list and report its impressions, and a
    click on ``product`` (when ``clicks``); then the roll-up runs."""
    for n in range(visitors):
        token, shown = similar(client, item, visitor=f"v-shopper-{n:016d}")
        now = int(time.time() * 1000)
        events = [{"type": "impression", "event_id": f"i{n}-{pk}", "token": token,
                   "product": str(pk), "ts": now} for pk in shown]
        if clicks:
            events.append({"type": "click", "event_id": f"c{n}", "token": token,
                           "product": str(product), "ts": now})
        answer = client.post(EVENTS, json.dumps({"events": events}),
                             content_type="application/json")
        assert answer.json()["stored"] == len(events), answer.content
    rollup(wait=True)
    forget_priors()


def test_without_feedback_the_served_order_is_the_visual_order_exactly(client, items):
    assert similar(client, items[0])[1] == visual_order(items[0])
    assert [row.pk for row in ranked_similar(items[3], limit=3)] == visual_order(items[3], 3)


def test_clicks_move_a_product_up_once_rolled_up(client, items):
    before = visual_order(items[0])
    last = before[-1]
    shoppers_click(client, items[0], last, visitors=60)
    after = similar(client, items[0])[1]
    assert after.index(last) < before.index(last), (before, after)
    assert sorted(after) == sorted(before)


def test_one_lucky_click_does_not_move_a_product(client, items):
    before = visual_order(items[0])
    shoppers_click(client, items[0], before[-1], visitors=1)
    assert similar(client, items[0])[1] == before


def test_views_without_clicks_move_nothing_when_everything_is_ignored_alike(client, items):
    before = visual_order(items[0])
    shoppers_click(client, items[0], None, visitors=30, clicks=False)
    assert similar(client, items[0])[1] == before


def test_exploration_varies_only_the_last_slots(client, items, settings):
    before = visual_order(items[0])
    shoppers_click(client, items[0], before[0], visitors=20)
    ranking(settings, EXPLORE=0.5, POOL=3)
    rng = np.random.default_rng(3)
    lists = [[row.pk for row in ranked_similar(items[0], limit=2, rng=rng)]
             for _ in range(40)]
    assert {shown[0] for shown in lists} == {before[0]}
    assert len({shown[1] for shown in lists}) > 1


def test_business_hooks(client, items, settings):
    source = items[0]
    before = visual_order(source)
    ranking(settings, BOOST={"in_stock": 1.0})
    boosted = [row.pk for row in ranked_similar(source, limit=5)]
    assert boosted[-1] == items[2].pk and not items[2].in_stock  # out of stock: last
    assert [pk for pk in boosted if pk != items[2].pk] == [pk for pk in before
                                                           if pk != items[2].pk]
    ranking(settings, EXCLUDE=[before[0]], PIN=[str(before[-1])])
    pinned = [row.pk for row in ranked_similar(source, limit=3)]
    assert pinned == [before[-1], before[1], before[2]]
    ranking(settings, EXCLUDE="tests.test_reranking.exclude_plates")
    assert all(row.category != "plates" for row in ranked_similar(source, limit=5))
    ranking(settings, SCORER="tests.test_reranking.reversed_scores")
    assert [row.pk for row in ranked_similar(source, limit=5)] == before[::-1]
    ranking(settings, RERANK=False)
    assert [row.pk for row in ranked_similar(source, limit=5)] == before


def exclude_plates(source):
    return type(source).objects.filter(category="plates").values_list("pk", flat=True)


def reversed_scores(source, products, scores):
    return -scores


def test_the_token_records_the_scores(client, items):
    before = visual_order(items[0])
    shoppers_click(client, items[0], before[-1], visitors=40)
    token, shown = similar(client, items[0])
    served = read(token)
    rows = {row.pk: row for row in ranked_similar(items[0], limit=5)}
    assert len(served.scores) == len(shown) == 5
    for pk, (visual_score, final) in zip(shown, served.scores, strict=True):
        assert visual_score == pytest.approx(rows[pk].visual_score, abs=1e-4)
        assert final == pytest.approx(rows[pk].reco_score, abs=1e-4)
    finals = [final for _, final in served.scores]
    assert finals == sorted(finals, reverse=True)
    assert finals != [v for v, _ in served.scores]  # feedback changed the scores


def test_each_variant_ranks_by_its_own_options(client, items, settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "FEEDBACK": {"EXPERIMENTS": {
        "similar_api": {"VARIANTS": {"visual": {"SHARE": 50, "RANKING": {"RERANK": False}},
                                     "reranked": {"SHARE": 50}}}}}}
    before = visual_order(items[0])
    shoppers_click(client, items[0], before[-1], visitors=60)
    ids = [f"v-arm-{n:016d}" for n in range(40)]
    arm = {name: next(v for v in ids if assign("similar_api", v).name == name)
           for name in ("visual", "reranked")}
    token, shown = similar(client, items[0], visitor=arm["visual"])
    assert shown == before and read(token).variant == "visual"
    token, shown = similar(client, items[0], visitor=arm["reranked"])
    assert shown != before and read(token).variant == "reranked"


def test_the_tag_serves_the_re_ranked_list(client, items):
    before = visual_order(items[0])
    shoppers_click(client, items[0], before[-1], visitors=60)
    request = RequestFactory().get("/")
    request.COOKIES["vr_vid"] = "v-tag-reader-0000001"
    html = Template("{% load visual_reco %}{% visually_similar obj limit=5 %}").render(
        Context({"obj": items[0], "request": request}))
    shown = [int(pk) for pk in re.findall(r'data-pk="(\d+)"', html)]
    assert shown == [row.pk for row in ranked_similar(items[0], limit=5)] != before


def test_what_a_visitor_bought_or_dismissed_leaves_its_lists_at_once(client, items, settings):
    ranking(settings, PERSONAL_WEIGHT=0)  # the order of the rest stays visual
    before = visual_order(items[0])
    token, shown = similar(client, items[0], visitor="v-buyer-000000000001")
    client.post(EVENTS, json.dumps({"events": [
        {"type": "dismiss", "event_id": "d1", "token": token, "product": str(shown[1]),
         "ts": int(time.time() * 1000)}]}), content_type="application/json")
    request = RequestFactory().post("/checkout/")
    request.COOKIES["vr_vid"] = "v-buyer-000000000001"
    record(request, "purchase", shown[0], event_id="order-1")
    after = similar(client, items[0], visitor="v-buyer-000000000001")[1]
    assert after == [pk for pk in visual_order(items[0], 5) if pk not in shown[:2]][:5]
    assert shown[0] not in after and shown[1] not in after  # no roll-up needed
    assert similar(client, items[0], visitor="v-someone-else-0001")[1] == before
    ranking(settings, HIDE=[], PERSONAL_WEIGHT=0)
    assert similar(client, items[0], visitor="v-buyer-000000000001")[1] == before


def test_a_visitor_s_categories_lean_its_lists(client, items, settings):
    before = visual_order(items[0])
    cups = [pk for pk in before if Item.objects.get(pk=pk).category == "cups"]
    request = RequestFactory().post("/checkout/")
    request.COOKIES["vr_vid"] = "v-cup-lover-0000001"
    record(request, "purchase", items[5].pk, event_id="order-cups")  # item 5: a cup
    ranking(settings, PERSONAL_WEIGHT=1.0)
    leaning = similar(client, items[0], visitor="v-cup-lover-0000001")[1]
    other_cups = [pk for pk in cups if pk != items[5].pk]
    assert other_cups and leaning[:len(other_cups)] == other_cups  # in their visual order
    assert items[5].pk not in leaning  # bought
    assert similar(client, items[0], visitor="v-someone-else-0002")[1] == before


RED, BLUE = (200, 30, 30), (30, 60, 200)


def paint(items, rgb):
    """Give ``items`` the colour vector of a photo of plain ``rgb``."""
    vector = colour_vector(np.full((64, 64, 3), rgb, dtype=np.uint8))
    Item.objects.filter(pk__in=[getattr(item, "pk", item) for item in items]).update(
        embedding_colour=vector)


def test_a_visitor_s_colour_leans_its_lists(client, items, settings):
    before = visual_order(items[0])  # item 0 has no colour: the visual order is by shape
    red = before[-2:]
    paint([pk for pk in before if pk not in red], BLUE)
    paint(red, RED)
    clicked = Item.objects.get(pk=red[-1])
    request = RequestFactory().post("/")
    request.COOKIES["vr_vid"] = "v-red-lover-0000001"
    record(request, "click", clicked.pk, event_id="click-red")
    ranking(settings, PERSONAL_WEIGHT=0, PERSONAL_COLOUR_WEIGHT=1.0)
    leaning = similar(client, items[0], visitor="v-red-lover-0000001")[1]
    assert leaning == red + [pk for pk in before if pk not in red]  # each in visual order
    assert similar(client, items[0], visitor="v-no-history-000001")[1] == before
    rows = ranked_similar(items[0], limit=5, request=request)
    assert [row.reco_score - row.visual_score for row in rows] == pytest.approx(
        [1.0, 1.0, 0.0, 0.0, 0.0], abs=0.02)  # colour_similarity of red to red, to blue


def test_a_colour_weight_of_0_ranks_as_without_colours(client, items, settings):
    before = visual_order(items[0])
    request = RequestFactory().post("/")
    request.COOKIES["vr_vid"] = "v-red-lover-0000002"
    record(request, "click", before[-1], event_id="click-red-2")
    record(request, "click", items[5].pk, event_id="click-cup")  # a category to lean to
    ranking(settings, PERSONAL_WEIGHT=0.3, PERSONAL_COLOUR_WEIGHT=0)

    def served():
        return [(row.pk, row.visual_score, row.reco_score)
                for row in ranked_similar(items[0], limit=5, request=request)]

    without_colours = served()
    paint(before[-2:], RED)
    paint(before[:-2], BLUE)
    assert served() == without_colours
    assert [pk for pk, _, _ in without_colours] != before  # the category term is on
    ranking(settings, PERSONAL_WEIGHT=0.3, PERSONAL_COLOUR_WEIGHT=1.0)
    assert served() != without_colours
