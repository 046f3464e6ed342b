"""Writing a benchmark's generated block into a markdown file (docs/PERFORMANCE.md)."""

from __future__ import annotations

from pathlib import Path


def write_block(path: Path, section: str, begin: str, end: str, lines: list[str]) -> None:
    """Replace the text between the `begin` and `end` markers (kept); without them, put the block
    right under the `section` heading, or append the section. Text outside the block is kept."""
    block = "\n".join([begin, "", *lines, "", end])
    text = path.read_text() if path.exists() else "# Performance\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    elif section in text:
        at = text.index(section) + len(section)
        text = text[:at] + "\n\n" + block + "\n" + text[at:]
    else:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{block}\n"
    path.write_text(text)
