"""Diversity: maximal marginal relevance over the blended score (`visual_reco.diversity`).

The MMR arithmetic is checked on hand-computed cases; the queries on real Postgres, with a
catalog where the same image is stored under several products (near-duplicates).
"""

import numpy as np
import pytest
from django.core.cache import caches
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pgvector import HalfVector

from tests.testapp.models import Item
from visual_reco.colour import DIMENSIONS as COLOUR_DIMS
from visual_reco.diversity import blend_similarity, diversity_lambda, mmr, top
from visual_reco.feedback.ranking import Evidence, Prior, rerank
from visual_reco.feedback.similar import ranked_similar
from visual_reco.modes import parse_blend
from visual_reco.query import exact_candidates
from visual_reco.result_cache import similar_products

# The arithmetic.

# Candidates 0 and 1 are near-duplicates (0.95); 2 is unlike both (0.1).
RELEVANCE = np.array([0.9, 0.88, 0.5])
SIMILARITY = np.array([[1.0, 0.95, 0.1], [0.95, 1.0, 0.1], [0.1, 0.1, 1.0]])


@pytest.mark.parametrize("lam, order", [
    # 1: the relevance order.
    (1.0, [0, 1, 2]),
    # 0.7: after 0, candidate 1 gains 0.7 * 0.88 - 0.3 * 0.95 = 0.331, candidate 2
    # 0.7 * 0.5 - 0.3 * 0.1 = 0.32: the duplicate still wins, narrowly.
    (0.7, [0, 1, 2]),
    # 0.5: 0.5 * 0.88 - 0.5 * 0.95 = -0.035 against 0.5 * 0.5 - 0.5 * 0.1 = 0.2.
    (0.5, [0, 2, 1]),
])
def test_mmr_by_hand(lam, order):
    assert mmr(RELEVANCE, SIMILARITY, 3, lam) == order


def test_mmr_takes_the_closest_pick_into_account():
    # After 0 and 2, candidate 3 is like 2 (0.9) and candidate 1 like 0 (0.6): with lambda
    # 0.5, 1 gains 0.5 * 0.7 - 0.5 * 0.6 = 0.05, 3 gains 0.5 * 0.8 - 0.5 * 0.9 = -0.05.
    relevance = np.array([1.0, 0.7, 0.85, 0.8])
    similarity = np.array([[1.0, 0.6, 0.0, 0.0], [0.6, 1.0, 0.0, 0.0],
                           [0.0, 0.0, 1.0, 0.9], [0.0, 0.0, 0.9, 1.0]])
    assert mmr(relevance, similarity, 4, 0.5) == [0, 2, 1, 3]


def test_mmr_bounds_and_ties():
    unlike = np.eye(4)
    assert mmr(np.ones(4), unlike, 3, 0.5) == [0, 1, 2]  # ties: the lower index
    assert mmr(np.array([0.1, 0.3]), np.eye(2), 5, 0.5) == [1, 0]  # k above n: all of them
    assert mmr(np.array([0.1, 0.3]), np.eye(2), 0, 0.5) == []
    assert mmr(np.array([]), np.zeros((0, 0)), 3, 0.5) == []


def test_lambda_one_and_off_are_the_stable_relevance_order():
    rng = np.random.default_rng(0)
    relevance = np.round(rng.random(50), 1)  # many ties
    vectors = rng.normal(size=(50, 8))
    similarity = vectors @ vectors.T
    stable = [int(i) for i in np.argsort(-relevance, kind="stable")[:10]]
    assert mmr(relevance, similarity, 10, 1.0) == stable
    assert top(relevance, 10) == stable
    assert top(relevance, 10, 0.5, similarity) == mmr(relevance, similarity, 10, 0.5) != stable


def test_blend_similarity_is_the_blend_between_candidates():
    blend = parse_blend({"shape": 1.0, "colour": {"weight": 0.4, "sharpness": 2.0}})
    shape = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]])  # lengths do not matter
    colour = np.array([[1.0, 0.0], [0.6, 0.8], [np.nan, np.nan]])  # the third lacks colour
    found = blend_similarity(blend, {"shape": shape, "colour": colour})
    half = np.sqrt(0.5)
    assert found[0, 1] == pytest.approx(half + 0.4 * 0.6 ** 2)
    assert found[1, 2] == pytest.approx(half)  # a missing vector counts 0
    assert found[0, 2] == pytest.approx(0.0)
    assert np.allclose(found, found.T)
    # Sharpness 1 keeps the bare (negative) cosine, as the query does; other sharpness clips.
    opposed = {"shape": np.array([[1.0, 0.0], [-1.0, 0.0]])}
    assert blend_similarity(parse_blend({"shape": 1.0}), opposed)[0, 1] == pytest.approx(-1)
    clipped = parse_blend({"shape": {"weight": 1.0, "sharpness": 2.0}})
    assert blend_similarity(clipped, opposed)[0, 1] == pytest.approx(0.0)


@pytest.mark.parametrize("value", [0, -0.5, 1.5, "0.7", True, float("nan")])
def test_diversity_lambda_refuses_what_is_not_in_0_1(value):
    with pytest.raises(ValueError, match="DIVERSITY"):
        diversity_lambda(value)


def test_diversity_lambda_accepts_off_and_lambdas():
    assert diversity_lambda(None) is None
    assert diversity_lambda(1) == 1.0
    assert diversity_lambda(0.7) == 0.7


def test_rerank_decides_relevance_and_mmr_runs_last():
    prior = Prior(ctr=0.1, conversion=0.1, strength=10.0)
    nobody = Evidence()
    clicked = Evidence(pair_views=100, pair_clicks=60, target_views=100, target_clicks=60)
    visual = np.array([0.9, 0.88, 0.5, 0.45])
    similarity = np.array([[1.0, 0.95, 0.1, 0.1], [0.95, 1.0, 0.1, 0.1],
                           [0.1, 0.1, 1.0, 0.97], [0.1, 0.1, 0.97, 1.0]])
    # No feedback: MMR on the visual scores.
    assert rerank(visual, [nobody] * 4, prior, 2) == [0, 1]
    assert rerank(visual, [nobody] * 4, prior, 2, diversity=0.5,
                  similarity=similarity) == [0, 2]
    # Feedback lifts 3 above 2 (their visual order): MMR takes the re-ranked one, then
    # still does not add its near-duplicate 2.
    evidence = [nobody, nobody, nobody, clicked]
    assert rerank(visual, evidence, prior, 3, diversity=0.5,
                  similarity=similarity) == [0, 3, 1]
    assert rerank(visual, evidence, prior, 3) == [0, 1, 3]


# The queries, on real Postgres.

DIMS, COPIES, OTHERS = 2048, 6, 30


def _unit(rows):
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


@pytest.fixture
def duplicates(db):
    """A source row, the same image stored under COPIES products (the closest to it), and
    OTHERS distinct rows nearly as close; returns (source, copies' pks, others' pks)."""
    rng = np.random.default_rng(3)
    base = np.abs(rng.normal(0, 1, DIMS))
    query = _unit(base + np.abs(rng.normal(0, 0.6, DIMS)))
    copy = _unit(base + np.abs(rng.normal(0, 0.6, DIMS)))
    others = _unit(base + np.abs(rng.normal(0, 0.8, (OTHERS, DIMS))))
    shapes = np.vstack([query, np.repeat(copy[None], COPIES, axis=0), others])
    colours = _unit(rng.random((len(shapes), COLOUR_DIMS)) ** 6)
    colours[1:1 + COPIES] = colours[1]
    rows = Item.objects.bulk_create([
        Item(name=f"d{i}", category="copy" if 1 <= i <= COPIES else f"other{i}",
             embedding=HalfVector(shapes[i]), embedding_status="ready",
             embedding_colour=HalfVector(colours[i])) for i in range(len(shapes))])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE testapp_item")
    return rows[0], {r.pk for r in rows[1:1 + COPIES]}, {r.pk for r in rows[1 + COPIES:]}


def _copies(rows, copies):
    return sum(row.pk in copies for row in rows)


@pytest.mark.parametrize("mode", [None, "similar"])
def test_diversity_keeps_near_duplicates_from_filling_the_list(duplicates, mode):
    source, copies, _ = duplicates
    # Ranked exactly: the filter for the plain cosine (a selective filter), exact_candidates
    # for blends. An HNSW walk of this small table (dead tuples of earlier tests, six
    # identical vectors) once missed every copy.
    rows = Item.objects.filter(in_stock=True)
    with exact_candidates():
        off = list(rows.visually_similar(source, 8, mode=mode))
        pool = list(rows.visually_similar(source, 24, mode=mode))
        on = list(rows.visually_similar(source, 8, mode=mode, diversity=0.7))
    assert _copies(off, copies) == COPIES  # the copies are the nearest rows
    assert _copies(on, copies) == 1
    assert len(on) == 8 and on[0].pk in copies  # the copies tie: which one is not fixed
    assert on[0].visual_score == pytest.approx(off[0].visual_score)
    # MMR picks among the DIVERSITY_POOL (3) x 8 best, and keeps their relevance scores.
    scores = {row.pk: row.visual_score for row in pool}
    assert all(row.visual_score == pytest.approx(scores[row.pk]) for row in on)
    if mode is not None:
        assert all(set(row.aspect_scores) == {"shape", "colour"} for row in on)
    with exact_candidates():
        values = list(rows.visually_similar(source, 8, mode=mode, diversity=0.7)
                      .values("pk", "visual_score"))
    assert [row["pk"] for row in values] == [row.pk for row in on]


def test_off_is_todays_order_and_one_query(duplicates, settings):
    source, _, _ = duplicates
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "DIVERSITY": None}
    with exact_candidates():
        with CaptureQueriesContext(connection) as off_queries:
            off = similar_products(source, limit=8)
        with CaptureQueriesContext(connection) as today_queries:
            today = list(Item.objects.visually_similar(source, 8, mode="similar"))
        with CaptureQueriesContext(connection) as one_queries:
            at_one = list(Item.objects.visually_similar(source, 8, mode="similar",
                                                        diversity=1.0))
    assert [(r.pk, r.visual_score) for r in off] == [(r.pk, r.visual_score) for r in today]
    assert [r.visual_score for r in off] == sorted((r.visual_score for r in off), reverse=True)
    # Lambda 1 is the same order, at the cost of reading the pool's vectors.
    assert [r.pk for r in at_one] == [r.pk for r in off]
    sql = [[q["sql"] for q in captured.captured_queries]
           for captured in (off_queries, today_queries, one_queries)]
    assert sql[0] == sql[1]  # the same queries as without the option
    # On: the same ranking query over a pool of 3 x 8, then one read of the pool's vectors.
    assert [q.replace("LIMIT 24", "LIMIT 8") for q in sql[2][:-1]] == sql[1]
    assert "halfvec_send" in sql[2][-1]


def test_the_setting_reaches_the_surfaces_and_mmr_runs_after_reranking(duplicates, settings):
    source, copies, _ = duplicates
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "DIVERSITY": 0.7}
    with exact_candidates():
        listed = similar_products(source, limit=8)
        live = list(Item.objects.visually_similar(source, 8, mode="similar", diversity=0.7))
        # RERANK is on: the pool is taken undiversified, re-ranked (no feedback yet: the
        # visual order) and diversified last, which gives the same list.
        ranked = ranked_similar(source, limit=8)
        pool = similar_products(source, limit=24, diverse=False)
    assert [r.pk for r in listed] == [r.pk for r in live]
    assert _copies(listed, copies) == 1
    assert [r.pk for r in ranked] == [r.pk for r in listed]
    assert _copies(pool, copies) == COPIES
    # A mode with variants first is not diversified: its variants are alike by design.
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "VARIANT_FIELD": "category"}
    copy = Item.objects.get(pk=min(copies))
    with exact_candidates():
        variants = similar_products(copy, limit=8, mode="same_style_other_colours")
    assert _copies(variants, copies) == COPIES - 1
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "DIVERSITY": 1.5}
    with pytest.raises(ValueError, match="DIVERSITY"):
        similar_products(source, limit=8)


@pytest.mark.django_db(transaction=True)
def test_the_setting_changes_the_cache_key(duplicates, settings):
    source, copies, _ = duplicates
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "SIMILAR_CACHE": "shared",
                            "DIVERSITY": None}
    caches["shared"].clear()
    try:
        with exact_candidates():
            off = [r.pk for r in similar_products(source, limit=8)]
            settings.VISUAL_RECO = {**settings.VISUAL_RECO, "DIVERSITY": 0.7}
            on = [r.pk for r in similar_products(source, limit=8)]
            with CaptureQueriesContext(connection) as queries:
                again = [r.pk for r in similar_products(source, limit=8)]
        assert sum(pk in copies for pk in off) == COPIES
        assert sum(pk in copies for pk in on) == 1  # not the cached undiversified list
        assert again == on
        assert not [q for q in queries.captured_queries if "<=>" in q["sql"]]
    finally:
        caches["shared"].clear()


def _ranked(rows):
    return [(r.pk, pytest.approx(r.reco_score), r.feedback_score) for r in rows]


@pytest.mark.django_db(transaction=True)
def test_a_cached_re_ranked_list_reads_no_vectors_and_only_the_rows_shown(duplicates,
                                                                          settings):
    source, copies, _ = duplicates
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "DIVERSITY": 0.7}
    in_stock = Item.objects.filter(in_stock=True)
    caches["shared"].clear()
    try:
        with exact_candidates():
            live = ranked_similar(source, in_stock, limit=8)
            settings.VISUAL_RECO = {**settings.VISUAL_RECO, "SIMILAR_CACHE": "shared"}
            miss = ranked_similar(source, in_stock, limit=8)
            with CaptureQueriesContext(connection) as queries:
                hit = ranked_similar(source, in_stock, limit=8)
            assert _copies(hit, copies) == 1  # diversified, by the cached similarities
            assert _ranked(live) == _ranked(miss) == _ranked(hit)
            read = [q["sql"] for q in queries.captured_queries if "testapp_item" in q["sql"]]
            assert len(read) == 1 and "halfvec_send" not in read[0] and "<=>" not in read[0]
            assert read[0].split(" IN (")[1].split(")")[0].count(",") == 8 - 1
            # A row shown leaves the candidates without a signal: the pool is computed again.
            Item.objects.filter(pk=hit[0].pk).update(in_stock=False)
            after = ranked_similar(source, in_stock, limit=8)
            assert hit[0].pk not in [r.pk for r in after] and len(after) == 8
            assert _ranked(after) == _ranked(ranked_similar(source, in_stock, limit=8))
    finally:
        caches["shared"].clear()
