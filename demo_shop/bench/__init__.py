"""Offline tooling of the demo: benchmarks, the retrieval-quality report, sample photos."""
