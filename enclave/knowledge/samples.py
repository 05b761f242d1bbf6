"""Enclave's own user guide, ingested on first start so a new user can ask about it at once."""

from __future__ import annotations

from pathlib import Path

from enclave.knowledge.store import IngestReport, KnowledgeBase

SAMPLES = Path(__file__).resolve().parent / "sample_docs"


def ensure_samples(kb: KnowledgeBase, collection: str) -> IngestReport | None:
    """Ingest the sample documents once: only into a collection that does not exist yet."""
    if collection in kb.collection_names() or not SAMPLES.is_dir():
        return None
    report = IngestReport()
    for f in sorted(SAMPLES.glob("*.md")):
        kb.ingest_bytes(f"sample_docs/{f.name}", f.read_bytes(), collection, report)
    return report
