"""The feedback simulation of docs/FEEDBACK.md, tiny, end to end: simulated visitors on the 18
kitchenware photos (embedded by the real embedder) through the real similar API, events API,
``record()`` and roll-up, then the report with its plot."""

from __future__ import annotations

import numpy as np
import pytest
from django.test.utils import override_settings

from demo_shop.bench.feedback_sim import (
    NOISE_SD,
    PICKS_SURFACE,
    SIMILAR_SURFACE,
    Catalog,
    Ceilings,
    LooksScenario,
    Options,
    PicksCeilings,
    Report,
    SessionLog,
    Simulator,
    SurfaceLog,
    Visitor,
    cascade_ctr,
    event_counts,
    expected_sigmoid,
    lift,
    picks_gap,
    rollup_counts,
    run_scenario,
    simulation_settings,
    summarize,
)
from tests.conftest import upload
from visual_reco.choices import EmbeddingStatus
from visual_reco.evaluation.embedding import embed_paths

VARIANTS = {"visual": {"RERANK": False}, "reranked": {"RERANK": True}}
FAMILIES = ["blue", "warm", "neutral"]


@pytest.fixture(scope="module")
def embedded(photos):
    found = embed_paths([photo.path for photo in photos], progress=False)
    assert not found.errors
    return found.vectors


@pytest.fixture
def catalog(photos, embedded):
    from tests.testapp.models import Item

    pks = []
    for index, photo in enumerate(photos):
        item = Item.objects.create(name=f"{photo.label} {photo.ident}", category=photo.label,
                                   photo=upload(photo.path))
        Item.objects.filter(pk=item.pk).update(embedding=embedded[index],
                                               embedding_status=EmbeddingStatus.READY)
        pks.append(str(item.pk))
    return Catalog(pks, embedded.astype(np.float64), [photo.label for photo in photos],
                   [FAMILIES[i % len(FAMILIES)] for i in range(len(photos))])


@pytest.mark.django_db
@pytest.mark.parametrize("scenario", ["looks", "unrelated"])
def test_a_tiny_simulation_goes_through_the_real_path(catalog, scenario, tmp_path):
    rounds = []
    options = Options(scenario=scenario, sessions=30, rounds=2, seed=5, limit=4,
                      after_round=rounds.append)
    with override_settings(VISUAL_RECO=simulation_settings(VARIANTS, {}, {})):
        result = run_scenario(catalog, options)
        again = run_scenario(catalog, options)  # tables emptied first, same visitors
    assert rounds == [1, 2, 1, 2]
    logs = result["logs"]
    assert len(logs) == 30 and {log.round for log in logs} == {1, 2}
    # Both variants were assigned by the real A/B code, each visit to one for good.
    assert {log.surfaces[SIMILAR_SURFACE].variant for log in logs} == set(VARIANTS)
    assert [log.surfaces[SIMILAR_SURFACE].variant for log in again["logs"]] == \
        [log.surfaces[SIMILAR_SURFACE].variant for log in logs]
    # What the simulator did is what the events table holds, and what the roll-up counted.
    stored = event_counts()
    for (surface, variant), counts in again["counts"].items():
        assert stored[(surface, variant, "impression")] == counts["impressions"] > 0
        assert stored.get((surface, variant, "click"), 0) == counts["clicks"]
        assert stored.get((surface, variant, "purchase"), 0) == counts["purchases"]
    assert result["agrees"] and again["agrees"]
    assert rollup_counts() == again["counts"]
    assert sum(c["clicks"] for c in again["counts"].values()) > 0
    # CTR per variant with an interval around it.
    rows = summarize(logs, SIMILAR_SURFACE)
    for name, row in rows.items():
        lists = sum(log.surfaces[SIMILAR_SURFACE].lists for log in logs
                    if log.surfaces[SIMILAR_SURFACE].variant == name)
        assert row.impressions == 4 * lists
        assert 0 < row.ctr < 1 and row.ctr_ci.low <= row.ctr <= row.ctr_ci.high
    gain = lift(rows["reranked"], rows["visual"])
    assert gain.low <= gain.value <= gain.high

    out = tmp_path / "FEEDBACK.md"
    Report({scenario: result}, {"sessions": 30, "rounds": 2, "seed": 5}, ["a note"],
           len(catalog), 1.0, VARIANTS, out, command="test").write()
    text = out.read_text()
    assert "| 2 | reranked |" in text and "a note" in text
    assert (tmp_path / "feedback_ctr.png").stat().st_size > 0


@pytest.mark.django_db
def test_returning_visitors_keep_their_id_variant_and_tastes(catalog, tmp_path):
    options = Options(scenario="unrelated", sessions=40, rounds=3, seed=5, limit=4,
                      return_rate=0.7)
    with override_settings(VISUAL_RECO=simulation_settings(VARIANTS, {}, {})):
        result = run_scenario(catalog, options)
        again = run_scenario(catalog, options)
    logs = result["logs"]
    first_round: dict[str, int] = {}
    variant: dict[str, str] = {}
    visits: dict[str, int] = {}
    for log in logs:
        first_round.setdefault(log.visitor, log.round)
        visits[log.visitor] = visits.get(log.visitor, 0) + 1
        assert log.visit == visits[log.visitor]
        # A visitor comes back only in a later round, in the variant it had.
        assert log.visit == 1 or log.round > first_round[log.visitor]
        assert variant.setdefault(log.visitor, log.surfaces[SIMILAR_SURFACE].variant) == \
            log.surfaces[SIMILAR_SURFACE].variant
    assert all(log.visit == 1 for log in logs if log.round == 1)
    assert result["visitors"] == len(visits) < len(logs) == 40
    # The same seed, the same visitors and visits.
    assert [(log.visitor, log.visit) for log in again["logs"]] == \
        [(log.visitor, log.visit) for log in logs]
    assert result["agrees"] and again["agrees"]
    # The report says which visitor model ran.
    out = tmp_path / "FEEDBACK.md"
    Report({"unrelated": result}, {"sessions": 40, "rounds": 3, "seed": 5, "return_rate": 0.7},
           [], len(catalog), 1.0, VARIANTS, out, command="test").write()
    text = out.read_text()
    assert "70% of the visits are by a returning visitor" in text
    assert f"40 visits by {len(visits)} visitors" in text


def test_a_returning_visitor_is_the_same_visitor():
    catalog = Catalog(["1", "2", "3", "4"], np.eye(4), ["cup"] * 4, FAMILIES + ["blue"])
    simulator = Simulator(catalog, Options(scenario="unrelated", seed=5, return_rate=1.0))
    first = simulator.visitor(0)
    assert first.id.endswith("0000000") and first.visits == 0
    brands = [first.brand_of(product) for product in range(4)]
    simulator.visitors.append(first)
    back = simulator.visitor(1)
    # The same tastes and the same brands seen in products, not drawn again.
    assert back is first and [back.brand_of(product) for product in range(4)] == brands
    never = Simulator(catalog, Options(scenario="unrelated", seed=5, return_rate=0.0))
    never.visitors.append(first)
    assert never.visitor(1).id.endswith("0000001")


def test_a_visitors_brands_do_not_depend_on_what_it_looked_at_first():
    catalog = Catalog([str(i) for i in range(40)], np.eye(40), ["cup"] * 40, ["blue"] * 40)
    one, other = (Simulator(catalog, Options(scenario="unrelated", seed=5)).visitor(3)
                  for _ in range(2))
    forwards = [one.brand_of(product) for product in range(40)]
    backwards = [other.brand_of(product) for product in reversed(range(40))][::-1]
    assert forwards == backwards and len(set(forwards)) > 1


def test_expected_sigmoid_is_the_mean_over_the_noise():
    rng = np.random.default_rng(0)
    logits = [-3.0, -0.5, 0.0, 2.0]
    sampled = [np.mean(1 / (1 + np.exp(-(x + rng.normal(0, NOISE_SD, 400_000)))))
               for x in logits]
    assert np.allclose(expected_sigmoid(logits), sampled, atol=1e-3)
    # Noise pulls a click probability towards one half, so it differs from sigmoid(logit).
    assert expected_sigmoid([-3.0])[0] > 1 / (1 + np.exp(3.0)) + 0.003


@pytest.mark.parametrize("scenario", ["looks", "unrelated"])
def test_expected_clicks_are_what_the_sampled_clicks_average(scenario):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(12, 6))
    catalog = Catalog([str(i) for i in range(12)], vectors, ["cup", "mug"] * 6,
                      ["blue", "warm", "neutral"] * 4)
    simulator = Simulator(catalog, Options(scenario=scenario, seed=5))
    visitor = simulator.visitor(0)
    ids = ["3", "6", "unknown", "1", "10"]
    expected = simulator.expected_clicks(visitor, 0, ids)
    draws = np.random.default_rng(2)
    clicks = sum(simulator._cascade(visitor, 0, ids, draws) is not None
                 for _ in range(40_000))
    # A list gets at most one click; 40,000 reads put the mean within about 0.005.
    assert 0.05 < expected < 1 and abs(clicks / 40_000 - expected) < 0.015
    # Order matters under the cascade: the most attractive first gets more clicks.
    attraction = simulator.scenario.expected_attraction(visitor, 0, [3, 6, 1, 10])
    best = [str(item) for _, item in sorted(zip(-attraction, [3, 6, 1, 10], strict=True))]
    assert simulator.expected_clicks(visitor, 0, best) > simulator.expected_clicks(
        visitor, 0, best[::-1])


def toy_catalog(seed: int) -> Catalog:
    """30 products of random shape and colour vectors, 3 categories, 4 colour families."""
    rng = np.random.default_rng(seed)
    n = 30
    return Catalog([str(i) for i in range(n)], rng.normal(size=(n, 8)),
                   ["cup", "mug", "jug"] * 10, ["blue", "warm", "neutral", "green", "blue"] * 6,
                   rng.normal(size=(n, 5)))


def test_ceilings_order_what_knowing_more_of_the_click_model_gains():
    catalog = toy_catalog(3)
    looks = LooksScenario(catalog, seed=4)
    ceilings = looks.ceilings(pool=12, limit=4)
    # Knowing each visitor's tastes beats any one order per page, which beats the visual one.
    assert ceilings.personal >= max(ceilings.fixed, ceilings.appeal) > 0
    # Without appeal differences, what product click rates learn is worth nothing.
    looks.appeal[:] = 0.0
    assert abs(looks.ceilings(pool=12, limit=4).appeal) < 1e-12
    # A scenario where no order is better than another has no ceiling above the visual one.
    assert Simulator(catalog, Options(scenario="unrelated")).scenario.ceilings(12, 4) == \
        Ceilings()


def test_cascade_ctr_of_each_row_is_that_of_the_row_alone():
    # Position 2 is read 0.85 of the time after no click on position 1: (0.5 + 0.85 x 0.5
    # x 0.4) / 2 clicks per impression.
    assert cascade_ctr([0.5, 0.4]) == pytest.approx(0.335)
    rows = np.random.default_rng(1).uniform(size=(5, 6))
    assert np.allclose(cascade_ctr(rows), [cascade_ctr(row) for row in rows])
    assert cascade_ctr([]) == 0.0


def test_picks_ceilings_order_what_knowing_more_of_the_visitor_gains():
    catalog = toy_catalog(3)
    looks = LooksScenario(catalog, seed=4)
    # The vectorised attraction is the click model's, taste by taste.
    keys, _ = looks._tastes()
    families, categories = np.array(catalog.families), np.array(catalog.categories)
    family = np.array([families == f for f, _ in keys], dtype=int)
    category = np.array([categories == c for _, c in keys], dtype=int)
    attraction, cart = looks._page_attraction(7, family, category)
    for row, taste in enumerate(keys):
        assert np.allclose(attraction[row],
                           looks._taste_attraction(taste, 7, np.arange(len(catalog))))
    assert set(np.unique(cart).round(2)) <= {0.08, 0.18, 0.28}
    ceilings = looks.picks_ceilings(limit=4)
    # Sorted by a visitor's own attraction is the cascade's best list for that visitor: no
    # list that knows less of the visitor does better, and each beats true best sellers.
    assert ceilings.personal > 0
    assert ceilings.personal >= max(ceilings.category, ceilings.colour, ceilings.page,
                                    ceilings.category_list)
    # A list per liked category (or colour family) of the page's visitors does better than
    # the page's one list for all of them.
    assert min(ceilings.category, ceilings.colour) > ceilings.page
    # The report says them; a scenario where nothing the clicks teach tells products apart
    # has none, and the report says nothing of them.
    assert f"both {ceilings.personal:+.0%}" in Report._picks_ceilings(ceilings)
    assert Simulator(catalog, Options(scenario="unrelated")).scenario.picks_ceilings(4) == \
        PicksCeilings()
    assert Report._picks_ceilings(PicksCeilings()) == ""


def test_the_best_list_for_a_visitor_beats_any_other_it_could_be_shown():
    catalog = toy_catalog(5)
    n = len(catalog)
    rng = np.random.default_rng(5)
    simulator = Simulator(catalog, Options(scenario="looks", seed=4))
    visitor = Visitor("v", "blue", "mug", 0, np.zeros(n, dtype=int))
    hidden = [7, 1, 2]
    best = simulator.scenario.best_clicks(visitor, 7, hidden, 4)
    allowed = [i for i in range(n) if i not in hidden]
    # Scored by the simulator's own per-item path (`Scenario.logit`), never above the best.
    shown = [simulator.expected_clicks(visitor, 7, [str(i) for i in rng.choice(
        allowed, 4, replace=False)]) for _ in range(300)]
    assert max(shown) <= best + 1e-12 and best > 0
    log = SessionLog(1, "v", surfaces={PICKS_SURFACE: SurfaceLog(
        "picked", impressions=8, expected_clicks=0.2, best_clicks=0.4,
        true_best_sellers_clicks=0.16)})
    assert picks_gap([log]) == {"picked": (0.025, 0.05, 0.02)}
    # Best sellers by true rates are one of the lists the visitor could be shown.
    assert 0 < simulator.scenario.true_best_sellers_clicks(visitor, 7, hidden, 4) <= best
    assert Simulator(catalog, Options(scenario="unrelated")).scenario.best_clicks(
        visitor, 7, hidden, 4) is None
