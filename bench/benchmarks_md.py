"""BENCHMARKS.md sections owned by a bench script: the text between its two HTML-comment markers."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, heading: str, begin: str, end: str, body: str) -> None:
    """Put `body` between the markers `begin` and `end`, leaving the rest of the file as it is.

    Without the markers (a new file, or a section never written) the section is appended: `heading`,
    then the markers around `body`. A missing file starts as "# Benchmarks".
    """
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"
    path.write_text(text)
