"""The logic behind ``manage.py bench_vectors``: vectors, COPY encoding, ground truth, stats."""

import math

import numpy as np
import pytest
from django.db import connection
from pgvector import HalfVector

from demo_shop import bench_vectors_lib as lib
from demo_shop.bench_vectors_lib import DIMS, FILTERS, ExactTopK, Storage, SyntheticVectors

SMALL = SyntheticVectors(seed=3, dims=64, clusters=20)


def test_storage_parse():
    assert Storage.parse("halfvec2048") == Storage("halfvec", 2048)
    assert Storage.parse("vector(512)").name == "vector(512)"
    assert Storage.parse("vector512").projected and not Storage.parse("halfvec2048").projected
    for bad in ("vector2048", "halfvec4096", "float512", "vector0"):
        with pytest.raises(ValueError):
            Storage.parse(bad)


def test_synthetic_vectors_are_non_negative_unit_and_reproducible():
    chunks = list(SMALL.chunks(250, 100))
    assert [len(c) for c in chunks] == [100, 100, 50]
    assert chunks[2].ids[-1] == 250
    vectors = np.concatenate([c.vectors for c in chunks])
    assert (vectors >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, rtol=1e-5)
    again = next(SyntheticVectors(seed=3, dims=64, clusters=20).chunks(250, 100))
    np.testing.assert_array_equal(again.vectors, chunks[0].vectors)
    assert set(np.concatenate([c.bucket for c in chunks])) <= set(range(lib.BUCKETS))


def test_default_vectors_look_like_cnn_features():
    """The brief for the generator: neighbours at 0.8-0.95, random pairs at 0.3-0.5."""
    data = SyntheticVectors()
    rows = next(data.chunks(3000, 3000))
    top = ExactTopK(data.queries(50))
    top.update(rows.ids, rows.vectors)
    profile = lib.query_profile(top, data.queries(50))
    assert 0.75 < profile.top1 < 0.95
    assert 0.3 < profile.random_pair < 0.5
    assert 0.05 < profile.zero_fraction < 0.4


def test_exact_top_k_in_chunks_matches_brute_force():
    rows = next(SMALL.chunks(500, 500))
    queries = SMALL.queries(7)
    mask = FILTERS[0].mask(rows)
    top, filtered = ExactTopK(queries, 5), ExactTopK(queries, 5)
    for start in range(0, 500, 120):
        part = slice(start, start + 120)
        top.update(rows.ids[part], rows.vectors[part])
        filtered.update(rows.ids[part], rows.vectors[part], mask[part])
    sims = lib.unit(queries) @ rows.vectors.T
    assert top.neighbours() == [list(rows.ids[np.argsort(-s)[:5]]) for s in sims]
    masked = np.where(mask, sims, -np.inf)
    assert filtered.neighbours() == [list(rows.ids[np.argsort(-s)[:5]]) for s in masked]


def test_exact_top_k_with_fewer_rows_than_k():
    top = ExactTopK(np.ones((1, 4), dtype=np.float32), k=10)
    top.update(np.array([7, 8]), np.eye(4, dtype=np.float32)[:2])
    assert sorted(top.neighbours()[0]) == [7, 8]


def test_filters_select_what_they_say():
    rows = next(SyntheticVectors(seed=1).chunks(20_000, 20_000))
    rates = {f.sql: f.mask(rows).mean() for f in FILTERS}
    assert rates["bucket < 10"] == pytest.approx(0.10, abs=0.01)
    assert rates["bucket = 0"] == pytest.approx(0.01, abs=0.003)
    assert rates["category < 100"] == pytest.approx(0.10, abs=0.01)
    assert rates["category < 10"] == pytest.approx(0.01, abs=0.003)
    assert FILTERS[1].orm == {"bucket": 0} and FILTERS[0].orm == {"bucket__lt": 10}


def test_projection_keeps_most_neighbours():
    data = SyntheticVectors(seed=2, dims=256, clusters=50)
    sample, _ = data.sample(2000, data.rng(lib.STREAM_PROJECTION))
    basis = lib.fit_projection(sample, 64)
    np.testing.assert_allclose(basis.T @ basis, np.eye(64), atol=1e-4)
    rows = next(data.chunks(1000, 1000))
    queries = data.queries(20)
    full, low = ExactTopK(queries), ExactTopK(lib.project(queries, basis))
    full.update(rows.ids, rows.vectors)
    low.update(rows.ids, lib.project(rows.vectors, basis))
    assert lib.recall_at_k(low.neighbours(), full.neighbours()) > 0.8


def test_latency_and_recall():
    latency = lib.latency_ms([0.001] * 99 + [0.101])
    assert latency.p50 == pytest.approx(1.0) and latency.p99 == pytest.approx(2.0)
    assert latency.n == 100
    assert math.isnan(lib.latency_ms([]).p50)
    assert lib.recall_at_k([[1, 2, 3], [4]], [[1, 2, 9], [4, 5]]) == pytest.approx(7 / 12)
    assert lib.recall_at_k([[1]], [[]]) != lib.recall_at_k([[1]], [[]])  # nan: nothing to find


def test_summarise_plan():
    plan = ("Limit\n  ->  Index Scan using bench_vectors_10_halfvec2048_hnsw on t\n"
            "        Order By: (embedding <=> '[1]'::halfvec)")
    assert lib.summarise_plan(plan) == "HNSW index"
    assert lib.summarise_plan("Limit\n -> Gather Merge\n -> Parallel Seq Scan on t") == (
        "parallel seq scan")


def test_maintenance_work_mem():
    assert lib.maintenance_work_mem(10_000, Storage("halfvec", DIMS)) == "1GB"
    assert lib.maintenance_work_mem(1_000_000, Storage("halfvec", DIMS)) == "6GB"
    assert lib.maintenance_work_mem(100_000_000, Storage("halfvec", DIMS)) == "16GB"


def test_replace_section_leaves_other_sections_alone():
    other = "## Photo search: where the query photo is embedded\n\nmeasured.\n"
    text = f"# Benchmarks\n\n{other}"
    first = lib.replace_section(text, lib.SECTION_HEADING, f"{lib.SECTION_HEADING}\n\nv1\n")
    assert first == f"{text}\n{lib.SECTION_HEADING}\n\nv1\n"
    # Replaced in place, before and after another section.
    middle = first + "\n## Later\n\nkept\n"
    second = lib.replace_section(middle, lib.SECTION_HEADING,
                                 f"{lib.SECTION_HEADING}\n\n### sub\n\nv2\n")
    assert second == f"{text}\n{lib.SECTION_HEADING}\n\n### sub\n\nv2\n\n## Later\n\nkept\n"
    assert lib.replace_section("", lib.SECTION_HEADING, "## X\n") == "## X\n"


@pytest.mark.django_db
@pytest.mark.parametrize("storage", [Storage("halfvec", 16), Storage("vector", 16)])
def test_binary_copy_round_trip(storage):
    data = SyntheticVectors(seed=5, dims=16, clusters=4)
    rows = next(data.chunks(30, 30))
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE copy_check (id bigint, category integer, "
                       f"bucket integer, image varchar(100), embedding {storage.name})")
        with cursor.copy(f"COPY copy_check ({lib.COPY_COLUMNS}) FROM STDIN "
                         "(FORMAT BINARY)") as copy:
            copy.write(lib.copy_payload(rows, storage, rows.vectors))
        cursor.execute("SELECT id, category, bucket, image, embedding::text FROM copy_check "
                       "ORDER BY id")
        stored = cursor.fetchall()
    assert [r[:3] for r in stored] == list(zip(rows.ids, rows.category, rows.bucket,
                                               strict=True))
    assert stored[4][3] == "products/000000005.jpg"
    vectors = np.array([HalfVector.from_text(r[4]).to_numpy() if storage.kind == "halfvec"
                        else np.array(r[4][1:-1].split(","), dtype=np.float32) for r in stored],
                       dtype=np.float32)
    np.testing.assert_allclose(vectors, storage.as_stored(rows.vectors), rtol=1e-6, atol=1e-7)
