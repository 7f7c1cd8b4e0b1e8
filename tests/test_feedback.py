"""Shopper feedback: tokens on served lists, the events endpoint, server-side records with
last-touch attribution, A/B assignment and the privacy switches."""

import gzip
import json
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core import signing
from django.core.cache import caches
from django.template import Context, Template
from django.test import RequestFactory
from django.utils import timezone

import visual_reco
from tests.test_surfaces import render
from visual_reco.feedback import record
from visual_reco.feedback.experiments import assign
from visual_reco.feedback.tokens import BadToken, issue, read
from visual_reco.feedback.visitors import visitor_key
from visual_reco.models import EventType, FeedbackEvent

pytestmark = pytest.mark.django_db
VISITOR = "visitor-id-0123456789abcdef"
EVENTS = "/api/visual-reco/events/"


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def visitor(client):
    client.cookies["vr_vid"] = VISITOR
    return client


@pytest.fixture
def served(visitor, items):
    """The similar list of item 0 as the API served it to the visitor: (token, ids)."""
    body = visitor.get(f"/api/visual-reco/products/{items[0].pk}/similar/?limit=4").json()
    return body["token"], [result["id"] for result in body["results"]]


def post(client, events, **headers):
    return client.post(EVENTS, json.dumps({"events": events}),
                       content_type="application/json", **headers)


def event(token, product, type="impression", event_id=None, **extra):
    return {"type": type, "event_id": event_id or f"e-{type}-{product}", "token": token,
            "product": product, "ts": now_ms(), **extra}


# tokens
def test_a_token_records_the_list_and_cannot_be_forged(settings):
    token = issue("similar", 7, [3, 1, 2], variant="control", fingerprint="xception:abcdef")
    served = read(token)
    assert (served.surface, served.source, served.variant) == ("similar", "7", "control")
    assert served.products == ("3", "1", "2") and served.position_of("2") == 3
    assert served.fingerprint == "abcdef" and len(served.list_id) == 16
    payload, rest = token.split(":", 1)
    with pytest.raises(BadToken, match="altered"):
        read(payload[:-2] + "xx:" + rest)
    settings.SECRET_KEY = "another shop's secret key, fifty characters or longer!!"
    with pytest.raises(BadToken, match="not issued by this shop"):
        read(token)


def test_a_token_expires(settings, monkeypatch):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "FEEDBACK": {"TOKEN_MAX_AGE": 60}}
    token = issue("similar", 1, [2])
    assert read(token).products == ("2",)
    later = time.time() + 61
    monkeypatch.setattr(signing.time, "time", lambda: later)
    with pytest.raises(BadToken, match="expired"):
        read(token)


# visitors, privacy, experiments
def test_the_visitor_key_is_a_keyed_hash_that_rotates(settings):
    now = timezone.now()
    key = visitor_key(VISITOR, now)
    assert len(key) == 32 and VISITOR not in key
    assert visitor_key(VISITOR, now) == key
    assert visitor_key(VISITOR, now + timedelta(days=31)) != key
    settings.SECRET_KEY = "x" * 60
    assert visitor_key(VISITOR, now) != key


def test_assignment_is_stable_and_follows_the_shares(settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "FEEDBACK": {"EXPERIMENTS": {"similar": {
        "VARIANTS": {"control": {"SHARE": 70}, "boosted": {"SHARE": 30}}}}}}
    names = [assign("similar", f"visitor-{i:06d}-abcdefgh").name for i in range(4000)]
    assert abs(names.count("boosted") / len(names) - 0.30) < 0.03
    assert assign("similar", "visitor-000001-abcdefgh").name == names[1]
    assert assign("photo_search", "visitor-000001-abcdefgh").name == "control"  # no test there
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "FEEDBACK": {"EXPERIMENTS": {"similar": {
        "ENABLED": False, "VARIANTS": {"control": {"SHARE": 70}, "boosted": {"SHARE": 30}}}}}}
    assert {assign("similar", f"visitor-{i:06d}-abcdefgh").name for i in range(200)} == {
        "control"}


@pytest.mark.parametrize("header", [{"HTTP_DNT": "1"}, {"HTTP_SEC_GPC": "1"}])
def test_do_not_track_and_global_privacy_control_mean_no_tracking(visitor, items, header):
    body = visitor.get(f"/api/visual-reco/products/{items[0].pk}/similar/", **header).json()
    assert body["token"] is None
    token = issue("similar_api", items[0].pk, [items[1].pk])
    response = post(visitor, [event(token, str(items[1].pk))], **header)
    assert response.status_code == 200 and response.json()["stored"] == 0
    assert not FeedbackEvent.objects.exists()
    request = RequestFactory().get("/", **header)
    request.COOKIES["vr_vid"] = VISITOR
    assert record(request, "purchase", items[1], price="10") is None


def never(request):
    return False


def test_the_consent_hook_can_refuse(visitor, items, settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO,
                            "FEEDBACK": {"CONSENT": "tests.test_feedback.never"}}
    body = visitor.get(f"/api/visual-reco/products/{items[0].pk}/similar/").json()
    assert body["token"] is None


def test_a_new_visitor_gets_an_id_cookie_and_a_token(client, items):
    response = client.get(f"/api/visual-reco/products/{items[0].pk}/similar/")
    assert response.json()["token"]
    cookie = response.cookies["vr_vid"]
    assert len(cookie.value) >= 16 and cookie["samesite"] == "Lax"


def test_the_tag_carries_the_token_for_the_script(items):
    html = render("{% visually_similar item limit=3 %}", item=items[0])
    assert 'data-vr-token="' in html and 'data-vr-events="/api/visual-reco/events/"' in html
    assert 'data-vr-visitor="' in html  # a new visitor: the script keeps this id
    token = html.split('data-vr-token="', 1)[1].split('"', 1)[0]
    assert read(token).products == tuple(str(item.pk) for item in items[1:4])


# the widget's script
SCRIPT = Path(visual_reco.__file__).parent / "static" / "visual_reco" / "feedback.js"


def test_the_widget_script_is_at_most_3_kb_gzipped():
    assert len(gzip.compress(SCRIPT.read_bytes(), compresslevel=9)) <= 3 * 1024


@pytest.mark.parametrize("headers, tracked", [({}, True), ({"HTTP_DNT": "1"}, False),
                                              ({"HTTP_SEC_GPC": "1"}, False)])
def test_the_tag_includes_the_script_only_when_tracking(items, headers, tracked):
    request = RequestFactory().get("/", **headers)
    html = Template("{% load visual_reco %}{% visually_similar item limit=3 %}").render(
        Context({"request": request, "item": items[0]}))
    assert html.count('<script src="/static/visual_reco/feedback.js" defer></script>') == tracked
    assert ("data-vr-token=" in html) == tracked


# the events endpoint
def test_a_batch_is_stored_once(visitor, served):
    token, ids = served
    batch = [event(token, ids[0]), event(token, ids[1]),
             event(token, ids[1], "click", position=2)]
    first = post(visitor, batch)
    assert first.status_code == 200 and first.json() == {"stored": 3, "duplicates": 0}
    again = post(visitor, batch)  # a beacon resent after a lost answer
    assert again.json() == {"stored": 0, "duplicates": 3}
    twice = event(token, ids[2], event_id="same")
    assert post(visitor, [twice, twice]).json() == {"stored": 1, "duplicates": 1}
    click = FeedbackEvent.objects.get(type=EventType.CLICK)
    assert (click.surface, click.variant, click.position) == ("similar_api", "control", 2)
    assert click.visitor == visitor_key(VISITOR) and click.user_id == ""
    assert FeedbackEvent.objects.count() == 4


BAD_EVENTS = {
    "unknown field": ({"colour": "red"}, "unknown field 'colour'"),
    "bad type": ({"type": "like"}, r"events\[1\].type"),
    "purchase from the browser": ({"type": "purchase"}, "order code"),
    "future": ({"ts": now_ms() + 3_600_000}, "future"),
    "too old": ({"ts": now_ms() - 30 * 86_400_000}, "older than"),
    "ts not a number": ({"ts": "yesterday"}, "milliseconds"),
    "product not served": ({"product": "999999"}, "not in the list"),
    "wrong position": ({"position": 4}, "position 1"),
    "forged token": ({"token": "abc:def:ghi"}, "not issued by this shop"),
    "bad event id": ({"event_id": "x" * 65}, "event_id"),
    "bad quantity": ({"quantity": 0}, "quantity"),
}


@pytest.mark.parametrize("case", BAD_EVENTS)
def test_a_bad_event_refuses_the_whole_batch_with_the_reason(visitor, served, case):
    token, ids = served
    change, reason = BAD_EVENTS[case]
    response = post(visitor, [event(token, ids[1]), {**event(token, ids[0]), **change}])
    assert response.status_code == 400
    assert response.json()["detail"].startswith("Nothing stored:")
    assert re.search(reason, response.json()["detail"])
    assert not FeedbackEvent.objects.exists()


@pytest.mark.parametrize("body, reason", [
    ("not json", "not JSON"), ('{"events": []}', "no events"), ('{"items": []}', "events"),
    ('{"events": [' + ",".join(["{}"] * 101) + "]}", "at most 100"),
])
def test_malformed_batches_are_400(visitor, body, reason):
    response = visitor.post(EVENTS, body, content_type="application/json")
    assert response.status_code == 400 and reason in response.json()["detail"]


def test_an_oversized_batch_is_400(visitor, served):
    token, ids = served
    body = json.dumps({"events": [event(token, ids[0])]}) + " " * 65536
    response = visitor.post(EVENTS, body, content_type="application/json")
    assert response.status_code == 400 and "larger than 65536 bytes" in response.json()["detail"]
    assert not FeedbackEvent.objects.exists()


def test_events_without_a_visitor_id_are_refused(client, items):
    token = issue("similar_api", items[0].pk, [items[1].pk])
    response = post(client, [event(token, str(items[1].pk))])
    assert response.status_code == 400 and "vr_vid" in response.json()["detail"]


def test_another_site_cannot_post_events(visitor, served):
    token, ids = served
    for headers in [{"HTTP_ORIGIN": "https://evil.example"},
                    {"HTTP_SEC_FETCH_SITE": "cross-site"}]:
        assert post(visitor, [event(token, ids[0])], **headers).status_code == 403
    same = post(visitor, [event(token, ids[0])], HTTP_ORIGIN="http://testserver",
                HTTP_SEC_FETCH_SITE="same-origin")
    assert same.status_code == 200


def test_event_batches_are_throttled_per_visitor(visitor, served, settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "THROTTLE_CACHE": "default",
                            "THROTTLE_RATES": {"events_visitor": "2/min"}}
    caches["default"].clear()
    token, ids = served
    statuses = [post(visitor, [event(token, ids[0], event_id=f"t{i}")]).status_code
                for i in range(3)]
    assert statuses == [200, 200, 429]


# server-side records
def test_a_purchase_is_credited_to_the_list_last_clicked(visitor, served, items):
    token, ids = served
    post(visitor, [event(token, ids[2], "click")])
    request = RequestFactory().post("/checkout/")
    request.COOKIES["vr_vid"] = VISITOR
    bought = record(request, "purchase", ids[2], quantity=2, price="12.50", event_id="order-1")
    assert (bought.surface, bought.position, bought.revenue) == ("similar_api", 3, 25)
    assert record(request, "purchase", ids[2], quantity=2, price="12.50", event_id="order-1")
    assert FeedbackEvent.objects.filter(type=EventType.PURCHASE).count() == 1  # once
    organic = record(request, "purchase", items[5], price=3)
    assert organic.surface == "" and organic.position is None


def test_a_click_outside_the_attribution_window_is_not_credited(visitor, served, settings):
    token, ids = served
    post(visitor, [event(token, ids[0], "click")])
    FeedbackEvent.objects.update(occurred_at=timezone.now() - timedelta(days=8))
    request = RequestFactory().post("/cart/")
    request.COOKIES["vr_vid"] = VISITOR
    assert record(request, "add_to_cart", ids[0]).surface == ""


def test_a_list_of_your_own_template_can_be_tracked(items):
    html = render('{% tracked_list "photo_search" "photo" products as tracking %}'
                  '<section class="visual-reco"{% if tracking %}'
                  '{% include "visual_reco/tracking_attributes.html" %}{% endif %}>',
                  products=items[2:5])
    token = html.split('data-vr-token="', 1)[1].split('"', 1)[0]
    served = read(token)
    assert (served.surface, served.source) == ("photo_search", "photo")
    assert served.products == tuple(str(item.pk) for item in items[2:5])
    assert 'data-vr-events="/api/visual-reco/events/"' in html
    request = RequestFactory().get("/", HTTP_SEC_GPC="1")
    untracked = Template('{% load visual_reco %}{% tracked_list "photo_search" "photo" p as t %}'
                         '{{ t|default:"none" }}').render(Context({"request": request,
                                                                   "p": items[2:5]}))
    assert untracked == "none"
