"""Learning the ranking from feedback: a correction to the cosine of frozen vectors, trained
on served lists' clicks and skips, judged on the latest lists held back, served only when it
beats the visual order there, versioned by embedder fingerprint, parameters and data.

The catalogue is hand-made: each product's vector is its look (one of eight clusters, plus
noise) and, weakly, a hidden kind (``category`` h0..h3). Simulated shoppers click products
of the source's kind far more often, whatever they look like, under a position bias; the
visual order knows the kind only through that weak component.
"""

import io
from datetime import timedelta

import numpy as np
import pytest
from django.core.management import call_command
from django.utils import timezone

from tests.testapp.models import Item
from visual_reco.choices import EmbeddingStatus, EventType
from visual_reco.conf import DEFAULTS
from visual_reco.feedback.learned import (
    LearnedModel,
    forget_serving,
    serving_model,
    stored_vectors,
)
from visual_reco.feedback.learning import gather_feedback, learn, list_metrics, serve
from visual_reco.feedback.similar import ranked_similar
from visual_reco.models import FeedbackEvent, LearnedRanking
from visual_reco.query import vector_of
from visual_reco.tasks import learn_ranking_task

pytestmark = pytest.mark.django_db
PRODUCTS, LISTS, SHOWN = 200, 1500, 12
# Enough held-back lists for this data (the setting's default, 200, is for a real shop).
MIN_LISTS = 100


@pytest.fixture(autouse=True)
def fresh_cache():
    forget_serving()
    yield
    forget_serving()


@pytest.fixture
def catalogue():
    """PRODUCTS items with hand-set unit vectors: look cluster + noise + a weak hidden kind."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(8, 2048))
    kind_directions = rng.normal(size=(4, 2048))
    looks, kinds = rng.integers(0, 8, PRODUCTS), rng.integers(0, 4, PRODUCTS)
    vectors = (centres[looks] + 0.9 * rng.normal(size=(PRODUCTS, 2048))
               + 0.15 * kind_directions[kinds])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    Item.objects.bulk_create([
        Item(name=f"p{i}", category=f"h{kinds[i]}", embedding=vectors[i].astype(np.float32),
             embedding_status=EmbeddingStatus.READY) for i in range(PRODUCTS)])
    items = list(Item.objects.order_by("pk"))
    stored = np.stack([vector_of(item) for item in items]).astype(np.float64)
    return items, stored / np.linalg.norm(stored, axis=1, keepdims=True), kinds


def shop(catalogue, *, related: bool, seed: int = 0, lists: int = LISTS) -> int:
    """Simulated visits: each list is a source's SHOWN nearest products in the visual order;
    a shopper clicks a product of the source's kind with probability 0.35 (0.03 otherwise;
    0.1 for every product when not ``related``), less often lower down, and carts a fifth
    of what they click. Events are stored oldest first; returns how many."""
    items, vectors, kinds = catalogue
    rng = np.random.default_rng(seed)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    start = timezone.now() - timedelta(days=3)
    events = []
    for number in range(lists):
        source = int(rng.integers(PRODUCTS))
        shown = np.argsort(-similarity[source], kind="stable")[:SHOWN]
        chance = (np.where(kinds[shown] == kinds[source], 0.35, 0.03) if related
                  else np.full(SHOWN, 0.1)) / (1 + 0.15 * np.arange(SHOWN))
        clicked = rng.random(SHOWN) < chance
        when = start + timedelta(seconds=60 * number)
        visitor = f"visitor-{number % 400:04d}"
        common = {"visitor": visitor, "surface": "similar", "source": str(items[source].pk),
                  "list_id": f"{number:016x}", "occurred_at": when}
        for position, index in enumerate(shown, start=1):
            product = str(items[index].pk)
            kinds_done = [EventType.IMPRESSION]
            if clicked[position - 1]:
                kinds_done.append(EventType.CLICK)
                if rng.random() < 0.2:
                    kinds_done.append(EventType.ADD_TO_CART)
            events += [FeedbackEvent(type=kind, product=product, position=position,
                                     event_id=f"{number}-{kind}-{product}", **common)
                       for kind in kinds_done]
    FeedbackEvent.objects.bulk_create(events, batch_size=5000)
    return len(events)


def same_kind_share(catalogue, ranked: bool, sources: range) -> float:
    """The share of the top 4 similar products that are of the source's kind."""
    items, _, kinds = catalogue
    kind_of = {item.pk: kinds[i] for i, item in enumerate(items)}
    hits = []
    for source in sources:
        rows = ranked_similar(items[source], limit=4)
        hits += [kind_of[row.pk] == kinds[source] for row in rows]
    return float(np.mean(hits))


def ranking(settings, **options):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "RANKING": {"EXPLORE": 0.0, **options}}


# the arithmetic
def test_an_untrained_model_is_the_cosine_and_the_score_is_symmetric():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=64), rng.normal(size=(5, 64))
    cosine = (y / np.linalg.norm(y, axis=1, keepdims=True)) @ (x / np.linalg.norm(x))
    zero = LearnedModel("v", "f", rng.normal(size=(64, 4)).astype(np.float32),
                        np.zeros((64, 4), np.float32))
    assert np.allclose(zero.scores(x, y), cosine, atol=1e-6)
    trained = LearnedModel("v", "f", *rng.normal(size=(2, 64, 4)).astype(np.float32))
    assert trained.scores(x, y[:1])[0] == pytest.approx(trained.scores(y[0], x[None])[0],
                                                        rel=1e-5)
    again = LearnedModel.from_row(LearnedRanking(version="v", fingerprint="f",
                                                 weights=trained.to_bytes()))
    assert np.array_equal(again.u, trained.u) and np.array_equal(again.v, trained.v)


def test_list_metrics_by_hand():
    # Clicked product (gain 1) ranked second of three: RR 1/2, AUC 1/2 (beats one of two).
    reciprocal, ndcg, auc = list_metrics(np.array([0.9, 0.8, 0.1]), np.array([0, 1.0, 0]), 8)
    assert reciprocal == 0.5 and auc == 0.5
    assert ndcg == pytest.approx(1 / np.log2(3))
    assert list_metrics(np.array([0.1, 0.8]), np.array([0, 1.0]), 8) == (1.0, 1.0, 1.0)


def test_vectors_are_read_as_binary_halfvec_exactly(catalogue):
    items = catalogue[0][:3]
    found = stored_vectors(Item, None, [item.pk for item in items])
    for item in items:
        assert np.array_equal(found[str(item.pk)], vector_of(item))


# learning, judging, serving
def test_clicks_on_a_hidden_relation_are_learned_and_served(catalogue, settings):
    shop(catalogue, related=True)
    out = io.StringIO()
    call_command("visual_reco_learn", "--min-lists", str(MIN_LISTS), stdout=out)
    text = out.getvalue()
    row = LearnedRanking.objects.get()
    metrics = row.metrics
    print(text)
    assert row.serving and "serving:" in text and "not serving" not in text
    assert metrics["lists"] >= MIN_LISTS
    assert metrics["learned"]["ndcg"] >= metrics["visual"]["ndcg"] + 0.03
    assert metrics["learned"]["auc"] > metrics["visual"]["auc"]
    assert metrics["z"] >= 2
    assert serving_model(Item).version == row.version


def test_random_clicks_are_not_served_and_the_order_stays_visual(catalogue, settings):
    shop(catalogue, related=False)
    result = learn(MIN_LISTS=MIN_LISTS)
    assert result.trained and result.saved and not result.serving
    assert not LearnedRanking.objects.filter(serving=True).exists()
    assert serving_model(Item) is None
    items = catalogue[0]
    for options in ({"RERANK": False}, {"RERANK": True}):
        ranking(settings, **options)
        plain = [(row.pk, row.reco_score) for row in ranked_similar(items[5], limit=6)]
        ranking(settings, LEARNED=True, **options)
        assert [(row.pk, row.reco_score) for row in ranked_similar(items[5], limit=6)] == plain


def test_with_no_version_learned_on_is_exactly_the_visual_order(catalogue, settings):
    items = catalogue[0]
    for options in ({"RERANK": False}, {"RERANK": True, "BOOST": {"in_stock": 0.0}}):
        ranking(settings, **options)
        before = [(row.pk, row.reco_score) for row in ranked_similar(items[0], limit=8)]
        ranking(settings, LEARNED=True, **options)
        assert [(row.pk, row.reco_score) for row in ranked_similar(items[0], limit=8)] == before


def test_the_served_version_moves_the_order_towards_what_shoppers_treat_as_alike(
        catalogue, settings):
    shop(catalogue, related=True)
    assert learn(MIN_LISTS=MIN_LISTS).serving
    sources = range(0, PRODUCTS, 5)
    ranking(settings, RERANK=False)
    visual = same_kind_share(catalogue, False, sources)
    ranking(settings, RERANK=False, LEARNED=True)
    learned = same_kind_share(catalogue, True, sources)
    print(f"same-kind share of the top 4: visual {visual:.3f}, learned {learned:.3f}")
    assert learned >= visual + 0.1
    rows = ranked_similar(catalogue[0][0], limit=4)
    assert all(row.reco_score is not None and row.visual_score is not None for row in rows)


def test_same_events_and_parameters_give_the_same_version(catalogue, settings):
    shop(catalogue, related=True, lists=600)
    settings.VISUAL_RECO = {**settings.VISUAL_RECO,
                            "LEARNING": {"MIN_LISTS": 10, "COPURCHASE_WEIGHT": 0.0}}
    first = learn()
    again = learn()
    assert again.version == first.version and first.trained and not again.trained
    assert again.serving == first.serving and again.metrics == first.metrics
    assert LearnedRanking.objects.count() == 1
    assert learn_ranking_task()["version"] == first.version  # the beat task: nothing new
    smaller = learn(RANK=8)
    assert smaller.version != first.version and smaller.trained
    shop(catalogue, related=True, lists=1, seed=9)  # one more list: new data
    assert learn(RANK=8).version not in {first.version, smaller.version}
    dry = learn(SEED=5, dry_run=True)
    assert dry.trained and not dry.saved and not dry.serving
    assert not LearnedRanking.objects.filter(version=dry.version).exists()


def test_a_version_trained_on_another_embedders_vectors_never_serves(catalogue, settings):
    shop(catalogue, related=True)
    row_version = learn(MIN_LISTS=MIN_LISTS).version
    row = LearnedRanking.objects.get(version=row_version)
    assert row.serving
    ranking(settings, RERANK=False)
    visual = [item.pk for item in ranked_similar(catalogue[0][0], limit=6)]
    config = settings.VISUAL_RECO.get("EMBEDDER") or DEFAULTS["EMBEDDER"]
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "RANKING": {"RERANK": False,
                                                                "LEARNED": True},
                            "EMBEDDER": {**config, "OPTIONS": {**config["OPTIONS"],
                                                               "input_size": 224}}}
    assert serving_model(Item) is None
    assert [item.pk for item in ranked_similar(catalogue[0][0], limit=6)] == visual
    with pytest.raises(ValueError, match="another embedder|trained on vectors"):
        serve(row)


def test_the_admin_shows_the_serving_version_and_its_numbers(catalogue, admin_client):
    shop(catalogue, related=True)
    version = learn(MIN_LISTS=MIN_LISTS).version
    page = admin_client.get("/admin/visual_reco/learnedranking/")
    html = page.content.decode()
    assert page.status_code == 200
    assert version in html and "NDCG visual → learned" in html
    row = LearnedRanking.objects.get()
    assert f"{row.metrics['visual']['ndcg']} → {row.metrics['learned']['ndcg']}" in html
    response = admin_client.post("/admin/visual_reco/learnedranking/", {
        "action": "retire_version", "_selected_action": [row.pk]})
    assert response.status_code == 302
    assert not LearnedRanking.objects.get().serving and serving_model(Item) is None
    admin_client.post("/admin/visual_reco/learnedranking/", {
        "action": "serve_version", "_selected_action": [row.pk]})
    assert LearnedRanking.objects.get().serving


@pytest.mark.django_db
def test_only_the_latest_max_events_are_read(catalogue):
    now = timezone.now()
    made = FeedbackEvent.objects.bulk_create([
        FeedbackEvent(type="impression", occurred_at=now, visitor="v" * 32, event_id=f"m{n}",
                      surface="similar", variant="control", source=str(catalogue[0][0].pk),
                      product=str(catalogue[0][n + 1].pk), position=n % 8 + 1, list_id=f"l{n}")
        for n in range(10)])
    feedback = gather_feedback(Item, None, ["similar"], max_events=4)
    assert feedback.events == 4 and feedback.last_event == max(e.pk for e in made)
    assert gather_feedback(Item, None, ["similar"]).events == 10
