"""Office documents' blocks as Sections under a heading path, and the heading, repeat and slide rules they share."""

from __future__ import annotations

import re

from enclave.knowledge.loaders.base import LoadError, ReadLimits, Section, rows_to_sections

MAX_REPEAT = 64  # an ODF cell or row "repeated" more often than this is padding, not content
_PATH_SEP = " › "
HEADING_STYLE = re.compile(r"heading\s*(\d)", re.IGNORECASE)


class Body:
    """Sections built as blocks come in document order: a heading starts one, a table becomes Markdown ones."""

    def __init__(self, limits: ReadLimits) -> None:
        self.limits = limits
        self.sections: list[Section] = []
        self.path: list[tuple[int, str]] = []
        self.first_heading = ""
        self.buf: list[str] = []

    @property
    def heading(self) -> str:
        return _PATH_SEP.join(text for _, text in self.path)

    def start(self, level: int, text: str) -> None:
        """Level 0 is the document's title; a heading replaces those of its level and below it."""
        self.flush()
        self.path = [(lv, t) for lv, t in self.path if 0 < lv < level] + [(level, text)]
        self.first_heading = self.first_heading or text

    def add(self, text: str) -> None:
        if text.strip():
            self.buf.append(text.strip())

    def table(self, rows: list[list[str]]) -> None:
        rows = [r for r in rows if any(c.strip() for c in r)]
        if len(rows) == 1:  # a one-row table has no header to repeat: a line of text
            self.add(" | ".join(c for c in rows[0] if c.strip()))
        elif rows:
            self.flush()
            self.sections += rows_to_sections(rows[1:], rows[0], self.heading, self.limits)

    def flush(self) -> None:
        if self.buf:
            self.sections.append(Section("\n".join(self.buf), self.heading))
            self.buf = []

    def done(self) -> list[Section]:
        self.flush()
        return self.sections


def check_slides(name: str, count: int, limits: ReadLimits) -> None:
    if count > limits.max_pages:
        raise LoadError(f"{name}: {count} slides, over the limit of {limits.max_pages} (ingest.max_pages)")
