"""Building blocks of ``manage.py bench_vectors`` that need no database.

Synthetic vectors shaped like pooled ReLU CNN features, their encoding for a binary
``COPY``, exact neighbours computed while the catalog streams past, the PCA projection
compared with ``halfvec(2048)``, latency/recall statistics, the results file that runs of
different sizes share, and the markdown report.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

DIMS = 2048
K = 10
SECTION_HEADING = "## Nearest-neighbour queries at scale"
COPY_COLUMNS = "id, category, bucket, image, embedding"
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
COPY_TRAILER = struct.pack(">h", -1)
IMAGE_FORMAT = b"products/%09d.jpg"
IMAGE_BYTES = len(IMAGE_FORMAT % 0)
BUCKETS = 100  # `bucket` is uniform in [0, 100), independent of the vector
EXACT_WARMUP = 2  # an exact scan reads the whole table: a couple of queries warm the cache
# Log-normal spread of each colour bin's weight in a padded row's copy of a real histogram.
COLOUR_JITTER = 0.5

# Random streams of `SyntheticVectors.rng`, so every part is reproducible on its own.
STREAM_MODEL, STREAM_CATALOG, STREAM_QUERIES, STREAM_PROJECTION, STREAM_PROFILE = range(5)


@dataclass(frozen=True)
class Storage:
    """How the benchmark stores a vector: ``halfvec(2048)`` or a PCA projection to fewer dims."""

    kind: Literal["halfvec", "vector"]
    dims: int

    @classmethod
    def parse(cls, text: str) -> Storage:
        """``"halfvec2048"``, ``"halfvec(2048)"`` or ``"vector512"`` as a `Storage`."""
        match = re.fullmatch(r"(halfvec|vector)\(?(\d+)\)?", text.strip())
        if not match:
            raise ValueError(f"storage must look like halfvec2048 or vector512, not {text!r}")
        storage = cls(match[1], int(match[2]))  # type: ignore[arg-type]
        if not 0 < storage.dims <= DIMS:
            raise ValueError(f"{text}: dimensions must be between 1 and {DIMS}")
        if storage.kind == "vector" and storage.dims > 2000:
            raise ValueError(f"{text}: pgvector's HNSW indexes vector up to 2,000 dimensions")
        return storage

    @property
    def name(self) -> str:
        """The Postgres column type, e.g. ``halfvec(2048)``."""
        return f"{self.kind}({self.dims})"

    @property
    def slug(self) -> str:
        """A name for tables and indexes, e.g. ``halfvec2048``."""
        return f"{self.kind}{self.dims}"

    @property
    def opclass(self) -> str:
        """The HNSW operator class for cosine distance."""
        return f"{self.kind}_cosine_ops"

    @property
    def projected(self) -> bool:
        """Whether vectors are projected (PCA) before they are stored."""
        return self.dims != DIMS

    @property
    def wire_dtype(self) -> str:
        """Big-endian numpy dtype of one element in pgvector's binary format."""
        return ">f2" if self.kind == "halfvec" else ">f4"

    def as_stored(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors`` rounded as the column stores them, as float32."""
        if self.kind == "halfvec":
            return vectors.astype(np.float16).astype(np.float32)
        return vectors.astype(np.float32)

    def label(self) -> str:
        """How the report names this storage."""
        return f"`{self.name}`" + (f" (PCA {DIMS}→{self.dims})" if self.projected else "")


@dataclass
class Rows:
    """A chunk of catalog rows as they go into a benchmark table."""

    ids: np.ndarray       # int64, 1-based
    category: np.ndarray  # int32: the vector's cluster, so category filters follow the clusters
    bucket: np.ndarray    # int32: uniform in [0, BUCKETS), independent of the vector
    vectors: np.ndarray   # float32 (n, DIMS), unit length

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class SyntheticVectors:
    """Non-negative, clustered unit vectors shaped like pooled ReLU CNN features.

    Each dimension ``j`` has a scale ``s_j`` (log-normal: a few dimensions are large, most
    small, as in pooled feature maps) and each of ``clusters`` centres ``c`` is sparse and
    non-negative (a ``density`` fraction of dimensions drawn from an exponential of mean
    ``amplitude``). A vector of cluster ``k`` is ``relu(level + c_k + noise) * s``,
    L2-normalised, with Gaussian ``noise`` of standard deviation ``noise``. ``level`` is
    what every image shares (random pairs are at cosine 0.3-0.6, like real features); the
    cluster and the noise set how close the nearest neighbours are (0.8-0.95).
    """

    seed: int = 0
    dims: int = DIMS
    clusters: int = 1000
    level: float = 0.3
    density: float = 0.2
    amplitude: float = 1.0
    noise: float = 0.4
    scale_spread: float = 1.3

    def rng(self, stream: int, index: int = 0) -> np.random.Generator:
        """An independent random generator for one part of the benchmark."""
        return np.random.default_rng([self.seed, stream, index])

    @cached_property
    def _model(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng(STREAM_MODEL)
        scale = np.exp(rng.normal(0.0, self.scale_spread, self.dims))
        centres = (rng.random((self.clusters, self.dims)) < self.density) * rng.exponential(
            self.amplitude, (self.clusters, self.dims))
        return (scale / scale.mean()).astype(np.float32), centres.astype(np.float32)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` unit vectors (float32) and their cluster labels."""
        scale, centres = self._model
        labels = rng.integers(0, self.clusters, n)
        noise = rng.standard_normal((n, self.dims), dtype=np.float32) * np.float32(self.noise)
        vectors = np.maximum(centres[labels] + np.float32(self.level) + noise, 0) * scale
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors, labels

    def chunks(self, n: int, chunk_size: int) -> Iterator[Rows]:
        """The first ``n`` catalog rows, ``chunk_size`` at a time (memory stays bounded)."""
        for index, start in enumerate(range(0, n, chunk_size)):
            rng = self.rng(STREAM_CATALOG, index)
            count = min(chunk_size, n - start)
            vectors, labels = self.sample(count, rng)
            yield Rows(ids=np.arange(start + 1, start + count + 1, dtype=np.int64),
                       category=labels.astype(np.int32),
                       bucket=rng.integers(0, BUCKETS, count).astype(np.int32),
                       vectors=vectors)

    def queries(self, n: int) -> np.ndarray:
        """``n`` query vectors: new images from the same distribution as the catalog."""
        return self.sample(n, self.rng(STREAM_QUERIES))[0]

    def describe(self) -> str:
        """One sentence with the generator's parameters, for the report."""
        return (f"{self.clusters:,} clusters, level {self.level}, centre density "
                f"{self.density}, centre amplitude {self.amplitude}, noise σ {self.noise}, "
                f"per-dimension log-normal scale σ {self.scale_spread}, seed {self.seed}")


@dataclass(frozen=True)
class RowFilter:
    """A ``WHERE`` clause of the filtered queries, with the numpy mask it stands for."""

    column: Literal["bucket", "category"]
    lookup: Literal["lt", "exact"]
    value: int
    selectivity: str
    follows_clusters: bool

    @property
    def orm(self) -> dict[str, int]:
        """Keyword arguments for ``QuerySet.filter``."""
        return {f"{self.column}__{self.lookup}" if self.lookup != "exact" else self.column:
                self.value}

    @property
    def sql(self) -> str:
        """The condition as SQL, for the report."""
        return f"{self.column} {'<' if self.lookup == 'lt' else '='} {self.value}"

    def mask(self, rows: Rows) -> np.ndarray:
        """Which of ``rows`` pass the filter."""
        column = getattr(rows, self.column)
        return column < self.value if self.lookup == "lt" else column == self.value


FILTERS = (
    RowFilter("bucket", "lt", 10, "10%", follows_clusters=False),
    RowFilter("bucket", "exact", 0, "1%", follows_clusters=False),
    RowFilter("category", "lt", 100, "10%", follows_clusters=True),
    RowFilter("category", "lt", 10, "1%", follows_clusters=True),
)


def copy_header() -> bytes:
    """The header of a binary ``COPY`` stream (no flags, no extension)."""
    return COPY_SIGNATURE + struct.pack(">ii", 0, 0)


def copy_row_dtype(storage: Storage) -> np.dtype:
    """One row of a binary ``COPY`` into a benchmark table, as a packed numpy record.

    Every field has a fixed size (the image path is zero-padded), so a whole chunk is one
    numpy array whose bytes are the ``COPY`` data.
    """
    return np.dtype([
        ("fields", ">i2"),
        ("id_len", ">i4"), ("id", ">i8"),
        ("category_len", ">i4"), ("category", ">i4"),
        ("bucket_len", ">i4"), ("bucket", ">i4"),
        ("image_len", ">i4"), ("image", f"S{IMAGE_BYTES}"),
        ("vector_len", ">i4"), ("dims", ">i2"), ("unused", ">i2"),
        ("vector", storage.wire_dtype, (storage.dims,)),
    ])


def copy_payload(rows: Rows, storage: Storage, vectors: np.ndarray) -> bytes:
    """A complete binary ``COPY`` stream for ``rows`` with ``vectors`` in ``storage``'s type.

    pgvector's binary format is ``int16 dims, int16 0`` then big-endian float16 (halfvec)
    or float32 (vector) elements.
    """
    dtype = copy_row_dtype(storage)
    records = np.zeros(len(rows), dtype=dtype)
    records["fields"] = 5
    records["id_len"], records["id"] = 8, rows.ids
    records["category_len"], records["category"] = 4, rows.category
    records["bucket_len"], records["bucket"] = 4, rows.bucket
    records["image_len"] = IMAGE_BYTES
    records["image"] = [IMAGE_FORMAT % i for i in rows.ids]
    records["vector_len"] = dtype["vector"].itemsize + 4
    records["dims"] = storage.dims
    records["vector"] = vectors
    return copy_header() + records.tobytes() + COPY_TRAILER


def jittered_colours(sources: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` colour vectors like `visual_reco.colour.colour_vector`'s, each a real one of
    ``sources`` with every bin of its histogram (the vector squared) scaled by a log-normal
    factor: the same colours in other proportions, non-negative and unit length."""
    histograms = sources[rng.integers(0, len(sources), n)] ** 2
    histograms *= rng.lognormal(0.0, COLOUR_JITTER, histograms.shape).astype(np.float32)
    vectors = np.sqrt(histograms / np.maximum(histograms.sum(axis=1, keepdims=True), 1e-12))
    return vectors.astype(np.float32)


def colour_payload(ids: np.ndarray, vectors: np.ndarray) -> bytes:
    """A binary ``COPY`` stream of (id bigint, colour halfvec) rows."""
    dims = vectors.shape[1]
    dtype = np.dtype([("fields", ">i2"), ("id_len", ">i4"), ("id", ">i8"),
                      ("vector_len", ">i4"), ("dims", ">i2"), ("unused", ">i2"),
                      ("vector", ">f2", (dims,))])
    records = np.zeros(len(ids), dtype=dtype)
    records["fields"], records["id_len"], records["id"] = 2, 8, ids
    records["vector_len"], records["dims"], records["vector"] = 4 + 2 * dims, dims, vectors
    return copy_header() + records.tobytes() + COPY_TRAILER


class ExactTopK:
    """Exact ``k`` nearest rows (cosine) of fixed queries over a catalog seen in chunks."""

    def __init__(self, queries: np.ndarray, k: int = K) -> None:
        self.queries = unit(queries.astype(np.float32))
        self.k = k
        self.similarities = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.ids = np.zeros((len(queries), k), dtype=np.int64)

    def update(self, ids: np.ndarray, vectors: np.ndarray, mask: np.ndarray | None = None
               ) -> None:
        """Merge one chunk (``vectors`` as stored, with their ``ids``) into the top ``k``."""
        if mask is not None:
            ids, vectors = ids[mask], vectors[mask]
        if not len(ids):
            return
        sims = self.queries @ unit(vectors).T
        sims = np.concatenate([self.similarities, sims], axis=1)
        all_ids = np.concatenate([self.ids, np.broadcast_to(ids, (len(self.ids), len(ids)))],
                                 axis=1)
        keep = np.argsort(-sims, axis=1, kind="stable")[:, :self.k]
        self.similarities = np.take_along_axis(sims, keep, axis=1)
        self.ids = np.take_along_axis(all_ids, keep, axis=1)

    def neighbours(self) -> list[list[int]]:
        """Per query, the ids found, nearest first (fewer than ``k`` if fewer rows exist)."""
        return [[int(i) for i, s in zip(ids, sims, strict=True) if np.isfinite(s)]
                for ids, sims in zip(self.ids, self.similarities, strict=True)]


class GroundTruth:
    """Exact neighbours of the benchmark queries, built chunk by chunk during the load.

    ``full`` is the exact 2,048-d top ``k`` over the values as ``halfvec`` stores them (the
    queries rounded as `similar_to_vector` sends them); ``filtered`` the same among rows
    passing each filter; ``projected`` the exact top ``k`` inside each projected storage.
    """

    def __init__(self, queries: np.ndarray, filters: Sequence[RowFilter],
                 projected: dict[Storage, np.ndarray], k: int = K) -> None:
        sent = Storage("halfvec", DIMS).as_stored(queries)
        self.full = ExactTopK(sent, k)
        self.filtered = {f: ExactTopK(sent, k) for f in filters}
        self.projected = {s: ExactTopK(s.as_stored(q), k) for s, q in projected.items()}

    def update(self, rows: Rows, stored: np.ndarray,
               projected: dict[Storage, np.ndarray]) -> None:
        """Add a chunk: ``stored`` 2,048-d vectors as stored and the projected ones."""
        self.full.update(rows.ids, stored)
        for row_filter, top in self.filtered.items():
            top.update(rows.ids, stored, row_filter.mask(rows))
        for storage, top in self.projected.items():
            top.update(rows.ids, projected[storage])


def query_profile(truth: ExactTopK, queries: np.ndarray) -> Profile:
    """How close the queries' exact neighbours are, and how alike random query pairs are."""
    x = unit(queries.astype(np.float32))
    pairs = (x @ x.T)[np.triu_indices(len(x), 1)]
    return Profile(n=len(x), top1=float(np.median(truth.similarities[:, 0])),
                   top10=float(np.median(truth.similarities[:, -1])),
                   random_pair=float(np.median(pairs)) if len(pairs) else math.nan,
                   zero_fraction=float((x == 0).mean()))


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows of ``vectors`` scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def fit_projection(sample: np.ndarray, dims: int) -> np.ndarray:
    """A ``(DIMS, dims)`` basis: the top right singular vectors of ``sample``, uncentred.

    Uncentred on purpose: the mean direction carries much of a non-negative vector's
    cosine similarity, and a centred PCA would drop it (worse recall for the same dims).
    """
    gram = sample.astype(np.float64).T @ sample.astype(np.float64)
    _, eigenvectors = np.linalg.eigh(gram)
    return np.ascontiguousarray(eigenvectors[:, ::-1][:, :dims], dtype=np.float32)


def project(vectors: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``vectors`` in the projected space, unit length again."""
    return unit(vectors @ basis).astype(np.float32)


@dataclass(frozen=True)
class Profile:
    """Median cosine similarities that say how a set of vectors is spread."""

    n: int
    top1: float
    top10: float
    random_pair: float
    zero_fraction: float


def similarity_profile(vectors: np.ndarray, k: int = K) -> Profile:
    """Nearest, 10th-nearest (leave-one-out, within the set) and random-pair similarity."""
    x = unit(vectors.astype(np.float32))
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nearest = -np.sort(-sims, axis=1)[:, :k]
    pairs = sims[np.triu_indices(len(x), 1)]
    return Profile(n=len(x), top1=float(np.median(nearest[:, 0])),
                   top10=float(np.median(nearest[:, k - 1])),
                   random_pair=float(np.median(pairs)),
                   zero_fraction=float((x == 0).mean()))


@dataclass(frozen=True)
class Latency:
    """Percentiles of a list of query times, in milliseconds."""

    p50: float
    p99: float
    n: int


def latency_ms(seconds: Sequence[float]) -> Latency:
    """p50 and p99 of ``seconds`` (linear interpolation), in milliseconds."""
    values = np.asarray(seconds, dtype=np.float64) * 1000
    if not len(values):
        return Latency(math.nan, math.nan, 0)
    return Latency(float(np.percentile(values, 50)), float(np.percentile(values, 99)),
                   len(values))


def recall_at_k(found: Sequence[Sequence[int]], expected: Sequence[Sequence[int]]) -> float:
    """Mean over queries of ``|found ∩ expected| / |expected|`` (queries with no expected
    rows are skipped)."""
    scores = [len(set(f) & set(e)) / len(e) for f, e in zip(found, expected, strict=True) if e]
    return float(np.mean(scores)) if scores else math.nan


def summarise_plan(plan: str) -> str:
    """The scan an ``EXPLAIN`` output uses, in a few words."""
    if re.search(r"Index Scan using \S*hnsw", plan):
        return "HNSW index"
    for node in ("Parallel Seq Scan", "Seq Scan", "Bitmap Heap Scan", "Index Scan"):
        if node in plan:
            return node.lower()
    return plan.strip().splitlines()[0] if plan.strip() else "?"


@contextmanager
def index_build_settings(cursor: Any, mwm: str) -> Iterator[None]:
    """``maintenance_work_mem`` and one parallel worker for an HNSW build, reset afterwards."""
    cursor.execute(f"SET maintenance_work_mem = '{mwm}'")
    cursor.execute("SET max_parallel_maintenance_workers = 1")
    try:
        yield
    finally:
        cursor.execute("RESET maintenance_work_mem")
        cursor.execute("RESET max_parallel_maintenance_workers")


def maintenance_work_mem(n: int, storage: Storage) -> str:
    """Enough ``maintenance_work_mem`` for an in-memory HNSW build of ``n`` rows.

    About the stored vector plus 1 kB of neighbour lists per row, with a quarter spare;
    between 1 GB and 16 GB.
    """
    per_row = storage.dims * np.dtype(storage.wire_dtype).itemsize + 1024
    gigabytes = math.ceil(n * per_row * 1.25 / 2**30)
    return f"{min(max(gigabytes, 1), 16)}GB"


# -- results and the report -------------------------------------------------------------------


@dataclass
class BuildResult:
    """One HNSW index build."""

    size: int
    storage: Storage
    seconds: float
    index_mb: float
    table_mb: float
    load_seconds: float
    maintenance_work_mem: str
    notices: list[str] = field(default_factory=list)
    exact_recall: float = 1.0  # of an exact search in this storage, against 2048-d


@dataclass
class QueryResult:
    """Latency and recall of one query configuration at one catalog size."""

    size: int
    storage: Storage
    ef_search: int
    latency: Latency
    recall: float
    plan: str
    complete: float = 1.0  # fraction of queries that returned K rows
    iterative_scan: str = "relaxed_order"
    row_filter: RowFilter | None = None
    variant: str = ""


@dataclass
class Machine:
    """Where and when the benchmark ran."""

    cpus: int
    cpu_model: str
    date: str
    postgres: str
    pgvector: str
    shared_buffers: str
    load_average: float


@dataclass
class Run:
    """One invocation of ``bench_vectors``: what every size it measured shares."""

    command: str
    machine: Machine
    queries: int
    warmup: int


@dataclass
class Report:
    """Everything the markdown section shows.

    Sizes may come from different runs (the 1M size takes an hour and runs on its own):
    ``runs`` says which run measured each size.
    """

    data: SyntheticVectors
    runs: dict[int, Run] = field(default_factory=dict)  # catalog size -> its run
    builds: list[BuildResult] = field(default_factory=list)
    hnsw: list[QueryResult] = field(default_factory=list)
    filtered: list[QueryResult] = field(default_factory=list)
    exact: list[QueryResult] = field(default_factory=list)
    profiles: dict[int, Profile] = field(default_factory=dict)
    reference: tuple[str, Profile, Profile] | None = None  # (source, real, synthetic)
    projection_sample: int = 0
    max_scan_tuples: int = 0
    plot: str | None = None

    @property
    def sizes(self) -> list[int]:
        """The catalog sizes measured, smallest first."""
        return sorted(self.runs)

    def distinct_runs(self) -> list[Run]:
        """The runs behind the sizes, each once, in size order."""
        return _distinct(self.runs[size] for size in self.sizes)


# -- the results file -------------------------------------------------------------------------

RESULTS_VERSION = 1
_Sized = TypeVar("_Sized", BuildResult, QueryResult)
_T = TypeVar("_T")


def to_json(report: Report) -> str:
    """``report`` as JSON; a statistic with nothing to measure stays NaN, which Python's
    json reads back."""
    return json.dumps({"version": RESULTS_VERSION, **asdict(report)}, indent=1) + "\n"


def from_json(text: str) -> Report:
    """The `Report` that `to_json` wrote.

    Raises ValueError when the text is not a results file of this version.
    """
    raw = json.loads(text)
    if raw.pop("version", None) != RESULTS_VERSION:
        raise ValueError(f"not a version {RESULTS_VERSION} results file")
    reference = raw["reference"]
    return Report(
        data=SyntheticVectors(**raw["data"]),
        runs={int(size): _run(run) for size, run in raw["runs"].items()},
        builds=[BuildResult(**{**b, "storage": Storage(**b["storage"])}) for b in raw["builds"]],
        hnsw=[_query_result(r) for r in raw["hnsw"]],
        filtered=[_query_result(r) for r in raw["filtered"]],
        exact=[_query_result(r) for r in raw["exact"]],
        profiles={int(size): Profile(**p) for size, p in raw["profiles"].items()},
        reference=(reference[0], Profile(**reference[1]), Profile(**reference[2]))
        if reference else None,
        projection_sample=raw["projection_sample"],
        max_scan_tuples=raw["max_scan_tuples"],
        plot=raw["plot"])


def _run(raw: dict[str, Any]) -> Run:
    return Run(**{**raw, "machine": Machine(**raw["machine"])})


def _query_result(raw: dict[str, Any]) -> QueryResult:
    row_filter = raw["row_filter"]
    return QueryResult(**{**raw, "storage": Storage(**raw["storage"]),
                          "latency": Latency(**raw["latency"]),
                          "row_filter": RowFilter(**row_filter) if row_filter else None})


def save_results(path: Path, report: Report) -> None:
    """Write ``report`` to the results file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(report))


def previous_results(path: Path, data: SyntheticVectors) -> tuple[Report | None, str | None]:
    """The results saved at ``path`` if they can be merged with a run on ``data``.

    Returns ``(report, None)`` when they can, ``(None, None)`` when there is no file and
    ``(None, why)`` when the file's results have to be discarded.
    """
    if not path.exists():
        return None, None
    try:
        previous = from_json(path.read_text())
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return None, f"Discarding the results in {path}: unreadable ({error})"
    if previous.data != data:
        return None, (f"Discarding the results in {path} ({_sizes(previous)}): they were "
                      f"measured on other synthetic data ({previous.data.describe()})")
    return previous, None


def merge(previous: Report, current: Report) -> Report:
    """``current``'s results, plus ``previous``'s for the sizes ``current`` did not measure.

    The reference profile is the current one when this run computed one. Raises ValueError
    when the two were measured on different synthetic data: their numbers do not compare.
    """
    if previous.data != current.data:
        raise ValueError("cannot merge results measured on different synthetic data")
    measured = set(current.runs)

    def combined(old: list[_Sized], new: list[_Sized]) -> list[_Sized]:
        # A stable sort keeps each size's rows in the order they were measured.
        return sorted([r for r in old if r.size not in measured] + new, key=lambda r: r.size)

    profiles = {**{s: p for s, p in previous.profiles.items() if s not in measured},
                **current.profiles}
    runs = {**{s: r for s, r in previous.runs.items() if s not in measured}, **current.runs}
    return Report(
        data=current.data, runs=dict(sorted(runs.items())),
        builds=combined(previous.builds, current.builds),
        hnsw=combined(previous.hnsw, current.hnsw),
        filtered=combined(previous.filtered, current.filtered),
        exact=combined(previous.exact, current.exact),
        profiles=dict(sorted(profiles.items())),
        reference=current.reference or previous.reference,
        projection_sample=current.projection_sample,
        max_scan_tuples=current.max_scan_tuples, plot=current.plot)


def _distinct(values: Iterable[_T]) -> list[_T]:
    unique: list[_T] = []
    for value in values:
        if value not in unique:
            unique.append(value)
    return unique


def _sizes(report: Report) -> str:
    return (", ".join(f"{size:,}" for size in report.sizes) + " rows") if report.runs else "empty"


# -- the markdown section ---------------------------------------------------------------------


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else (f"{value:.1f}" if value < 100 else f"{value:,.0f}")


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _build_for(report: Report, size: int, storage: Storage) -> BuildResult | None:
    return next((b for b in report.builds if b.size == size and b.storage == storage), None)


def hnsw_table(report: Report) -> str:
    """Unfiltered HNSW queries: one row per size, storage and ef_search."""
    lines = ["| size | storage | ef_search | p50 ms | p99 ms | recall@10 | build s | index MB"
             " | table MB |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report.hnsw:
        build = _build_for(report, r.size, r.storage)
        build_cells = (f"{build.seconds:,.1f} | {build.index_mb:,.0f} | {build.table_mb:,.0f}"
                       if build else "- | - | -")
        notes = [n for n in (r.variant, "" if r.plan == "HNSW index" else r.plan) if n]
        ef = f"{r.ef_search}" + (f" ({', '.join(notes)})" if notes else "")
        lines.append(f"| {r.size:,} | {r.storage.label()} | {ef} | {_ms(r.latency.p50)} | "
                     f"{_ms(r.latency.p99)} | {_pct(r.recall)} | {build_cells} |")
    return "\n".join(lines)


def filtered_table(report: Report) -> str:
    """Filtered HNSW queries, with the iterative scan on and off."""
    lines = ["| size | filter | rows passing | iterative scan | plan | queries with 10 rows "
             "| p50 ms | p99 ms | recall@10 |", "|---:|---|---|---|---|---:|---:|---:|---:|"]
    for r in report.filtered:
        f = r.row_filter
        assert f is not None
        kind = "whole clusters" if f.follows_clusters else "independent of the image"
        lines.append(f"| {r.size:,} | `{f.sql}` | {f.selectivity}, {kind} | "
                     f"{r.iterative_scan} | {r.plan}{f' ({r.variant})' if r.variant else ''} | "
                     f"{r.complete:.0%} | {_ms(r.latency.p50)}"
                     f" | {_ms(r.latency.p99)} | {_pct(r.recall)} |")
    return "\n".join(lines)


def exact_table(report: Report) -> str:
    """Exact scan (no index) latency."""
    lines = ["| size | storage | queries | plan | p50 ms | p99 ms | recall@10 |",
             "|---:|---|---:|---|---:|---:|---:|"]
    for r in report.exact:
        lines.append(f"| {r.size:,} | {r.storage.label()} | {r.latency.n} | {r.plan} | "
                     f"{_ms(r.latency.p50)} | {_ms(r.latency.p99)} | {_pct(r.recall)} |")
    return "\n".join(lines)


def data_table(report: Report) -> str:
    """How close the queries' neighbours are at each size (cosine similarity)."""
    lines = ["| vectors | nearest (median) | 10th nearest (median) | random pair (median) "
             "| zero elements |", "|---|---:|---:|---:|---:|"]
    if report.reference:
        source, real, synthetic = report.reference
        lines.append(f"| {source}, {real.n} vectors, within the set | {real.top1:.2f} | "
                     f"{real.top10:.2f} | {real.random_pair:.2f} | {real.zero_fraction:.0%} |")
        lines.append(f"| synthetic, {synthetic.n} vectors, within the set | "
                     f"{synthetic.top1:.2f} | {synthetic.top10:.2f} | "
                     f"{synthetic.random_pair:.2f} | {synthetic.zero_fraction:.0%} |")
    for size, p in report.profiles.items():
        lines.append(f"| synthetic queries against {size:,} rows | {p.top1:.2f} | {p.top10:.2f}"
                     f" | {p.random_pair:.2f} | {p.zero_fraction:.0%} |")
    return "\n".join(lines)


def _build_notes(report: Report) -> str:
    notes = []
    loads = {b.size: b.load_seconds for b in report.builds}
    if loads:
        notes.append("- Generating, copying and computing the exact neighbours took " + ", ".join(
            f"{seconds:,.0f} s for {size:,} rows" for size, seconds in loads.items()) + ".")
    for b in report.builds:
        if b.storage.projected:
            notes.append(f"- {b.size:,} rows, {b.storage.label()}: an exact search in the "
                         f"projected space finds {b.exact_recall:.3f} of the exact 2,048-d "
                         "top 10; that is the ceiling of its HNSW recall.")
        for notice in b.notices:
            notes.append(f"- {b.size:,} rows, {b.storage.label()}: Postgres said "
                         f"\"{notice}\".")
    return "\n".join(notes)


def _reference_note(report: Report) -> str:
    if not report.reference:
        return ""
    return ("\nThe first two lines compare real and synthetic vectors at the same count. A real"
            " catalog also has near-duplicates (one product in several colours, several photos"
            " of it), which the generator does not model: its nearest neighbours come from the"
            " same cluster only, and get closer as the catalog grows (last lines).\n")


def runs_table(report: Report) -> str:
    """Which run measured each size: when, with what command, and how busy the machine was."""
    lines = ["| size | date | command | queries | warm-up | `shared_buffers` | load average "
             "at start |", "|---:|---|---|---:|---:|---|---:|"]
    for size, run in sorted(report.runs.items()):
        m = run.machine
        command = run.command.replace("|", "\\|")  # a pipe would end the table cell
        lines.append(f"| {size:,} | {m.date} | `{command}` | {run.queries} | {run.warmup} | "
                     f"{m.shared_buffers} | {m.load_average:.2f} |")
    return "\n".join(lines)


def _joined(values: Iterable[object]) -> str:
    return " / ".join(str(value) for value in _distinct(values))


def _where(report: Report) -> str:
    runs = report.distinct_runs()
    if len(runs) == 1:
        m = runs[0].machine
        return f"""Measured on {m.cpus} cores of {m.cpu_model} ({m.date}; load average
{m.load_average:.2f} when it started; other work may have shared the cores), PostgreSQL
{m.postgres}, pgvector {m.pgvector}, `shared_buffers` {m.shared_buffers}, everything else
default.

Command: `{runs[0].command}`"""
    machines = [run.machine for run in runs]
    cpus, cpu_models = _joined(m.cpus for m in machines), _joined(m.cpu_model for m in machines)
    return f"""Measured on {cpus} cores of {cpu_models}, PostgreSQL
{_joined(m.postgres for m in machines)}, pgvector {_joined(m.pgvector for m in machines)}, \
everything else default, in {len(runs)} runs (other work may have shared the cores):

{runs_table(report)}"""


def _query_counts(report: Report) -> str:
    counts = _distinct((run.queries, run.warmup) for run in report.distinct_runs())
    if len(counts) == 1:
        return f"{counts[0][0]} queries per line after {counts[0][1]} unmeasured ones"
    return "the runs table gives the queries per line and the unmeasured ones before them"


def render_section(report: Report) -> str:
    """The ``## Nearest-neighbour queries at scale`` section of docs/BENCHMARKS.md."""
    mwm = ", ".join(f"{value} at {size:,} rows" for size, value in
                    {b.size: b.maintenance_work_mem for b in report.builds}.items())
    notes = _build_notes(report)
    plot = (f"\n![Query latency against catalog size]({report.plot})\n" if report.plot else "")
    return f"""{SECTION_HEADING}

How fast `similar_to_vector(vector, limit=10)` is, and how many of the true 10 nearest rows
it returns, as the catalog grows: the HNSW index against an exact scan, filters, and the
storage choice. {_where(report)}

**Data.** Synthetic 2,048-d vectors shaped like Xception's pooled ReLU features:
non-negative, L2-normalised and clustered ({report.data.describe()}; see
`SyntheticVectors` in `demo_shop/bench/vectors_lib.py`). A row's `category` is its cluster
(1,000 categories) and `bucket` is uniform in 0-99, independent of the image. Queries are
new vectors from the same distribution. Median cosine similarities:

{data_table(report)}
{_reference_note(report)}
**Method.** Each size gets its own tables `bench_vectors_<size>_<storage>` (id, category,
bucket, image path, embedding), the embedding stored inline (`STORAGE PLAIN`, as
visual_reco sets it on its columns) and `category` and `bucket` indexed (B-tree),
bulk-loaded with a binary `COPY`, then `VACUUM ANALYZE`.
Queries go through the app's own code path: an unmanaged model declared at run time over the
benchmark table, with an `ImageEmbeddingField` and `VisualQuerySet`, so
`Model.objects.filter(...).similar_to_vector(q, limit=10)` sends the same SQL as for the
shop's `Product` (`ORDER BY embedding <=> q LIMIT 10`, `hnsw.ef_search`,
`hnsw.iterative_scan` and `hnsw.max_scan_tuples` = {report.max_scan_tuples:,} set once
per connection). Latency is the wall time of that call in this process, model instances
included; {_query_counts(report)} (exact scan:
fewer, see its table, after {EXACT_WARMUP} unmeasured ones). Recall@10 is
against the exact top 10 computed with numpy on the same half-precision values as stored
(the exact-scan table checks it against Postgres). HNSW indexes use the field's settings
(m = 16, ef_construction = 64, cosine), are built after the load with
`max_parallel_maintenance_workers = 1` and `maintenance_work_mem` {mwm}. Table MB is
`pg_table_size` (a 2,048-d `halfvec` is 4 kB: one row per 8 kB page), index MB is
`pg_relation_size` of the HNSW index.

### HNSW, no filter

{hnsw_table(report)}
{notes}

The PCA projections are learned on {report.projection_sample:,} other vectors from the same
distribution: the top right singular vectors of the uncentred sample (`fit_projection`),
then each stored and query vector is projected and L2-normalised again; queries are projected
the same way before `similar_to_vector`. `vector` (float32) can be HNSW-indexed only up to
2,000 dimensions, hence `halfvec` for the full 2,048. On synthetic data the projection's
loss is only indicative: real features have a different spectrum, so check recall on your
own embeddings before choosing it.

### HNSW with a filter (ef_search 100)

{filtered_table(report)}

Each filter runs with the app's defaults (`EXACT_SEARCH_MAX_ROWS` "auto" since 2026-12-01:
the rows that pass are ranked exactly, through the filter's B-tree, when the planner's
estimate of them makes that cheaper than HNSW, and otherwise the index is walked with the
iterative scan `relaxed_order`; before, at most 20,000 passing rows were ranked exactly and
the planner chose for more; see "Filtered queries at the defaults"), then forced onto the
HNSW index ("forced": in a transaction that drops the B-trees and turns `enable_seqscan`
and `enable_bitmapscan` off, rolled back afterwards;
the HNSW settings are then set per transaction, one more round trip per query) with the
iterative scan on and off (the forced run with it on is left out when
the planner chose the index anyway). Which plan the planner picks depends on the table size
and the filter's selectivity; the plan column says what it did: a bitmap heap scan reads the
rows that pass through the filter column's B-tree index and sorts them by exact distance.
Without the iterative scan, HNSW returns the `ef_search` nearest candidates and the filter
then drops most of them. A filter on `category` removes whole clusters, so for most queries
the nearest passing rows are far away in the graph; a `bucket` filter removes rows at
random. Recall is against the exact top 10 among the rows that pass.

### Exact scan, no index

{exact_table(report)}

What you get without an HNSW index (as in pgvector-python's Django example): Postgres reads
and compares every row.
{plot}"""


def plot_latency(report: Report, storage: Storage, ef_search: int, path: Path) -> bool:
    """A PNG of p50/p99 latency against catalog size (log-log), HNSW and exact scan.

    Returns False (and writes nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, ScalarFormatter
    except ImportError:
        return False
    hnsw = [r for r in report.hnsw
            if r.storage == storage and r.ef_search == ef_search and not r.variant]
    series = [(f"HNSW {storage.name}, ef_search {ef_search}", hnsw, "tab:blue"),
              ("exact scan, no index", report.exact, "tab:red")]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for label, rows, colour in series:
        rows = sorted(rows, key=lambda r: r.size)
        sizes = [r.size for r in rows]
        ax.plot(sizes, [r.latency.p50 for r in rows], "o-", color=colour, label=f"{label}, p50")
        ax.plot(sizes, [r.latency.p99 for r in rows], "s--", color=colour, alpha=0.6,
                label=f"{label}, p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.set_xlabel("catalog size (rows)")
    ax.set_ylabel("similar_to_vector(limit=10), ms")
    ax.set_title("Nearest-neighbour query latency against catalog size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
