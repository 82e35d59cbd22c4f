"""bench/benchmarks_md.py: a bench script rewrites only its own section of BENCHMARKS.md."""

from bench.benchmarks_md import write_section

BEGIN, END = "<!-- x:begin -->", "<!-- x:end -->"


def test_replaces_only_between_its_markers(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\n## Other\n\nkept\n\n## X\n\n{BEGIN}\nold\n{END}\n\n## Later\n\nkept too\n")
    write_section(path, "## X", BEGIN, END, "new\nlines")
    assert path.read_text() == f"# Benchmarks\n\n## Other\n\nkept\n\n## X\n\n{BEGIN}\nnew\nlines\n{END}\n\n## Later\n\nkept too\n"


def test_appends_the_section_when_its_markers_are_absent(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Other\n\nkept\n\n\n")
    write_section(path, "## X", BEGIN, END, "body")
    assert path.read_text() == f"# Benchmarks\n\n## Other\n\nkept\n\n## X\n\n{BEGIN}\nbody\n{END}\n"


def test_starts_a_missing_file(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    write_section(path, "## X", BEGIN, END, "body")
    assert path.read_text() == f"# Benchmarks\n\n## X\n\n{BEGIN}\nbody\n{END}\n"
