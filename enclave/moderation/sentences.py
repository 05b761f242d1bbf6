"""Texts in sentences: where each sentence is, and a passage with some sentences cut out.

The pipeline has the moderator judge each sentence as context, so that an instruction planted inside an
ordinary document is removed and the rest of the document still answers and is cited.
"""

from __future__ import annotations

import re

# A sentence ends at . ! ? (then space) or at a line break; a line of its own (a heading, a list item) is one. A
# line that goes on in lower case continues the sentence before it: HTML and man pages come wrapped at a fixed
# width, and a wrapped fragment judged alone ("set this flag when being created.") reads as an order to the model.
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n(?:[ \t]*\n)*(?![ \t]*[a-z])\s*")
# Sentences shorter than this join the next one: "Note:" or "1." alone says nothing to judge.
MIN_CHARS = 12
# A passage left with fewer words than this (its heading, say) after the cut has nothing to answer from.
MIN_WORDS_LEFT = 5


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, whitespace excluded."""
    out: list[tuple[int, int]] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        # a fragment too short stays with what follows
        if (m.start() - start >= MIN_CHARS or not out) and text[start : m.start()].strip():
            out.append((start, m.start()))
            start = m.end()
    if text[start:].strip():
        out.append((start, len(text)))
    return [(a + len(text[a:b]) - len(text[a:b].lstrip()), b) for a, b in out if text[a:b].strip()]


def without(text: str, cut: list[tuple[int, int]]) -> str:
    """`text` with the spans in `cut` removed, and the blank space they leave collapsed."""
    out, pos = [], 0
    for a, b in sorted(cut):
        out.append(text[pos:a])
        pos = b
    out.append(text[pos:])
    return re.sub(r"[ \t]{2,}", " ", re.sub(r"\n{3,}", "\n\n", "".join(out))).strip()


def worth_keeping(text: str) -> bool:
    """Whether what is left of a passage still says something (more than a heading)."""
    return len(re.findall(r"\w+", text)) >= MIN_WORDS_LEFT
