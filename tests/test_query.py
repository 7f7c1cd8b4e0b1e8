"""Nearest-neighbour queries against exact numpy cosine, with the HNSW index and filters.

Vectors here are synthetic (the ranking code is under test, not the CNN): non-negative and
clustered like pooled CNN features, 2,048 dimensions, stored as halfvec.
"""

from contextlib import contextmanager

import numpy as np
import pytest
from django.db import DataError, connection, transaction
from django.test.utils import CaptureQueriesContext
from pgvector import HalfVector

from tests.testapp.models import Item, Look
from visual_reco import query as query_module
from visual_reco.query import AUTO_EF_SEARCH, ef_search_for, hnsw_settings, table_rows

N_ROWS, N_CLUSTERS, DIMS, K = 3000, 60, 2048, 10
IN_STOCK_EVERY = 100  # 1% of rows pass the filter


def _clustered(rng, n, centers):
    labels = rng.integers(0, len(centers), n)
    vectors = np.maximum(centers[labels] + rng.normal(0, 0.6, (n, DIMS)), 0)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), labels


@pytest.fixture(scope="module")
def catalog(django_db_setup, django_db_blocker):
    """3,000 committed rows with clustered unit vectors; returns (pks, halfvec-rounded matrix)."""
    rng = np.random.default_rng(7)
    centers = np.abs(rng.normal(0, 1, (N_CLUSTERS, DIMS))) * (rng.random((N_CLUSTERS, DIMS)) < 0.3)
    vectors, labels = _clustered(rng, N_ROWS, centers)
    with django_db_blocker.unblock():
        Item.objects.all().delete()
        items = Item.objects.bulk_create(
            [Item(name=f"v{i}", category=f"c{labels[i]}", in_stock=i % IN_STOCK_EVERY == 0,
                  embedding=HalfVector(vectors[i]), embedding_status="ready")
             for i in range(N_ROWS)], batch_size=500)
        with connection.cursor() as cursor:
            # Earlier tests leave dead rows in the HNSW graph; until VACUUM repairs it, new
            # nodes link to dead ones and recall@10 fell to 0.43 (README: "Deleting many").
            cursor.execute("VACUUM ANALYZE testapp_item")
    stored = vectors.astype(np.float16).astype(np.float32)
    queries, _ = _clustered(rng, 40, centers)
    yield np.array([i.pk for i in items]), stored, np.array([i % IN_STOCK_EVERY == 0
                                                               for i in range(N_ROWS)]), queries
    with django_db_blocker.unblock():
        Item.objects.all().delete()


def exact_top(stored, pks, query, k, mask=None):
    sims = stored @ query / np.linalg.norm(stored, axis=1)
    if mask is not None:
        sims = np.where(mask, sims, -np.inf)
    order = np.argsort(-sims, kind="stable")[:k]
    return list(pks[order]), sims[order]


@contextmanager
def index_path():
    """Keep the planner on the HNSW index, as it is on a large catalog (at 3,000 rows it
    rightly prefers an exact scan, of all rows or of the 30 that pass a 1% filter)."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
        yield


def plan(queryset):
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
        return queryset.explain()


pytestmark = pytest.mark.django_db


def test_distances_and_order_match_numpy_cosine(catalog):
    pks, stored, _, queries = catalog
    # An exact scan (no index) must agree with numpy to rounding error.
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_indexscan = off")
        results = list(Item.objects.similar_to_vector(queries[0], limit=K))
    expected_pks, expected_sims = exact_top(stored, pks, queries[0], K)
    assert [r.pk for r in results] == expected_pks
    np.testing.assert_allclose([r.visual_score for r in results], expected_sims, atol=2e-3)
    np.testing.assert_allclose([r.visual_distance for r in results], 1 - expected_sims, atol=2e-3)


@pytest.fixture
def hnsw_only(settings):
    """HNSW even for the 30 rows a 1% filter passes (visual_reco would rank them exactly)."""
    settings.VISUAL_RECO = {**getattr(settings, "VISUAL_RECO", {}), "EXACT_SEARCH_MAX_ROWS": None}
    return settings


def test_query_uses_the_hnsw_index(catalog, hnsw_only):
    _, _, _, queries = catalog
    with index_path():
        assert "_hnsw" in plan(Item.objects.similar_to_vector(queries[0], limit=K))
    with index_path():
        assert "_hnsw" in plan(Item.objects.filter(in_stock=True).similar_to_vector(queries[0], K))


def test_hnsw_recall_at_10_against_exact_search(catalog):
    pks, stored, _, queries = catalog
    hits = 0
    for query in queries:
        with index_path():  # the index's recall, not an exact scan's
            assert "_hnsw" in plan(Item.objects.similar_to_vector(query, limit=K))
            found = [r.pk for r in Item.objects.similar_to_vector(query, limit=K)]
        hits += len(set(found) & set(exact_top(stored, pks, query, K)[0]))
    recall = hits / (K * len(queries))
    assert recall >= 0.95, recall


def test_filtered_query_still_returns_k_results(catalog, hnsw_only):
    pks, stored, in_stock, queries = catalog
    hits = 0
    for query in queries[:10]:
        with index_path():
            found = list(Item.objects.filter(in_stock=True).similar_to_vector(query, limit=K))
        assert len(found) == K
        assert all(r.in_stock for r in found)
        hits += len({r.pk for r in found} & set(exact_top(stored, pks, query, K, in_stock)[0]))
    assert hits / (K * 10) >= 0.9


def test_without_iterative_scan_a_short_walk_is_completed_exactly(catalog, settings):
    """Why HNSW_ITERATIVE_SCAN matters: plain HNSW filters after the candidate list and
    comes back short; the search then ranks the filtered rows exactly (a second query)."""
    pks, stored, in_stock, queries = catalog
    settings.VISUAL_RECO = {"HNSW_ITERATIVE_SCAN": "off", "HNSW_EF_SEARCH": 40,
                            "EXACT_SEARCH_MAX_ROWS": None}
    with index_path(), CaptureQueriesContext(connection) as queries_run:
        found = list(Item.objects.filter(in_stock=True).similar_to_vector(queries[0], limit=K))
    searches = [q["sql"] for q in queries_run.captured_queries if "<=>" in q["sql"]]
    assert len(searches) == 2  # the short HNSW walk, then the exact ranking
    assert [r.pk for r in found] == exact_top(stored, pks, queries[0], K, in_stock)[0]


def test_visually_similar_excludes_itself_and_is_ordered(catalog):
    pks, stored, _, _ = catalog
    source = Item.objects.get(pk=pks[5])
    results = list(Item.objects.visually_similar(source, limit=8))
    assert len(results) == 8
    assert source.pk not in [r.pk for r in results]
    distances = [r.visual_distance for r in results]
    assert distances == sorted(distances)
    expected, _ = exact_top(stored, pks, stored[5], 9)
    assert len(set(r.pk for r in results) & set(expected[1:])) >= 7


def test_visually_similar_of_an_item_without_embedding_is_empty(catalog):
    item = Item.objects.create(name="new")
    assert list(Item.objects.visually_similar(item)) == []


def test_deferred_source_reads_its_vector_in_the_database(catalog):
    pks, _, _, _ = catalog
    loaded = Item.objects.get(pk=pks[7])
    deferred = Item.objects.defer("embedding").get(pk=pks[7])
    expected = [(r.pk, round(r.visual_distance, 4))
                for r in Item.objects.visually_similar(loaded, limit=8)]
    query = Item.objects.visually_similar(deferred, limit=8)
    assert [(r.pk, round(r.visual_distance, 4)) for r in query] == expected
    with index_path():
        assert "_hnsw" in plan(Item.objects.visually_similar(deferred, limit=8))


def test_deferred_source_without_vector_gives_nothing(catalog):
    item = Item.objects.create(name="no vector yet")
    deferred = Item.objects.defer("embedding").get(pk=item.pk)
    assert list(Item.objects.visually_similar(deferred)) == []


def test_neighbours_come_without_their_vectors(catalog):
    pks, _, _, queries = catalog
    (first,) = Item.objects.similar_to_vector(queries[0], limit=1)
    assert "embedding" in first.get_deferred_fields()


def test_vectors_are_stored_inline_so_the_planner_prices_scans_right(catalog):
    """After migrate, embedding columns are STORAGE PLAIN: a 4 kB halfvec in TOAST would
    make an exact scan look cheap to the planner (it does not count TOAST reads)."""
    from visual_reco.inline_storage import store_vectors_inline

    with connection.cursor() as cursor:
        cursor.execute("SELECT attstorage FROM pg_attribute WHERE attrelid = "
                       "'testapp_item'::regclass AND attname = 'embedding'")
        assert cursor.fetchone()[0] == "p"
        cursor.execute("SELECT count(*) FROM testapp_item WHERE "
                       "pg_column_size(embedding) < 4096")
        assert cursor.fetchone()[0] == 0  # stored whole (a TOAST pointer is ~18 bytes)
        cursor.execute("SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = "
                       "'testapp_item'")
        toast = cursor.fetchone()[0]
        cursor.execute(f"SELECT count(*) FROM {toast}")
        assert cursor.fetchone()[0] == 0
        # The planner sees what a scan reads: one 8 kB page per 4 kB vector.
        cursor.execute("SELECT relpages, reltuples FROM pg_class WHERE relname = "
                       "'testapp_item'")
        pages, rows = cursor.fetchone()
        assert rows >= N_ROWS and pages >= rows
    assert store_vectors_inline() == []  # idempotent: nothing left to change


def test_only_the_vectors_that_fit_a_page_are_inline():
    """Two 4 kB vectors cannot both live in an 8 kB page: the default field's is inline, the
    other goes to TOAST, and a row with both is stored."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT attname, attstorage FROM pg_attribute WHERE attrelid = "
                       "'testapp_look'::regclass AND attname LIKE '%%_embedding'")
        assert dict(cursor.fetchall()) == {"photo_embedding": "p", "detail_embedding": "e"}
    look = Look.objects.create(name="both")
    Look.objects.filter(pk=look.pk).update(photo_embedding=np.ones(DIMS),
                                           detail_embedding=np.ones(DIMS))
    assert Look.objects.filter(photo_embedding__isnull=False,
                               detail_embedding__isnull=False).count() == 1


def test_selective_filters_are_ranked_exactly(catalog):
    """30 rows pass: they are ranked by exact distance, not looked for in the graph."""
    pks, stored, in_stock, queries = catalog
    for query in queries[:5]:
        search = Item.objects.filter(in_stock=True).similar_to_vector(query, limit=K)
        assert "_hnsw" not in search.explain()
        expected_pks, expected_sims = exact_top(stored, pks, query, K, in_stock)
        found = list(search)
        assert [r.pk for r in found] == expected_pks
        np.testing.assert_allclose([r.visual_score for r in found], expected_sims, atol=2e-3)
    source = Item.objects.get(pk=pks[0])  # in stock (every 100th row)
    similar = list(Item.objects.filter(in_stock=True).visually_similar(source, limit=K))
    assert [r.pk for r in similar] == exact_top(stored, pks, stored[0], K + 1, in_stock)[0][1:]


def test_exact_ranking_only_for_filtered_searches_under_the_threshold(catalog, settings):
    _, _, _, queries = catalog
    with CaptureQueriesContext(connection) as unfiltered:
        list(Item.objects.similar_to_vector(queries[0], limit=K))
    assert not [q for q in unfiltered.captured_queries if q["sql"].startswith("EXPLAIN")]
    settings.VISUAL_RECO = {"EXACT_SEARCH_MAX_ROWS": 10}  # fewer than the 30 passing rows
    with index_path():
        assert "_hnsw" in Item.objects.filter(in_stock=True).similar_to_vector(
            queries[0], limit=K).explain()


def test_auto_path_choice_flips_with_the_estimated_cost(catalog, settings):
    """With EXACT_SEARCH_MAX_ROWS "auto" (the default) the planner's estimate of the passing
    rows decides by cost: the 30 rows of a 1% filter are ranked exactly, the 2,970 of a 99%
    one (exact: ~8.6 ms; HNSW finds 10 of them within its first ef_search tuples) by HNSW."""
    _, _, _, queries = catalog
    settings.VISUAL_RECO = {**getattr(settings, "VISUAL_RECO", {}),
                            "EXACT_SEARCH_MAX_ROWS": "auto"}
    few = Item.objects.filter(in_stock=True).similar_to_vector(queries[0], limit=K)
    many = Item.objects.filter(in_stock=False).similar_to_vector(queries[0], limit=K)
    assert few._exact() is not None
    assert many._exact() is None
    with index_path():
        assert "_hnsw" in many.explain()
        found = list(Item.objects.filter(in_stock=False).similar_to_vector(queries[0], K))
    assert len(found) == K and not any(r.in_stock for r in found)
    # A number still means a row count: 2,970 rows are at most 3,000.
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "EXACT_SEARCH_MAX_ROWS": 3000}
    assert many._exact() is not None


def test_a_partial_index_the_filter_implies_is_walked_at_a_higher_ef_search(
        catalog, settings, monkeypatch):
    """A shop's partial HNSW index on a filter it uses often (``Meta.indexes``, pgvector's
    ``HnswIndex(condition=...)``): a filter the cost model sends to HNSW walks that graph,
    at PARTIAL_INDEX_EF_SEARCH; a filter it ranks exactly stays exact, partial index or
    not; other filters keep the configured ef_search."""
    pks, stored, in_stock, queries = catalog
    monkeypatch.setattr(query_module, "_partial_indexes", {})
    settings.VISUAL_RECO = {**getattr(settings, "VISUAL_RECO", {}),
                            "EXACT_SEARCH_MAX_ROWS": "auto", "HNSW_EF_SEARCH": 40}
    with connection.cursor() as cursor:  # rolled back with the test's transaction
        cursor.execute("CREATE INDEX item_in_stock_hnsw ON testapp_item USING hnsw "
                       "(embedding halfvec_cosine_ops) WHERE in_stock")
        cursor.execute("CREATE INDEX item_sold_out_hnsw ON testapp_item USING hnsw "
                       "(embedding halfvec_cosine_ops) WHERE NOT in_stock")
        cursor.execute("ANALYZE testapp_item")
    few = Item.objects.filter(in_stock=True).similar_to_vector(queries[0], limit=K)
    assert few._exact() is not None  # 30 rows: exact, though a partial index has them
    assert [r.pk for r in few] == exact_top(stored, pks, queries[0], K, in_stock)[0]
    search = Item.objects.filter(in_stock=False).similar_to_vector(queries[0], limit=K)
    assert search._exact() is None
    assert "item_sold_out_hnsw" in search.explain()
    found = list(search)
    assert _show("hnsw.ef_search") == str(query_module.PARTIAL_INDEX_EF_SEARCH) == "200"
    truth = exact_top(stored, pks, queries[0], K, ~in_stock)[0]
    assert len(set(r.pk for r in found) & set(truth)) >= K - 1
    others = Item.objects.exclude(category="c1").similar_to_vector(queries[0], limit=K)
    assert others._exact() is None and not others._visual_partial
    list(others)
    assert _show("hnsw.ef_search") == "40"


@pytest.mark.parametrize("passing, table, ef_search, exact", [
    (1_000, 100_000, 100, True),     # 1% of 100k: 1,000 rows against ~1,000 graph tuples
    (10_000, 100_000, 100, False),   # 10% of 100k: ~100 tuples find 10 rows
    (10_000, 1_000_000, 200, True),  # 1% of 1M: the graph no longer fits the cache
    (100_000, 1_000_000, 200, False),
    (10, 1_000_000, 200, True),      # past HNSW_MAX_SCAN_TUPLES the walk ends short anyway
])
def test_exact_is_cheaper_where_measured(passing, table, ef_search, exact):
    """The cost model picks the faster path of docs/BENCHMARKS.md "Filtered queries at the
    defaults" for each filter measured there."""
    assert query_module.exact_is_cheaper(passing, table, K, ef_search) is exact
    assert (query_module.exact_cost_ms(passing)
            <= query_module.hnsw_cost_ms(passing, table, K, ef_search)) is exact


# The HNSW session settings, outside transactions (``transaction=True``).

@pytest.fixture
def few_rows():
    rng = np.random.default_rng(3)
    Item.objects.bulk_create([Item(name=f"i{i}", in_stock=True, embedding_status="ready",
                                   embedding=HalfVector(rng.random(DIMS)))
                              for i in range(30)])


def _show(name: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SHOW {name}")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_hnsw_settings_are_set_once_per_connection(few_rows, settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "HNSW_EF_SEARCH": 77}
    list(Item.objects.similar_to_vector(np.ones(DIMS), limit=3))
    assert (_show("hnsw.ef_search"), _show("hnsw.iterative_scan")) == ("77", "relaxed_order")
    with CaptureQueriesContext(connection) as again:
        list(Item.objects.similar_to_vector(np.ones(DIMS), limit=3))
    assert [q["sql"] for q in again.captured_queries if "set_config" in q["sql"]] == []
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "HNSW_EF_SEARCH": 55}
    list(Item.objects.similar_to_vector(np.ones(DIMS), limit=3))
    assert _show("hnsw.ef_search") == "55" and hnsw_settings()[0] == "55"


@pytest.mark.django_db(transaction=True)
def test_settings_inside_a_rolled_back_transaction_do_not_leak_or_get_lost(few_rows, settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "HNSW_EF_SEARCH": 60}
    list(Item.objects.similar_to_vector(np.ones(DIMS), limit=3))
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "HNSW_EF_SEARCH": 61}
    with pytest.raises(RuntimeError), transaction.atomic():
        list(Item.objects.similar_to_vector(np.ones(DIMS), limit=3))
        assert _show("hnsw.ef_search") == "61"
        raise RuntimeError
    assert _show("hnsw.ef_search") == "60"  # the transaction's own setting went with it
    list(Item.objects.similar_to_vector(np.ones(DIMS), limit=3))
    assert _show("hnsw.ef_search") == "61"


@pytest.mark.django_db(transaction=True)
def test_transaction_scope_sets_nothing_for_the_session(few_rows, settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "HNSW_SETTINGS_SCOPE": "transaction",
                            "HNSW_EF_SEARCH": 42}
    connection.close()
    found = list(Item.objects.filter(in_stock=True).similar_to_vector(np.ones(DIMS), limit=3))
    assert len(found) == 3
    assert _show("hnsw.ef_search") == "40"  # pgvector's default: nothing leaked


@pytest.mark.django_db(transaction=True)
def test_a_filtered_index_walk_puts_enable_sort_back(few_rows, settings):
    """The HNSW path of a filtered search turns ``enable_sort`` off for its query only: the
    session has it back afterwards, after an error too."""
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "EXACT_SEARCH_MAX_ROWS": None}
    search = Item.objects.filter(in_stock=True)
    with CaptureQueriesContext(connection) as run:
        assert len(list(search.similar_to_vector(np.ones(DIMS), limit=3))) == 3
    assert [q for q in run.captured_queries if "enable_sort" in q["sql"]]
    assert _show("enable_sort") == "on"
    with pytest.raises(DataError):  # an invalid regular expression, raised by Postgres
        list(search.filter(name__regex="(").similar_to_vector(np.ones(DIMS), limit=3))
    assert _show("enable_sort") == "on"


@pytest.mark.django_db(transaction=True)
def test_explain_runs_under_the_same_settings(few_rows, settings):
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "HNSW_EF_SEARCH": 91}
    connection.close()
    Item.objects.similar_to_vector(np.ones(DIMS), limit=3).explain()
    assert _show("hnsw.ef_search") == "91"


@pytest.mark.django_db(transaction=True)
def test_auto_ef_search_grows_with_the_table_s_estimated_rows(few_rows, settings, monkeypatch):
    """With "auto" (the default) a search of a table the planner thinks holds a million rows
    walks the graph with ef_search 200, one of a few rows with 100; a number is used as is."""
    settings.VISUAL_RECO = {**settings.VISUAL_RECO, "HNSW_EF_SEARCH": "auto"}
    monkeypatch.setattr(query_module, "_table_rows", {})
    connection.close()
    list(Item.objects.similar_to_vector(np.ones(DIMS), limit=3))
    assert table_rows(Item, "default") < 200_000
    assert _show("hnsw.ef_search") == str(AUTO_EF_SEARCH[0][1]) == "100"

    table = connection.ops.quote_name(Item._meta.db_table)
    with connection.cursor() as cursor:  # what ANALYZE would write for a 1M-row table
        cursor.execute("UPDATE pg_class SET reltuples = 1000000 WHERE oid = to_regclass(%s)",
                       [table])
    try:
        assert table_rows(Item, "default") < 200_000  # kept for TABLE_ROWS_TTL
        monkeypatch.setattr(query_module, "_table_rows", {})
        assert ef_search_for(Item, "default") == 200
        found = list(Item.objects.similar_to_vector(np.ones(DIMS), limit=3))
        assert len(found) == 3 and _show("hnsw.ef_search") == "200"
        settings.VISUAL_RECO = {**settings.VISUAL_RECO, "HNSW_EF_SEARCH": 64}
        list(Item.objects.similar_to_vector(np.ones(DIMS), limit=3))
        assert _show("hnsw.ef_search") == "64"
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {table}")


@pytest.mark.django_db
def test_halfvec_text_gives_pgvector_every_float16_back_bit_for_bit():
    """`halfvec_text` looks each number's text up by its bits: the same text as formatting
    it to 9 significant digits, and pgvector parses every finite float16 back unchanged."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    finite = bits[np.isfinite(bits.view(np.float16))]
    for start in range(0, len(finite), DIMS):
        chunk = finite[start:start + DIMS]
        vector = HalfVector(chunk.view(np.float16))
        text = query_module.halfvec_text(vector)
        assert text == "[" + ",".join(f"{value:.9g}" for value in vector.to_list()) + "]"
        with connection.cursor() as cursor:
            cursor.execute("SELECT halfvec_send(%s::halfvec)", [text])
            stored = query_module.from_binary(cursor.fetchone()[0])
        assert np.array_equal(stored.astype(np.float16).view(np.uint16), chunk)


@pytest.mark.parametrize("value, valid", [("auto", True), (None, True), (20_000, True),
                                          ("20000", False), (-1, False), (True, False)])
def test_exact_search_max_rows_is_checked(settings, value, valid):
    """E015: anything but "auto", a row count or None is reported at startup."""
    from visual_reco.checks import check_exact_search

    settings.VISUAL_RECO = {**getattr(settings, "VISUAL_RECO", {}),
                            "EXACT_SEARCH_MAX_ROWS": value}
    assert [e.id for e in check_exact_search()] == ([] if valid else ["visual_reco.E015"])
