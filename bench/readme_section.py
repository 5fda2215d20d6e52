"""Rewrite one generated section of a README in place, between its two marker comments."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, start: str, end: str, text: str) -> None:
    """Replace what lies between ``start`` and ``end`` in ``path`` with ``text`` (the markers
    are appended at the end of the file when missing)."""
    old = path.read_text() if path.exists() else ""
    body = text.rstrip("\n")
    block = f"{start}\n{body}\n{end}\n"
    if start in old and end in old:
        head, rest = old.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + block + ("\n" + tail if tail else "")  # (one blank line after it)
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)
