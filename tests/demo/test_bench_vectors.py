"""The logic behind ``manage.py bench_vectors``: vectors, COPY encoding, ground truth, stats,
the results file that runs of different sizes share, and the report."""

import json
import math

import numpy as np
import pytest
from django.db import connection
from pgvector import HalfVector

from demo_shop.bench import vectors_lib as lib
from demo_shop.bench.helpers import replace_section
from demo_shop.bench.vectors_lib import (
    DIMS,
    FILTERS,
    BuildResult,
    ExactTopK,
    Latency,
    Machine,
    Profile,
    QueryResult,
    Report,
    Run,
    Storage,
    SyntheticVectors,
)

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
    first = replace_section(text, lib.SECTION_HEADING, f"{lib.SECTION_HEADING}\n\nv1\n")
    assert first == f"{text}\n{lib.SECTION_HEADING}\n\nv1\n"
    # Replaced in place, before and after another section.
    middle = first + "\n## Later\n\nkept\n"
    second = replace_section(middle, lib.SECTION_HEADING,
                             f"{lib.SECTION_HEADING}\n\n### sub\n\nv2\n")
    assert second == f"{text}\n{lib.SECTION_HEADING}\n\n### sub\n\nv2\n\n## Later\n\nkept\n"
    assert replace_section("", lib.SECTION_HEADING, "## X\n") == "## X\n"


HALFVEC, PCA = Storage("halfvec", DIMS), Storage("vector", 512)


def make_run(date: str, command: str, load: float = 0.5, queries: int = 50) -> Run:
    """A run on the same machine and server, started on ``date``."""
    return Run(command=command, queries=queries, warmup=10,
               machine=Machine(cpus=2, cpu_model="Test CPU", date=date, postgres="18.6",
                               pgvector="0.8.6", shared_buffers="128MB", load_average=load))


def measured(run: Run, sizes: list[int], tag: float, data: SyntheticVectors = SMALL) -> Report:
    """A report as a run over ``sizes`` leaves it; ``tag`` marks its numbers."""
    report = Report(data=data, projection_sample=20_000, max_scan_tuples=20_000,
                    reference=("real.npy", Profile(500, 0.95, 0.83, 0.54, 0.27),
                               Profile(500, 0.66 + tag, 0.55, 0.41, 0.19)))
    for size in sizes:
        latency = Latency(p50=tag + size / 1e4, p99=tag + size / 1e3, n=run.queries)
        report.runs[size] = run
        report.profiles[size] = Profile(run.queries, 0.87, 0.73, 0.42, 0.19)
        report.builds += [
            BuildResult(size, HALFVEC, 7.2 + tag, 78.0, 54.0, 1.5, "1GB"),
            BuildResult(size, PCA, 2.5, 26.0, 27.0, 1.5, "1GB", notices=["memory"],
                        exact_recall=0.988)]
        report.hnsw += [QueryResult(size, storage, ef, latency, 0.99, "HNSW index")
                        for storage in (HALFVEC, PCA) for ef in (40, 100)]
        report.filtered.append(QueryResult(size, HALFVEC, 100, latency, 0.5, "HNSW index",
                                           complete=0.56, iterative_scan="off",
                                           row_filter=FILTERS[3], variant="seq scan off"))
        report.exact.append(QueryResult(size, HALFVEC, 0, latency, 1.0, "seq scan"))
    return report


RUN_A = make_run("2026-11-25", "python manage.py bench_vectors --sizes 10000 100000")
RUN_B = make_run("2026-11-26", "python manage.py bench_vectors --sizes 10000 --queries 80",
                 load=1.75, queries=80)


def test_results_round_trip_through_json():
    report = measured(RUN_A, [10_000, 100_000], tag=0.25)
    report.plot = "bench_latency_vs_size.png"
    text = lib.to_json(report)
    assert json.loads(text)["version"] == lib.RESULTS_VERSION
    again = lib.from_json(text)
    assert again == report
    assert again.runs[100_000].machine.load_average == 0.5
    assert again.filtered[0].row_filter == FILTERS[3]
    assert isinstance(again.reference, tuple) and list(again.profiles) == [10_000, 100_000]
    assert lib.from_json(lib.to_json(again)) == report


def test_json_keeps_nan_and_refuses_other_files():
    report = measured(RUN_A, [10_000], tag=0)
    report.exact[0] = QueryResult(10_000, HALFVEC, 0, lib.latency_ms([]), math.nan, "?")
    again = lib.from_json(lib.to_json(report))
    assert math.isnan(again.exact[0].latency.p50) and math.isnan(again.exact[0].recall)
    with pytest.raises(ValueError):
        lib.from_json(json.dumps({"version": 0}))


def test_merge_replaces_the_measured_sizes_and_keeps_the_others():
    previous = measured(RUN_A, [10_000, 100_000], tag=0.25)
    current = measured(RUN_B, [10_000, 1_000_000], tag=0.5)
    merged = lib.merge(previous, current)
    assert merged.sizes == [10_000, 100_000, 1_000_000]
    assert merged.runs == {10_000: RUN_B, 100_000: RUN_A, 1_000_000: RUN_B}
    for name in ("builds", "hnsw", "filtered", "exact"):
        results = getattr(merged, name)
        kept = [r for r in getattr(previous, name) if r.size == 100_000]
        assert kept and [r for r in results if r.size == 100_000] == kept
        assert [r.size for r in results] == sorted(r.size for r in results)
    # 10,000 rows: only the current run's numbers, in the order it measured them.
    assert [r for r in merged.hnsw if r.size == 10_000] == [
        r for r in current.hnsw if r.size == 10_000]
    assert [b.seconds for b in merged.builds if b.size == 10_000] == [7.7, 2.5]
    assert list(merged.profiles) == [10_000, 100_000, 1_000_000]
    assert merged.reference == current.reference
    assert previous.sizes == [10_000, 100_000]  # the inputs are left alone


def test_merge_keeps_the_reference_profile_when_the_run_has_none():
    previous = measured(RUN_A, [100_000], tag=0.25)
    current = measured(RUN_B, [10_000], tag=0.5)
    current.reference = None
    assert lib.merge(previous, current).reference == previous.reference


def test_results_of_other_synthetic_data_are_discarded(tmp_path):
    path = tmp_path / "bench_vectors.json"
    assert lib.previous_results(path, SMALL) == (None, None)
    lib.save_results(path, measured(RUN_A, [10_000, 100_000], tag=0.25))
    previous, discarded = lib.previous_results(path, SMALL)
    assert discarded is None and previous.sizes == [10_000, 100_000]
    other = SyntheticVectors(seed=3, dims=64, clusters=20, noise=0.5)
    previous, discarded = lib.previous_results(path, other)
    assert previous is None
    assert "Discarding" in discarded and "10,000, 100,000 rows" in discarded
    with pytest.raises(ValueError):
        lib.merge(measured(RUN_A, [100_000], tag=0), measured(RUN_B, [10_000], 0, data=other))
    path.write_text("{not json")
    previous, discarded = lib.previous_results(path, SMALL)
    assert previous is None and "unreadable" in discarded


def test_section_of_one_run_names_its_command():
    section = lib.render_section(measured(RUN_A, [10_000, 100_000], tag=0.25))
    assert f"Command: `{RUN_A.command}`" in section
    assert "(2026-11-25; load average\n0.50 when it started" in section
    assert "50 queries per line after 10 unmeasured ones" in section
    assert "| size | date | command |" not in section


def test_section_of_merged_runs_lists_every_run():
    merged = lib.merge(measured(RUN_A, [10_000, 100_000], tag=0.25),
                       measured(RUN_B, [10_000], tag=0.5))
    section = lib.render_section(merged)
    assert "Command:" not in section
    assert "Measured on 2 cores of Test CPU, PostgreSQL\n18.6, pgvector 0.8.6, " in section
    assert "everything else default, in 2 runs" in section
    assert (f"| 10,000 | 2026-11-26 | `{RUN_B.command}` | 80 | 10 | 128MB | 1.75 |"
            in section)
    assert (f"| 100,000 | 2026-11-25 | `{RUN_A.command}` | 50 | 10 | 128MB | 0.50 |"
            in section)
    assert "the runs table gives the queries per line" in section
    hnsw = section.split("### HNSW, no filter")[1].split("###")[0]
    rows = [line for line in hnsw.splitlines() if line.startswith("| 1")]
    assert [row.split(" | ")[0] for row in rows] == ["| 10,000"] * 4 + ["| 100,000"] * 4
    assert "| 10,000 | `halfvec(2048)` | 40 | 1.5 | 10.5 |" in hnsw  # run B's numbers


def test_runs_table_escapes_pipes_in_commands():
    run = make_run("2026-11-27", "python manage.py bench_vectors | tee log")
    table = lib.runs_table(measured(run, [10_000], tag=0))
    assert "`python manage.py bench_vectors \\| tee log`" in table
    assert len(table.splitlines()) == 3


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


def test_jittered_colours_are_colour_vectors_of_the_same_colours():
    """Padded rows' colour vectors: like `colour_vector`'s (non-negative, unit length), each
    with the bins of one real vector in other proportions."""
    rng = np.random.default_rng(7)
    sources = rng.random((5, 112)) * (rng.random((5, 112)) < 0.1)
    sources /= np.linalg.norm(sources, axis=1, keepdims=True)
    jittered = lib.jittered_colours(sources.astype(np.float32), 200, np.random.default_rng(1))
    assert jittered.shape == (200, 112) and (jittered >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(jittered, axis=1), 1.0, rtol=1e-5)
    cosines = jittered @ sources.T
    nearest = cosines.argmax(axis=1)
    assert ((jittered > 0) == (sources[nearest] > 0)).all()  # the same bins, no others
    assert 0.8 < cosines.max(axis=1).min() and cosines.max(axis=1).max() < 1 - 1e-4
    again = lib.jittered_colours(sources.astype(np.float32), 200, np.random.default_rng(1))
    np.testing.assert_array_equal(jittered, again)


@pytest.mark.django_db
def test_colour_copy_round_trip():
    vectors = lib.jittered_colours(np.eye(4, 112, dtype=np.float32) + 0.1, 6,
                                   np.random.default_rng(2))
    ids = np.arange(10, 16, dtype=np.int64)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE colour_check (id bigint, colour halfvec(112))")
        with cursor.copy("COPY colour_check (id, colour) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(lib.colour_payload(ids, vectors))
        cursor.execute("SELECT id, colour::text FROM colour_check ORDER BY id")
        stored = cursor.fetchall()
    assert [r[0] for r in stored] == list(ids)
    np.testing.assert_allclose([HalfVector.from_text(r[1]).to_numpy() for r in stored],
                               vectors.astype(np.float16).astype(np.float32), rtol=1e-6)
