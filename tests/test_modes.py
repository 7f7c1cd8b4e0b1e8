"""Similar in what way: blends of shape and colour (``mode=``/``aspects=``) against numpy.

Vectors are synthetic and written into the database directly: the ranking SQL is under test,
not the CNN or the colour histogram. Every 7th row has no colour vector (not re-embedded yet).
"""

import re
from contextlib import contextmanager, nullcontext

import numpy as np
import pytest
from django.core.cache import caches
from django.db import connection, transaction
from django.template import Context, Template
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from pgvector import HalfVector

from tests.testapp.models import Item
from visual_reco import query
from visual_reco.colour import DIMENSIONS as COLOUR_DIMS
from visual_reco.colour import SHARPNESS
from visual_reco.conf import reco_settings
from visual_reco.feedback.similar import ranked_similar
from visual_reco.modes import UnknownMode, mode_blend, parse_blend
from visual_reco.query import exact_candidates, halfvec_text, to_array
from visual_reco.reasons import colour_names, reason, reason_for
from visual_reco.result_cache import similar_products

pytestmark = pytest.mark.django_db
N_ROWS, DIMS, STYLE_SIZE = 240, 2048, 4


def _unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _make(rng):
    centres = np.abs(rng.normal(0, 1, (12, DIMS))) * (rng.random((12, DIMS)) < 0.3)
    styles = np.arange(N_ROWS) // STYLE_SIZE
    shape = _unit(np.maximum(centres[styles % 12] + rng.normal(0, 0.5, (N_ROWS, DIMS)), 0))
    # A style's variants share a shape but differ in colour; histograms are non-negative.
    colour = _unit(rng.random((N_ROWS, COLOUR_DIMS)) ** 6)
    colour[::7] = np.nan
    return styles, shape, colour


@pytest.fixture
def catalog():
    """Rows with shape and colour vectors; returns (rows, halfvec-rounded shape, colour)."""
    styles, shape, colour = _make(np.random.default_rng(12))
    rows = Item.objects.bulk_create([
        Item(name=f"r{i}", category=f"style{styles[i]}", in_stock=True,
             embedding=HalfVector(shape[i]), embedding_status="ready",
             embedding_colour=None if np.isnan(colour[i, 0]) else HalfVector(colour[i]))
        for i in range(N_ROWS)])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE testapp_item")
    rounded = shape.astype(np.float16).astype(np.float32)
    return rows, rounded, colour.astype(np.float16).astype(np.float32)


def expected(catalog, source, weights, sharpness, *, candidates=100, leads=None,
             query_colour=None, limit=8):
    """The blend by hand: the ``candidates`` nearest rows by each of ``leads`` (default:
    every aspect with a positive weight), re-scored, best first."""
    rows, shape, colour = catalog
    cos_shape = _unit(shape) @ (shape[source] / np.linalg.norm(shape[source]))
    qc = colour[source] if query_colour is None else query_colour
    with np.errstate(invalid="ignore"):
        cos_colour = _unit(colour) @ (qc / np.linalg.norm(qc))
    present = ~np.isnan(cos_colour)
    cos = {"shape": cos_shape, "colour": cos_colour}
    score = np.zeros(len(rows))
    for aspect, weight in weights.items():
        term = cos[aspect] if sharpness[aspect] == 1 else np.clip(cos[aspect], 0, None) ** \
            sharpness[aspect]
        score += weight * np.nan_to_num(term, nan=0.0)
    pooled = set()
    for lead in leads or [aspect for aspect, weight in weights.items() if weight > 0]:
        lead_cos = np.where(np.isnan(cos[lead]), -np.inf, cos[lead])
        lead_cos[source] = -np.inf
        nearest = np.argsort(-lead_cos, kind="stable")[:candidates]
        pooled.update(nearest[np.isfinite(lead_cos[nearest])].tolist())
    pool = np.array(sorted(pooled), dtype=int)
    order = pool[np.argsort(-score[pool], kind="stable")][:limit]
    return [rows[i].pk for i in order], score[order], present


@contextmanager
def index_path():
    """Keep the planner on the HNSW index, as on a large catalog (see tests/test_query.py)."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
        yield


def _index(name):
    return Item._meta.get_field("embedding").hnsw_index(Item, name).name


# The blend spec.

def test_a_weight_alone_takes_the_aspects_sharpness():
    assert parse_blend({"shape": 1, "colour": 0.3}) == mode_blend("similar")
    colour = {t.aspect: t for t in mode_blend("similar").terms}["colour"]
    assert (colour.weight, colour.sharpness) == (0.3, SHARPNESS)
    assert mode_blend("similar").lead_aspect == "shape"
    assert mode_blend("same_colour").lead_aspect == "colour"  # weight 3 against 1
    assert parse_blend({"shape": 0.1, "colour": 1}).lead_aspect == "colour"
    # Candidates come from every aspect with a positive weight, none from a negative one.
    assert mode_blend("similar").candidate_aspects == ("shape", "colour")
    assert mode_blend("same_style_other_colours").candidate_aspects == ("shape",)
    with pytest.raises(UnknownMode):
        mode_blend("bogus")
    with pytest.raises(ValueError):
        parse_blend({"shape": -1})  # no index finds the rows least like the query
    with pytest.raises(ValueError):
        parse_blend({"texture": 1})


# The query.

@pytest.mark.parametrize("mode, weights, sharpness", [
    ("similar", {"shape": 1.0, "colour": 0.3}, {"shape": 1, "colour": SHARPNESS}),
    ("same_colour", {"shape": 1.0, "colour": 3.0}, {"shape": 1, "colour": 1}),
])
def test_the_blend_ranks_as_computed_by_hand(catalog, mode, weights, sharpness):
    rows, _, _ = catalog
    for source in (3, 50, 101):
        pks, scores, present = expected(catalog, source, weights, sharpness)
        found = list(Item.objects.filter(in_stock=True).visually_similar(
            rows[source], limit=8, mode=mode))
        assert [r.pk for r in found] == pks
        np.testing.assert_allclose([r.visual_score for r in found], scores, atol=2e-3)
        np.testing.assert_allclose([r.visual_distance for r in found], 1 - scores, atol=2e-3)
        for row in found:
            assert set(row.aspect_scores) == {"shape", "colour"}
            assert row.aspect_scores["shape"] == row.shape_score
            assert (row.colour_score is None) == (not present[rows.index(row)])
    # The same without the filter (the HNSW path; 240 rows: the graph finds them all).
    pks, _, _ = expected(catalog, 50, weights, sharpness)
    assert [r.pk for r in Item.objects.visually_similar(rows[50], 8, mode=mode)] == pks


def test_similar_to_vector_takes_the_colour_vector(catalog):
    rows, shape, colour = catalog
    pks, scores, _ = expected(catalog, 10, {"shape": 1.0, "colour": 3.0},
                              {"shape": 1, "colour": 1}, limit=9)
    found = list(Item.objects.similar_to_vector(shape[10], 9, colour=colour[10],
                                                aspects={"shape": 1, "colour": {
                                                    "weight": 3, "sharpness": 1}}))
    assert [r.pk for r in found][1:] == pks[:8] and found[0].pk == rows[10].pk
    # Without a colour vector the blend is shape alone: the plain query.
    plain = list(Item.objects.similar_to_vector(shape[10], 9))
    assert [r.pk for r in Item.objects.similar_to_vector(shape[10], 9, mode="same_colour")] \
        == [r.pk for r in plain]


def test_without_a_mode_the_query_is_the_plain_cosine(catalog):
    rows, _, _ = catalog
    found = list(Item.objects.filter(in_stock=True).visually_similar(rows[3], limit=8))
    pks, scores, _ = expected(catalog, 3, {"shape": 1.0}, {"shape": 1})
    assert [r.pk for r in found] == pks
    assert not hasattr(found[0], "aspect_scores")


def test_candidates_come_from_every_positive_aspect(catalog, settings):
    rows, _, _ = catalog
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "ASPECT_CANDIDATES": 5}
    by_colour = {"shape": 0.1, "colour": 1.0}
    sharp = {"shape": 1, "colour": SHARPNESS}
    colour_pool, _, _ = expected(catalog, 8, by_colour, sharp, candidates=5,
                                 leads=["colour"], limit=5)
    shape_pool, _, _ = expected(catalog, 8, by_colour, sharp, candidates=5,
                                leads=["shape"], limit=5)
    assert set(colour_pool) - set(shape_pool) and set(shape_pool) - set(colour_pool)
    both, _, _ = expected(catalog, 8, by_colour, sharp, candidates=5, limit=10)
    assert set(both) == set(colour_pool) | set(shape_pool)
    for queryset in (Item.objects.filter(in_stock=True), Item.objects.all()):
        found = list(queryset.visually_similar(rows[8], 20, aspects=by_colour))
        assert [r.pk for r in found] == both  # 5 + 5 candidates, ranked by the blend
        # A negative weight finds no candidates: shape's 5 only.
        found = list(queryset.visually_similar(rows[8], 20, aspects={"shape": 1.0,
                                                                      "colour": -0.5}))
        assert {r.pk for r in found} == set(shape_pool)


def test_rows_without_a_colour_vector_are_kept_and_scored_on_shape(catalog):
    rows, shape, _ = catalog
    source = 1
    cos = _unit(shape) @ _unit(shape[source:source + 1])[0]
    cos[source] = -1
    nearest = int(np.argmax(cos))
    Item.objects.filter(pk=rows[nearest].pk).update(embedding_colour=None)
    for mode in ("similar", "shape_led_colour"):
        found = list(Item.objects.visually_similar(rows[source], 100, aspects={
            "shape": 1.0, "colour": {"weight": 0.9, "sharpness": 1}}
            if mode == "shape_led_colour" else None, mode=None if mode != "similar" else mode))
        row = next(r for r in found if r.pk == rows[nearest].pk)
        assert row.colour_score is None and row.aspect_scores["colour"] is None
        assert row.visual_score == pytest.approx(cos[nearest], abs=2e-3)
    # A colour-led blend: the row comes by the shape index only, colour 0 ranks it out.
    found = list(Item.objects.visually_similar(rows[source], 8, mode="same_colour"))
    assert rows[nearest].pk not in [r.pk for r in found] and len(found) == 8
    # A source without a colour vector: every row on shape alone, no error.
    Item.objects.filter(pk=rows[source].pk).update(embedding_colour=None)
    source_row = Item.objects.get(pk=rows[source].pk)
    plain = [r.pk for r in Item.objects.visually_similar(source_row, 8)]
    assert [r.pk for r in Item.objects.visually_similar(source_row, 8, mode="same_colour")] \
        == plain
    deferred = Item.objects.defer("embedding", "embedding_colour").get(pk=rows[source].pk)
    assert [r.pk for r in Item.objects.visually_similar(
        deferred, 8, aspects={"shape": 1, "colour": 3})] == plain
    # The colour candidates' query vector is read by the search (NULL): shape's hold the rows.
    assert [r.pk for r in Item.objects.visually_similar(deferred, 8, mode="similar")] == plain
    with index_path():
        assert [r.pk for r in Item.objects.visually_similar(deferred, 8,
                                                            mode="similar")] == plain


def test_deferred_source_vectors_are_read_by_the_query_itself(catalog):
    rows, _, _ = catalog
    loaded = [(r.pk, round(r.visual_score, 4))
              for r in Item.objects.visually_similar(rows[20], 8, mode="similar")]
    deferred = Item.objects.defer("embedding", "embedding_colour").get(pk=rows[20].pk)
    with CaptureQueriesContext(connection) as queries:
        found = [(r.pk, round(r.visual_score, 4))
                 for r in Item.objects.visually_similar(deferred, 8, mode="similar")]
    assert found == loaded
    # Candidates, scores and order: one query (besides the HNSW settings of a transaction).
    assert len([q for q in queries.captured_queries if "set_config" not in q["sql"]]) == 1


def test_the_candidate_subquery_uses_the_hnsw_index(catalog, settings):
    rows, _, _ = catalog
    source = Item.objects.get(pk=rows[5].pk)
    with index_path():
        plan = Item.objects.visually_similar(source, 8, mode="similar").explain()
    assert _index("embedding") in plan and _index("embedding_colour") in plan
    with index_path():
        plan = Item.objects.visually_similar(source, 8,
                                             mode="same_style_other_colours").explain()
    assert _index("embedding") in plan and _index("embedding_colour") not in plan
    with index_path():
        plan = Item.objects.visually_similar(source, 8, aspects={"shape": 0.2,
                                                                 "colour": 1}).explain()
    assert _index("embedding_colour") in plan
    # A filter few rows pass: the candidates are ranked exactly, no index.
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "EXACT_SEARCH_MAX_ROWS": 10_000}
    with index_path():
        plan = Item.objects.filter(category="style3").visually_similar(
            source, 8, mode="similar").explain()
    assert "_hnsw" not in plan
    found = list(Item.objects.filter(category="style3").visually_similar(source, 8,
                                                                          mode="similar"))
    assert {r.category for r in found} == {"style3"} and len(found) == STYLE_SIZE


def test_same_style_other_colours_with_a_variant_field(catalog, settings):
    rows, _, _ = catalog
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "VARIANT_FIELD": "category"}
    source = rows[41]  # style10, with rows 40, 42, 43
    found = list(Item.objects.visually_similar(source, 8, mode="same_style_other_colours"))
    variants = [r for r in found if r.category == source.category]
    assert found[:3] == variants and len(variants) == 3
    weights, sharp = {"shape": 1.0, "colour": -0.5}, {"shape": 1, "colour": 1}
    pks, _, _ = expected(catalog, 41, weights, sharp, candidates=N_ROWS, limit=N_ROWS)
    assert [r.pk for r in variants] == [pk for pk in pks if pk in {r.pk for r in variants}]
    rest = [pk for pk in expected(catalog, 41, weights, sharp, limit=N_ROWS)[0]
            if pk not in {r.pk for r in variants}]
    assert [r.pk for r in found[3:]] == rest[:5]


def test_re_ranked_lists_keep_the_variants_first(catalog, settings):
    rows, _, _ = catalog
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "VARIANT_FIELD": "category"}
    source = rows[41]  # style10, with rows 40, 42, 43
    live = list(Item.objects.visually_similar(source, 8, mode="same_style_other_colours"))
    # Re-ranking (RERANK, on by default) sorts its pool by score: the variants, whose
    # colour is alike and so scored down, must stay ahead all the same.
    ranked = ranked_similar(source, limit=8, mode="same_style_other_colours")
    assert [r.pk for r in ranked[:3]] == [r.pk for r in live[:3]]
    assert {r.category for r in ranked[:3]} == {source.category}
    assert source.category not in {r.category for r in ranked[3:]}
    assert len(ranked) == 8
    # Sorted by score alone, a variant would have fallen behind another row.
    assert min(r.visual_score for r in live[:3]) < max(r.visual_score for r in live[3:])


def test_same_style_other_colours_without_a_variant_field_is_its_blend(catalog):
    rows, _, _ = catalog
    found = list(Item.objects.filter(in_stock=True).visually_similar(
        rows[41], 8, mode="same_style_other_colours"))
    pks, _, _ = expected(catalog, 41, {"shape": 1.0, "colour": -0.5},
                         {"shape": 1, "colour": 1})
    assert [r.pk for r in found] == pks


def test_a_blend_formats_each_query_vector_once(catalog, monkeypatch):
    """The shape vector is named three times in a blended query; its 2,048 numbers are
    formatted as text once (about 1 ms each time)."""
    rows, _, _ = catalog
    formatted = []
    monkeypatch.setattr(query, "halfvec_text", lambda vector: formatted.append(
        vector.to_numpy().shape[0]) or halfvec_text(vector))
    found = list(Item.objects.visually_similar(rows[20], 8, mode="similar"))
    assert len(found) == 8
    assert sorted(formatted) == [COLOUR_DIMS, DIMS]


def test_a_blank_variant_value_groups_nothing(catalog, settings):
    rows, _, _ = catalog
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "VARIANT_FIELD": "category"}
    Item.objects.filter(pk__in=[r.pk for r in rows[:120]]).update(category="")
    source = Item.objects.get(pk=rows[41].pk)
    found = list(Item.objects.filter(in_stock=True).visually_similar(
        source, 8, mode="same_style_other_colours"))
    pks, _, _ = expected(catalog, 41, {"shape": 1.0, "colour": -0.5},
                         {"shape": 1, "colour": 1})
    assert [r.pk for r in found] == pks  # the 119 other blank rows are not put first
    # Nor by the re-ranked list, which keeps the variants ahead of its re-ranked rest.
    ranked = ranked_similar(source, Item.objects.filter(in_stock=True), 8,
                            mode="same_style_other_colours")
    assert [r.pk for r in ranked] == pks
    with exact_candidates():
        collapsed = list(Item.objects.filter(category="").visually_similar(
            source, 6, mode="similar", collapse_variants=True))
    assert len(collapsed) == 6


def test_collapse_variants_keeps_the_best_row_of_each(catalog, settings):
    rows, _, _ = catalog
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "VARIANT_FIELD": "category"}
    # Exact candidates: the two queries below differ in shape, and the planner may walk the
    # HNSW graph for one and not the other, whose approximate tails then differ.
    with exact_candidates():
        everything = list(Item.objects.visually_similar(rows[60], 100, mode="similar"))
        found = list(Item.objects.visually_similar(rows[60], 6, mode="similar",
                                                   collapse_variants=True))
    best, seen = [], set()
    for row in everything:
        if row.category not in seen:
            seen.add(row.category)
            best.append(row.pk)
    assert [r.pk for r in found] == best[:6]
    assert len({r.category for r in found}) == 6
    assert len({r.category for r in everything[:6]}) < 6  # collapsing changed something


# Surfaces.

def _render(template, **context):
    return Template("{% load visual_reco %}" + template).render(
        Context({"request": RequestFactory().get("/"), **context}))


def test_modes_through_similar_products_and_ranked_similar(catalog):
    rows, _, _ = catalog
    for mode in ("similar", "same_colour"):
        live = [r.pk for r in Item.objects.visually_similar(rows[30], 6, mode=mode)]
        assert [r.pk for r in similar_products(rows[30], limit=6, mode=mode)] == live
        ranked = ranked_similar(rows[30], limit=6, mode=mode)
        assert [r.pk for r in ranked] == live
        assert all(r.reco_score == pytest.approx(r.visual_score) for r in ranked)
    # DEFAULT_MODE ("similar") is what the surfaces use when no mode is asked for.
    assert [r.pk for r in similar_products(rows[30], limit=6)] == \
        [r.pk for r in similar_products(rows[30], limit=6, mode="similar")]


def test_tag_takes_a_mode(catalog):
    rows, _, _ = catalog
    live = [r.name for r in Item.objects.visually_similar(rows[30], 4, mode="same_colour")]
    html = _render('{% visually_similar item limit=4 mode="same_colour" %}', item=rows[30])
    positions = [html.index(f">{name}<") for name in live]
    assert positions == sorted(positions)
    with pytest.raises(UnknownMode):
        _render('{% visually_similar item mode="bogus" %}', item=rows[30])


def test_api_takes_a_mode_and_gives_aspect_scores_and_colours(client, catalog):
    rows, _, colour = catalog
    url = f"/api/visual-reco/products/{rows[30].pk}/similar/"
    live = Item.objects.visually_similar(rows[30], 5, mode="same_colour")
    response = client.get(url, {"limit": 5, "mode": "same_colour"})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["id"] for r in results] == [str(r.pk) for r in live]
    for result, row in zip(results, live, strict=True):
        assert result["aspect_scores"] == pytest.approx(
            {"shape": row.shape_score, "colour": row.colour_score})
        assert result["score"] == pytest.approx(row.visual_score)
        assert (result["colours"] is None) == (row.colour_score is None)
        assert result["colours"] is None or 1 <= len(result["colours"]) <= 3
    shape_only = client.get(url, {"limit": 5, "mode": "shape"}).json()["results"]
    assert shape_only[0]["aspect_scores"] is None
    refused = client.get(url, {"mode": "bogus"})
    assert refused.status_code == 400
    assert "same_colour" in refused.json()["mode"][0]


SHAPE_FIRST = ("same shape", "similar shape", "other shape")
COLOUR_FIRST = ("same colour", "similar colour", "other colour")


def test_api_gives_each_result_its_reason(client, catalog):
    rows, _, _ = catalog
    url = f"/api/visual-reco/products/{rows[30].pk}/similar/"
    own = colour_names(rows[30], "embedding_colour")
    assert own
    for mode, lead in (("similar", SHAPE_FIRST), (None, SHAPE_FIRST),
                       ("same_colour", COLOUR_FIRST)):
        response = client.get(url, {"limit": 8, **({"mode": mode} if mode else {})})
        results = response.json()["results"]
        assert len(results) == 8
        for result in results:
            assert result["reason"] == reason(result["aspect_scores"], result["colours"], mode,
                                              source_colours=own)
            assert result["reason"].startswith(lead), (mode, result["reason"])
        # Rows without a colour vector (every 7th) are explained by their shape alone.
        assert any(r["colours"] for r in results)
        assert all("colour" not in r["reason"] for r in results if r["colours"] is None)
    plain = client.get(url, {"mode": "shape"}).json()["results"]
    assert plain and all(r["reason"] is None for r in plain)


def test_api_collapses_variants_on_request(client, catalog, settings):
    rows, _, _ = catalog
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "VARIANT_FIELD": "category"}
    url = f"/api/visual-reco/products/{rows[60].pk}/similar/"
    categories = {str(r.pk): r.category for r in rows}
    with exact_candidates():
        whole = client.get(url, {"limit": 6}).json()["results"]
        collapsed = client.get(url, {"limit": 6, "collapse": "1"}).json()["results"]
        same = client.get(url, {"limit": 6, "collapse": "false"}).json()["results"]
    assert len({categories[r["id"]] for r in whole}) < 6  # variants of one style side by side
    assert len({categories[r["id"]] for r in collapsed}) == len(collapsed) == 6
    assert collapsed[0]["id"] == whole[0]["id"]
    assert [r["id"] for r in same] == [r["id"] for r in whole]
    refused = client.get(url, {"collapse": "maybe"})
    assert refused.status_code == 400 and "collapse" in refused.json()


def test_tag_captions_each_product_when_given_a_mode(catalog, settings):
    rows, _, _ = catalog
    html = _render('{% visually_similar item limit=6 mode="same_colour" %}', item=rows[30])
    captions = re.findall(r'class="visual-reco__reason">([^<]*)<', html)
    live = list(Item.objects.visually_similar(rows[30], 6, mode="same_colour"))
    own = colour_names(rows[30], "embedding_colour")
    assert captions == [reason_for(r, "embedding_colour", "same_colour", source_colours=own)
                        for r in live]
    assert all(c.startswith(COLOUR_FIRST) for c in captions)
    assert "visual-reco__score" not in html
    # Without a mode: the default ranking, with scores and no captions unless asked for.
    html = _render("{% visually_similar item limit=6 %}", item=rows[30])
    assert "visual-reco__reason" not in html and html.count("visual-reco__score") == 6
    html = _render("{% visually_similar item limit=6 reasons=True %}", item=rows[30])
    assert html.count("visual-reco__reason") == 6
    # A mode that is no blend has no reasons: its scores are shown instead.
    html = _render('{% visually_similar item limit=6 mode="shape" %}', item=rows[30])
    assert "visual-reco__reason" not in html and html.count("visual-reco__score") == 6
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "VARIANT_FIELD": "category"}
    with exact_candidates():
        html = _render("{% visually_similar item limit=6 collapse_variants=True %}",
                       item=rows[60])
    shown = re.findall(r'data-pk="(\d+)"', html)
    categories = {r.pk: r.category for r in rows}
    assert len({categories[int(pk)] for pk in shown}) == len(shown) == 6


@pytest.mark.django_db(transaction=True)
def test_the_cache_keeps_one_list_per_mode(catalog, settings):
    rows, _, _ = catalog
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "SIMILAR_CACHE": "shared"}
    caches["shared"].clear()
    try:
        first = {mode: [(r.pk, round(r.visual_score, 5), r.aspect_scores)
                        for r in similar_products(rows[12], limit=6, mode=mode)]
                 for mode in ("similar", "same_colour")}
        assert first["similar"] != first["same_colour"]
        with CaptureQueriesContext(connection) as queries:
            again = {mode: [(r.pk, round(r.visual_score, 5), r.aspect_scores)
                            for r in similar_products(rows[12], limit=6, mode=mode)]
                     for mode in ("similar", "same_colour")}
        assert not [q for q in queries.captured_queries if "<=>" in q["sql"]]
        assert again == first
    finally:
        caches["shared"].clear()


# The numpy scorer of the evaluation (`Blend.scores`) against the SQL.

def _stored():
    """Every row's stored shape and colour vectors, read back (NaN rows: no colour)."""
    items = list(Item.objects.order_by("pk"))
    shape = np.stack([to_array(item.embedding) for item in items])
    colour = np.stack([to_array(item.embedding_colour) if item.embedding_colour is not None
                       else np.full(COLOUR_DIMS, np.nan, dtype=np.float32) for item in items])
    return items, shape, colour


@pytest.mark.parametrize("mode", ["similar", "same_colour", "same_style_other_colours",
                                  "shape"])
def test_the_numpy_scorer_ranks_stored_rows_as_the_sql(catalog, mode):
    items, shape, colour = _stored()
    blend = mode_blend(mode)
    # Ranked exactly: exact_candidates for blends, a filter (selective for the planner) for
    # the plain cosine, whose HNSW walk of this small table once swapped two rows.
    rows = Item.objects.filter(pk__in=[item.pk for item in items])
    for source in (5, 60, 134):  # rows with a colour vector
        with exact_candidates():
            found = list(rows.similar_to_vector(
                shape[source], 20, colour=colour[source], mode=mode))
        scores = blend.scores({"shape": shape[source:source + 1],
                               "colour": colour[source:source + 1]},
                              {"shape": shape, "colour": colour}, candidates=100)[0]
        order = np.argsort(-scores, kind="stable")[:20]
        assert [r.pk for r in found] == [items[i].pk for i in order]
        if not blend.plain:
            np.testing.assert_allclose([r.visual_score for r in found], scores[order],
                                       atol=2e-3)


def test_the_numpy_scorer_puts_variants_first_as_the_sql(catalog, settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "VARIANT_FIELD": "category"}
    items, shape, colour = _stored()
    blend = mode_blend("same_style_other_colours")
    styles = np.array([item.category for item in items])
    for source in (41, 170):
        with exact_candidates():
            found = list(Item.objects.visually_similar(items[source], 12,
                                                       mode="same_style_other_colours"))
        itself = np.arange(len(items)) == source
        scores = blend.scores({"shape": shape[source:source + 1],
                               "colour": colour[source:source + 1]},
                              {"shape": shape, "colour": colour}, candidates=100,
                              exclude=itself[None, :],
                              same_variant=(styles == styles[source])[None, :])[0]
        order = np.argsort(-scores, kind="stable")[:12]
        assert [r.pk for r in found] == [items[i].pk for i in order]
        assert {r.category for r in found[:STYLE_SIZE - 1]} == {styles[source]}


def test_the_numpy_scorer_keeps_only_the_candidates():
    blend = parse_blend({"shape": 1.0, "colour": {"weight": 3.0, "sharpness": 1.0}})
    query = {"shape": np.array([[1.0, 0.0]]), "colour": np.array([[1.0, 0.0]])}
    gallery = {"shape": np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]),
               "colour": np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])}
    # One candidate by each aspect: row 1 by colour, row 0 by shape; row 2 is neither
    # (second by shape, and without a colour vector).
    scores = blend.scores(query, gallery, candidates=1)[0]
    np.testing.assert_allclose(scores[:2], [1.0, 3.0])
    assert scores[2] == -np.inf
    assert np.isfinite(blend.scores(query, gallery)[0]).all()
    assert np.isfinite(blend.scores(query, gallery, candidates=2)[0]).all()
    # A negative weight finds no candidates: shape's nearest row alone.
    unlike = parse_blend({"shape": 1.0, "colour": {"weight": -0.5, "sharpness": 1.0}})
    assert np.isfinite(unlike.scores(query, gallery, candidates=1)[0]).tolist() == [
        True, False, False]


def test_the_best_blend_outside_the_lead_index_is_found(settings):
    """The blend's best row is 6th by shape (the lead) but 1st by colour: with 5 candidates
    per aspect, the SQL and its numpy twin both find it, and rank it first."""
    rng = np.random.default_rng(3)
    query_shape = _unit(np.abs(rng.normal(0, 1, (1, DIMS))))[0]
    query_colour = _unit(rng.random((1, COLOUR_DIMS)))[0]
    shape, colour = [], []
    for shape_cos, colour_cos in [(0.95, 0.0)] * 5 + [(0.9, 1.0)] + [(0.2, 0.3)] * 6:
        other = _unit(rng.normal(0, 1, (1, DIMS)))[0]
        other = _unit((other - (other @ query_shape) * query_shape)[None])[0]
        shape.append(shape_cos * query_shape + np.sqrt(1 - shape_cos ** 2) * other)
        tint = rng.random(COLOUR_DIMS)
        tint = _unit((tint - (tint @ query_colour) * query_colour)[None])[0]
        colour.append(colour_cos * query_colour + np.sqrt(1 - colour_cos ** 2) * tint)
    items = Item.objects.bulk_create([
        Item(name=f"c{i}", embedding=HalfVector(shape[i]), embedding_status="ready",
             embedding_colour=HalfVector(colour[i])) for i in range(len(shape))])
    best = items[5].pk
    blend = parse_blend({"shape": 1.0, "colour": 0.4})
    stored_shape = np.stack([to_array(i.embedding) for i in Item.objects.order_by("pk")])
    stored_colour = np.stack([to_array(i.embedding_colour) for i in Item.objects.order_by("pk")])
    scores = blend.scores({"shape": query_shape[None], "colour": query_colour[None]},
                          {"shape": stored_shape, "colour": stored_colour}, candidates=5)[0]
    assert int(np.argmax(scores)) == 5
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "ASPECT_CANDIDATES": 5}
    for ranking in (exact_candidates(), nullcontext()):  # exact, then the planner's path
        with ranking:
            found = list(Item.objects.similar_to_vector(query_shape, 3, colour=query_colour,
                                                        aspects=blend))
        assert found[0].pk == best


def test_a_mode_is_parsed_once_and_again_when_its_spec_changes(settings):
    first = mode_blend("similar")
    assert mode_blend("similar") is first  # kept
    settings.VISUAL_RECO = {**getattr(settings, "VISUAL_RECO", {}), "ASPECT_MODES": {
        "similar": {"shape": 1.0, "colour": 0.25}}}
    changed = mode_blend("similar")
    assert changed == parse_blend({"shape": 1.0, "colour": 0.25}) and changed != first
    modes = settings.VISUAL_RECO["ASPECT_MODES"]
    modes["similar"]["colour"] = 0.5  # the same dict, changed in place
    reco_settings.reload()
    assert mode_blend("similar") == parse_blend({"shape": 1.0, "colour": 0.5})
