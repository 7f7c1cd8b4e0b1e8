"""The shared helpers of the benchmark commands: the BENCHMARKS.md section writer."""

from demo_shop.bench.helpers import write_section


def test_write_section_creates_the_file_then_replaces_only_its_section(tmp_path):
    path = tmp_path / "docs" / "BENCHMARKS.md"
    assert write_section("## API under load\n\nv1", path) == path
    assert path.read_text() == "# Benchmarks\n\n## API under load\n\nv1\n"
    write_section("## Embedding throughput\n\n### API under load\n\nkept\n", path)
    write_section("## API under load\n\nv2\n", path)
    assert path.read_text() == ("# Benchmarks\n\n## API under load\n\nv2\n\n"
                                "## Embedding throughput\n\n### API under load\n\nkept\n")
