"""The widget's script (visual_reco/static/visual_reco/feedback.js) in a real browser:
Debian's Chromium driven by Playwright, on the demo shop in production form (gunicorn, a
Celery worker, its own Postgres database and Redis, 18 embedded products).

A shopper sees the similar-products list, clicks an item, adds it to the cart and buys it:
the impressions and the click the script sends, and the cart and purchase the shop records
on the server, all land in the database credited to the same served list. A browser with
Global Privacy Control or Do Not Track stores nothing. Skipped only where no Chromium binary
is installed (`.ci/run` installs Debian's).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import time
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, sync_playwright

from tests.shop_stack import Shop, running_shop

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.worker,
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (apt-get install chromium)"),
]

EVENTS = "/api/visual-reco/events/"
SCRIPT = "/static/visual_reco/feedback.js"
DEADLINE = 15.0  # seconds for a beacon to be stored: 1 s in view, at most 3 s queued
COOKIE = "vr_vid"
# Chromium has no Global Privacy Control switch yet; the property is what the script reads.
GPC_ON = "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true})"


@pytest.fixture(scope="module")
def shop(tmp_path_factory, django_db_blocker) -> Iterator[Shop]:
    """The demo shop with 18 embedded products on a database and a Redis of its own."""
    with running_shop(tmp_path_factory.mktemp("browser-shop"),
                      f"browser_{os.getpid()}") as shop:
        yield shop


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium from the system's package."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def poll(fetch: Callable[[], list], what: str, timeout: float = DEADLINE) -> list:
    """Call ``fetch`` until it returns something non-empty; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (found := fetch()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
    return found


def events(shop: Shop, where: str = "TRUE", params: tuple = ()) -> list[tuple]:
    """Stored events as (type, product, surface, variant, position, list_id, quantity,
    revenue, visitor, event_id), oldest first."""
    return shop.query(
        "SELECT type, product, surface, variant, position, list_id, quantity, revenue, "
        f"visitor, event_id FROM visual_reco_feedbackevent WHERE {where} ORDER BY id", params)


def watch_events(context: BrowserContext) -> list[Request]:
    """The requests the context makes to the events endpoint, as they happen."""
    sent: list[Request] = []
    context.on("request", lambda request: sent.append(request)
               if request.url.endswith(EVENTS) else None)
    return sent


def source_product(shop: Shop) -> int:
    """The product whose page the shopper opens first."""
    return shop.query("SELECT min(id) FROM shop_product")[0][0]


def buy(page: Page, product: str) -> str:
    """Add ``product`` to the cart from its page (the page must show it), buy the cart;
    return the order's id."""
    assert page.url.endswith(f"/products/{product}/"), page.url
    with page.expect_navigation():
        page.get_by_role("button", name="Add to cart").click()
    assert page.url.endswith("/cart/")
    with page.expect_navigation():
        page.get_by_role("button", name="Buy").click()
    return page.locator("#order-id").inner_text() if page.locator("#order-id").count() else ""


# The product page's "You may also like" (its "Picked for you" is a list of its own).
SIMILAR_LIST = "section.visual-reco:not(.visual-reco--picks)"


def test_impressions_click_cart_and_purchase_are_credited_to_the_list(shop, browser):
    # The list starts below the fold: nothing of it is in view before the page scrolls.
    context = browser.new_context(viewport={"width": 1280, "height": 700})
    sent = watch_events(context)
    page = context.new_page()
    page.goto(f"{shop.base}/products/{source_product(shop)}/")
    widget = page.locator(f"{SIMILAR_LIST}[data-vr-token]")
    token = widget.get_attribute("data-vr-token")
    list_id = hashlib.blake2b(token.encode(), digest_size=8).hexdigest()
    visitor = widget.get_attribute("data-vr-visitor")
    assert visitor, "a new visitor's page hands the script an id"
    page.wait_for_function(f"document.cookie.includes('{COOKIE}=')", timeout=5000)
    (cookie,) = [c for c in context.cookies() if c["name"] == COOKIE]
    assert cookie["value"] == visitor and cookie["path"] == "/" and cookie["sameSite"] == "Lax"
    assert 364 * 86400 < cookie["expires"] - time.time() <= 365 * 86400
    # Included again (a second list, a shop's own tag): still one instance, one event each.
    page.add_script_tag(url=SCRIPT)
    page.add_script_tag(url=SCRIPT)
    assert page.evaluate("typeof window.visualReco.scan") == "function"
    items = widget.locator("li.visual-reco__item")
    positions = {items.nth(i).get_attribute("data-pk"): int(items.nth(i).get_attribute(
        "data-position")) for i in range(items.count())}
    assert len(positions) == 8
    # A glance (half a second in view) is no impression.
    widget.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(1000)
    page.evaluate("window.visualReco.flush()")
    page.wait_for_timeout(300)
    assert not sent, "an item seen for less than a second was counted"

    widget.scroll_into_view_if_needed()
    seen = poll(lambda: events(shop, "type = 'impression' AND list_id = %s", (list_id,)),
                "an impression sent by the timer")
    assert {(row[2], row[3]) for row in seen} == {("similar", "control")}
    assert all(positions[row[1]] == row[4] for row in seen)
    # Scrolled away and back: an item counts once per page.
    page.evaluate("window.scrollTo(0, 0)")
    widget.scroll_into_view_if_needed()
    page.wait_for_timeout(1500)

    clicked = widget.locator('li.visual-reco__item[data-position="2"]')
    product = clicked.get_attribute("data-pk")
    with page.expect_navigation():
        clicked.locator("a").click()
    click = poll(lambda: events(shop, "type = 'click' AND list_id = %s", (list_id,)),
                 "the click, sent as the page was left")
    assert [(row[1], row[2], row[4]) for row in click] == [(product, "similar", 2)]
    impressions = events(shop, "type = 'impression' AND list_id = %s", (list_id,))
    counted = [row[1] for row in impressions]
    assert len(counted) == len(set(counted)), "an item was counted twice"
    assert product in counted

    order = buy(page, product)
    assert order
    price = shop.query("SELECT price FROM shop_product WHERE id = %s", (int(product),))[0][0]
    (cart,) = events(shop, "type = 'add_to_cart'")
    (purchase,) = events(shop, "type = 'purchase'")
    for row in (cart, purchase):
        assert row[1:7] == (product, "similar", "control", 2, list_id, 1), row
        assert row[7] == Decimal(price)
    assert purchase[9] == f"{order}:{product}"
    visitors = {row[8] for row in events(shop)}
    assert len(visitors) == 1, "one shopper, one pseudonymous key"
    assert sent and all(request.method == "POST" for request in sent)
    context.close()

    # Shop staff see it in the admin's analytics once the roll-up ran (beat runs it).
    shop.manage("visual_reco_rollup_feedback")
    analytics = shop.session.get(f"{shop.base}/admin/visual_reco/feedbackdaily/", timeout=30)
    assert analytics.status_code == 200 and "<svg" in analytics.text
    export = shop.session.get(f"{shop.base}/admin/visual_reco/feedbackdaily/export.csv",
                              timeout=30)
    (row,) = [r for r in csv.DictReader(io.StringIO(export.text))
              if (r["surface"], r["variant"]) == ("similar", "control")]
    assert (int(row["clicks"]), int(row["add_to_carts"]), int(row["purchases"])) == (1, 1, 1)
    assert int(row["impressions"]) == len(set(counted))
    assert Decimal(row["revenue"]) == Decimal(price)


def listed(page: Page, section: str) -> list[str]:
    """The products a list on the page shows, in order."""
    items = page.locator(f"{section} li.visual-reco__item")
    return [items.nth(i).get_attribute("data-pk") for i in range(items.count())]


PICKS_LIST = "section.visual-reco--picks"


def test_clicking_and_buying_change_the_next_pages(shop, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 2400})
    page = context.new_page()
    source = source_product(shop)
    page.goto(f"{shop.base}/products/{source}/")
    before = listed(page, SIMILAR_LIST)
    assert page.locator(PICKS_LIST).get_attribute("data-source") == "best_sellers"
    page.wait_for_timeout(1500)  # every item in view for a second: impressions
    clicked = page.locator(f'{SIMILAR_LIST} li.visual-reco__item[data-position="3"]')
    product = clicked.get_attribute("data-pk")
    with page.expect_navigation():
        clicked.locator("a").click()
    # The next page's picks already follow the click (what was opened is not picked).
    poll(lambda: events(shop, "type = 'click' AND product = %s", (product,)), "the click")
    page.reload()
    assert page.locator(PICKS_LIST).get_attribute("data-source") == "taste"
    assert product not in listed(page, PICKS_LIST)
    buy(page, product)
    # Bought: gone from this shopper's "You may also like" at once (the rest leans to the
    # category it bought from).
    page.goto(f"{shop.base}/products/{source}/")
    after = listed(page, SIMILAR_LIST)
    context.close()
    assert product not in after and len(after) == len(before)
    # Once the roll-up ran (the demo's beat runs it every 15 s), every shopper sees the
    # clicked and bought product higher on that page.
    shop.manage("visual_reco_rollup_feedback")

    def position_for_a_new_shopper() -> list[int]:
        found = shop.session.get(f"{shop.base}/api/visual-reco/products/{source}/similar/",
                                 timeout=10).json()["results"]
        ids = [row["id"] for row in found]
        return [ids.index(product) + 1] if product in ids[:2] else []

    assert poll(position_for_a_new_shopper, "the product to move up", timeout=30)[0] < 3


@pytest.mark.parametrize("privacy", ["global privacy control", "do not track"])
def test_a_browser_that_asks_not_to_be_tracked_stores_nothing(shop, browser, privacy):
    stored_before = len(events(shop))
    if privacy == "do not track":
        context = browser.new_context(extra_http_headers={"DNT": "1"})
    else:
        context = browser.new_context()
        context.add_init_script(GPC_ON)  # the script alone: the server is not told
    sent = watch_events(context)
    page = context.new_page()
    page.goto(f"{shop.base}/products/{source_product(shop)}/")
    widget = page.locator(SIMILAR_LIST)
    token = widget.get_attribute("data-vr-token")
    assert (token is None) == (privacy == "do not track")
    widget.scroll_into_view_if_needed()
    page.wait_for_timeout(1500)  # past an impression's one second in view
    clicked = widget.locator('li.visual-reco__item[data-position="1"]')
    product = clicked.get_attribute("data-pk")
    with page.expect_navigation():
        clicked.locator("a").click()
    buy(page, product)
    assert page.locator("h1").inner_text() == "Thank you!"
    assert not sent
    assert COOKIE not in {cookie["name"] for cookie in context.cookies()}
    assert len(events(shop)) == stored_before
    context.close()


SHAPE_FIRST = ("same shape", "similar shape", "other shape")
COLOUR_FIRST = ("same colour", "similar colour", "other colour")


def test_the_similar_switch_works_without_javascript(shop, browser):
    source = source_product(shop)
    context = browser.new_context(java_script_enabled=False,
                                  viewport={"width": 1280, "height": 1600})
    page = context.new_page()
    page.goto(f"{shop.base}/products/{source}/")
    switch = page.get_by_role("navigation", name="Similar in what way")
    current = switch.locator("[aria-current]")
    assert current.count() == 1 and current.inner_text() == "Similar"
    captions = page.locator(f"{SIMILAR_LIST} .visual-reco__reason").all_inner_texts()
    assert len(captions) == 8 and all(c.startswith(SHAPE_FIRST) for c in captions), captions
    with page.expect_navigation():
        switch.get_by_role("link", name="Same colour").click()
    assert page.url.endswith(f"/products/{source}/?mode=same_colour#similar-modes")
    assert current.inner_text() == "Same colour"
    captions = page.locator(f"{SIMILAR_LIST} .visual-reco__reason").all_inner_texts()
    assert len(captions) == 8 and all(c.startswith(COLOUR_FIRST) for c in captions), captions
    with page.expect_navigation():
        switch.get_by_role("link", name="Other colours").click()
    assert "mode=same_style_other_colours" in page.url
    assert current.inner_text() == "Other colours"
    assert len(listed(page, SIMILAR_LIST)) == 8
    context.close()
    # A mode the shop does not know (an old or hand-made link) shows the default list.
    for query in ("?mode=bogus", "?mode=", "?mode=%00"):
        answer = shop.session.get(f"{shop.base}/products/{source}/{query}", timeout=30)
        assert answer.status_code == 200, query
        assert 'aria-current="true">Similar</a>' in answer.text
