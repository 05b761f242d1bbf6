"""Turning a loaded Document into chunks, each with its section and page."""

from __future__ import annotations

from typing import Any

from enclave.knowledge.loaders import Document


def chunk_document(doc: Document, chunk_size: int, chunk_overlap: int) -> list[tuple[str, dict[str, Any]]]:
    """Chunks that never cross a heading or a page, each with its section and page."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        separators=["\n\n", "\n", ". ", " ", ""],
    )
    out = []
    for s in doc.sections:
        for piece in splitter.split_text(s.text):
            # The heading goes into the indexed text too: it is often the best match for a question.
            text = f"{s.heading}\n{piece}" if s.heading and not piece.startswith(s.heading) else piece
            out.append((text, {"section": s.heading, "page": s.page or 0}))
    return out
