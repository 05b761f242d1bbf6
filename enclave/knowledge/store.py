"""The knowledge base's store: Chroma collections, their documents, and versioned ingest of files into them."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave.core.errors import BackendUnavailable, Forbidden, InvalidRequest, NotFound
from enclave.core.files import file_lock
from enclave.core.protocols import Chunk, Principal
from enclave.core.settings import Settings
from enclave.knowledge.chroma import get_all
from enclave.knowledge.chunking import chunk_document
from enclave.knowledge.embedder import MODEL_NAME, Embedder
from enclave.knowledge.loaders import Document, LoadError, ReadContext, ReadLimits, kind_of, load
from enclave.knowledge.rerank import Reranker, rerank_chunks
from enclave.knowledge.search import BM25Cache, BM25Index, Mode, hybrid_search

# Chroma's own rule: 3-63 characters (longer allowed by newer versions), starting and ending with a letter or digit.
COLLECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{1,61}[A-Za-z0-9]$")
# Chroma's HNSW for new collections. Its defaults (M 16, ef_construction 100) lose chunks once a collection
# holds many identical or near-identical ones (boilerplate repeated across documents, generated reference
# pages): at 100k chunks with 7% duplicates, recall@10 against exact search fell to 0.93. Measured on those
# 100k chunks, added document by document (bench/search_scale.py's corpus): M 32 / ef_construction 200 gave
# 0.967 with int8 vectors, M 48 gave 0.984 (~17% slower inserts, no slower queries), M 64 with
# ef_construction 400 no better (0.985) at twice the build time.
HNSW = {"hnsw:space": "cosine", "hnsw:M": 48, "hnsw:construction_ef": 200}
# Collection metadata naming the embedding runtime that wrote its vectors (collections made before it lack it).
EMBEDDING_KEY = "enclave_embedding"
log = logging.getLogger(__name__)


def doc_id_of(uri: str) -> str:
    return "doc_" + hashlib.sha256(uri.encode()).hexdigest()[:20]


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name: reason"
    chunks: int = 0
    ocr_pages: int = 0  # pages read by OCR, in every file of the report
    # per kind of file: files read, skipped, chunks written, seconds reading (to chunks) and embedding + writing
    kinds: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def count(self, kind: str, **add: float) -> None:
        row = self.kinds.setdefault(kind, {"files": 0, "skipped": 0, "chunks": 0, "read_s": 0.0, "embed_s": 0.0})
        for key, value in add.items():
            row[key] += value


class WriteLock:
    """One writer at a time: threads of this process, and (with a local store) other processes too, such as
    `enclave ingest` beside a running server, through an advisory lock file next to the store."""

    def __init__(self, path: Path | None = None) -> None:
        self._thread = threading.Lock()
        self.path = path
        self._file: contextlib.AbstractContextManager[None] | None = None

    def __enter__(self) -> WriteLock:
        self._thread.acquire()
        if self.path is not None:
            try:
                held = file_lock(self.path)
                held.__enter__()
                self._file = held
            except BaseException:
                self._thread.release()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._file is not None:
                file, self._file = self._file, None
                file.__exit__(None, None, None)
        finally:
            self._thread.release()


def read_limits(settings: Settings) -> ReadLimits:
    """The operator's ingest limits, with tables cut to the chunk size."""
    i = settings.ingest
    return ReadLimits(
        max_bytes=i.max_file_bytes,
        max_pages=i.max_pages,
        max_unpacked_bytes=i.max_unpacked_bytes,
        max_ratio=i.max_ratio,
        max_rows=i.max_rows,
        section_chars=settings.rag.chunk_size,
        table_style=i.table_style,
        ocr=i.ocr,
        ocr_languages=i.ocr_languages,
        ocr_dpi=i.ocr_dpi,
        ocr_timeout_s=i.ocr_timeout_s,
        ocr_workers=i.ocr_workers,
    )


class KnowledgeBase:
    """One Chroma collection per Enclave collection (cosine HNSW). Every chunk carries its document's id, uri,
    title, section, page and content hash, so re-ingesting skips unchanged files, replaces changed ones and drops
    deleted ones. Search is hybrid (enclave.knowledge.search)."""

    def __init__(
        self,
        client: Any,
        embedder: Embedder,
        chunk_size: int,
        chunk_overlap: int,
        max_query: int,
        lock_path: Path | None = None,
        limits: ReadLimits | None = None,
        reranker: Reranker | None = None,
        rerank_candidates: int = 12,
    ) -> None:
        self.client = client
        self.reranker = reranker
        self.rerank_candidates = rerank_candidates
        self.limits = limits or ReadLimits(section_chars=chunk_size)
        self.embedder = embedder
        self._runtime_warned: set[str] = set()
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.max_query = max_query
        self._write = WriteLock(lock_path)  # a single writer
        self._bm25 = BM25Cache()

    @classmethod
    def from_settings(cls, settings: Settings) -> KnowledgeBase:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        chroma = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        if settings.rag.chroma_url:
            from urllib.parse import urlparse

            u = urlparse(settings.rag.chroma_url)
            client = chromadb.HttpClient(
                host=u.hostname or "localhost", port=u.port or 8000, ssl=u.scheme == "https", settings=chroma
            )
            lock_path = None
        else:
            settings.chroma_path.mkdir(parents=True, exist_ok=True)
            client = chromadb.PersistentClient(path=str(settings.chroma_path), settings=chroma)
            lock_path = settings.chroma_path / ".enclave-write.lock"
        return cls(
            client,
            Embedder.from_settings(settings),
            settings.rag.chunk_size,
            settings.rag.chunk_overlap,
            settings.rag.max_query_chars,
            lock_path,
            read_limits(settings),
            Reranker.from_settings(settings) if settings.rag.rerank else None,
            settings.rag.rerank_candidates,
        )

    # -- collections ----------------------------------------------------------------------------
    @staticmethod
    def check_collection(name: str) -> str:
        if not COLLECTION_RE.match(name):
            raise InvalidRequest(
                f"invalid collection name {name!r}: 3-63 letters, digits, '_' or '-', starting and ending with a "
                "letter or digit"
            )
        return name

    def collection_names(self) -> set[str]:
        return {c if isinstance(c, str) else c.name for c in self.client.list_collections()}

    def _collection(self, name: str, create: bool = False) -> Any:
        self.check_collection(name)
        if create:
            # Chroma keeps the metadata of an existing collection: the runtime recorded is the one that made it.
            col = self.client.get_or_create_collection(name, metadata={**HNSW, EMBEDDING_KEY: self.embedding_runtime})
        else:
            if name not in self.collection_names():
                raise NotFound(f"unknown collection '{name}'")
            col = self.client.get_collection(name)
        self._check_runtime(name, col)
        return col

    @property
    def embedding_runtime(self) -> str:
        return f"{MODEL_NAME}/{self.embedder.backend}"

    def _check_runtime(self, name: str, col: Any) -> None:
        """Say once per collection when its vectors came from another embedding runtime than this one's."""
        made_by = (col.metadata or {}).get(EMBEDDING_KEY)
        if made_by and made_by != self.embedding_runtime and name not in self._runtime_warned:
            self._runtime_warned.add(name)
            log.warning(
                "collection '%s' was embedded with %s; this server embeds with %s (cosine ~0.997 between them): "
                "re-ingest it, or set rag.embedding.backend to match, for exact scores",
                name,
                made_by,
                self.embedding_runtime,
            )

    def list_collections(self) -> list[dict[str, Any]]:
        out = []
        for name in sorted(self.collection_names()):
            docs = self.list_documents(name)
            out.append({"name": name, "documents": len(docs), "chunks": sum(d["chunks"] for d in docs)})
        return out

    def delete_collection(self, name: str) -> None:
        self._collection(name)
        with self._write:
            self.client.delete_collection(name)
            self._changed(name)

    def _changed(self, collection: str) -> None:
        self._bm25.changed(collection)

    # -- documents ------------------------------------------------------------------------------
    def list_documents(self, collection: str) -> list[dict[str, Any]]:
        col = self._collection(collection)
        metas = get_all(col, ["metadatas"])["metadatas"]
        docs: dict[str, dict[str, Any]] = {}
        for m in metas:
            d = docs.setdefault(
                str(m["doc_id"]),
                {
                    "id": m["doc_id"],
                    "title": m["title"],
                    "uri": m["uri"],
                    "content_hash": m["content_hash"],
                    "kind": m.get("kind"),
                    "ingested_at": m.get("ingested_at"),
                    "parent": m.get("parent") or None,
                    "chunks": 0,
                },
            )
            d["chunks"] += 1
        return sorted(docs.values(), key=lambda d: str(d["uri"]))

    def get_document(self, collection: str, doc_id: str) -> dict[str, Any]:
        col = self._collection(collection)
        got = col.get(where={"doc_id": doc_id}, include=["metadatas", "documents"])
        if not got["ids"]:
            raise NotFound(f"unknown document '{doc_id}' in '{collection}'")
        rows = sorted(zip(got["metadatas"], got["documents"], strict=True), key=lambda r: int(r[0]["chunk_index"]))
        m = rows[0][0]
        return {
            "id": doc_id,
            "title": m["title"],
            "uri": m["uri"],
            "content_hash": m["content_hash"],
            "kind": m.get("kind"),
            "chunks": len(rows),
            "sections": sorted({str(r[0].get("section") or "") for r in rows} - {""}),
        }

    def delete_document(self, collection: str, doc_id: str) -> None:
        col = self._collection(collection)
        with self._write:
            if not col.get(where={"doc_id": doc_id}, include=[])["ids"]:
                raise NotFound(f"unknown document '{doc_id}' in '{collection}'")
            col.delete(where={"doc_id": doc_id})
            col.delete(where={"parent": doc_id})  # its attachments
            self._changed(collection)

    def iter_chunks(self, collection: str) -> Iterable[dict[str, Any]]:
        got = get_all(self._collection(collection), ["metadatas", "documents"])
        rows = sorted(
            zip(got["ids"], got["metadatas"], got["documents"], strict=True),
            key=lambda r: (str(r[1]["uri"]), int(r[1]["chunk_index"])),
        )
        for cid, m, text in rows:
            yield {"id": cid, "text": text, "title": m["title"], "uri": m["uri"], "section": m.get("section") or ""}

    # -- ingestion --------------------------------------------------------------------------------
    def chunk(self, doc: Document) -> list[tuple[str, dict[str, Any]]]:
        """Chunks that never cross a heading or a page, each with its section and page."""
        return chunk_document(doc, self.chunk_size, self.chunk_overlap)

    def ingest_bytes(
        self,
        uri: str,
        data: bytes,
        collection: str,
        report: IngestReport | None = None,
        progress: Callable[[str], None] | None = None,
        parent: str = "",
        depth: int = 0,
    ) -> IngestReport:
        """One file: read, chunked, embedded and written, replacing its earlier version; its attachments (a mail's)
        follow as documents of their own, `<uri>#<name>`. `progress` hears the stage: "OCR page 3/12", "embedding"."""
        report = report or IngestReport()
        tell = progress or (lambda stage: None)
        content_hash = hashlib.sha256(data).hexdigest()
        doc_id = doc_id_of(uri)
        col = self._collection(collection, create=True)
        existing = col.get(where={"doc_id": doc_id}, include=["metadatas"])
        versions = Counter(str(m["content_hash"]) for m in existing["metadatas"] or [])
        whole = {str(m["content_hash"]): int(m.get("chunk_count", -1)) for m in existing["metadatas"] or []}
        # (chunk_count is missing only in stores written before it was recorded: trust those.)
        if list(versions) == [content_hash] and whole[content_hash] in (-1, versions[content_hash]):
            report.unchanged.append(uri)
            return report
        # Anything else is redone: a new version, or what a crash left (a version written only in part, or
        # the old version not yet removed). Chunk ids are derived from the content, so redoing is idempotent.
        tell("reading")
        kind = kind_of(uri) or "unsupported"
        started = time.perf_counter()
        try:
            doc = load(uri, data, ReadContext(self.limits, tell))
        except LoadError as exc:
            report.skipped.append(str(exc))
            report.count(kind, skipped=1, read_s=time.perf_counter() - started)
            return report
        report.count(kind, files=1, read_s=time.perf_counter() - started)
        report.ocr_pages += doc.ocr_pages
        if doc.sections:
            self._write_document(uri, doc, content_hash, doc_id, collection, existing, versions, report, tell, parent)
        if versions:  # an earlier version may have had attachments this one has not
            self._drop_lost_attachments(collection, doc_id, {f"{uri}#{a.name}" for a in doc.attachments}, report)
        for a in doc.attachments:
            if depth >= self.limits.attachment_depth:
                report.skipped.append(f"{uri}#{a.name}: attachment nested deeper than {self.limits.attachment_depth}")
            elif kind_of(a.name) is None:
                report.skipped.append(f"{uri}#{a.name}: unsupported attachment type")
            else:
                self.ingest_bytes(f"{uri}#{a.name}", a.data, collection, report, progress, doc_id, depth + 1)
        return report

    def _drop_lost_attachments(self, collection: str, doc_id: str, kept: set[str], report: IngestReport) -> None:
        """A new version of a mail no longer holding an attachment: that attachment's document goes."""
        col = self._collection(collection)
        children = {
            str(m["uri"]): str(m["doc_id"])
            for m in col.get(where={"parent": doc_id}, include=["metadatas"])["metadatas"] or []
        }
        for child_uri, child_id in children.items():
            if child_uri not in kept:
                with contextlib.suppress(NotFound):
                    self.delete_document(collection, child_id)
                report.removed.append(child_uri)

    def _write_document(
        self,
        uri: str,
        doc: Document,
        content_hash: str,
        doc_id: str,
        collection: str,
        existing: Any,
        versions: Counter[str],
        report: IngestReport,
        tell: Callable[[str], None],
        parent: str,
    ) -> None:
        col = self._collection(collection, create=True)
        started = time.perf_counter()
        pieces = self.chunk(doc)
        kind = kind_of(uri) or doc.kind
        report.count(kind, read_s=time.perf_counter() - started)
        tell(f"embedding {len(pieces)} chunks")
        started = time.perf_counter()
        now = round(time.time(), 3)
        embeddings = self.embedder.embed([t for t, _ in pieces])
        metas = [
            {
                "doc_id": doc_id,
                "uri": uri,
                "title": doc.title,
                "kind": doc.kind,
                "content_hash": content_hash,
                "chunk_index": i,
                "chunk_count": len(pieces),
                "ingested_at": now,
                **({"parent": parent} if parent else {}),
                **meta,
            }
            for i, (_, meta) in enumerate(pieces)
        ]
        ids = [f"{doc_id}:{content_hash[:12]}:{i}" for i in range(len(pieces))]
        with self._write:
            # New chunks first, then the old version's: a crash in between leaves a document, never none.
            # Chunks a crash left are written again with upsert, the others with add: Chroma's upsert links
            # new vectors into the HNSW graph far worse than add does (same 100k vectors, same order:
            # recall@10 0.85 against 0.97), and nearly every chunk is new.
            written = set(existing["ids"])
            for write, rows in (
                (col.add, [i for i, c in enumerate(ids) if c not in written]),
                (col.upsert, [i for i, c in enumerate(ids) if c in written]),
            ):
                if rows:
                    write(  # type: ignore[operator]
                        ids=[ids[i] for i in rows],
                        documents=[pieces[i][0] for i in rows],
                        embeddings=[embeddings[i] for i in rows],
                        metadatas=[metas[i] for i in rows],  # type: ignore[misc]
                    )
            if set(versions) - {content_hash}:
                col.delete(where={"$and": [{"doc_id": doc_id}, {"content_hash": {"$ne": content_hash}}]})
            self._changed(collection)
        (report.updated if set(versions) - {content_hash} else report.added).append(uri)
        report.chunks += len(pieces)
        report.count(kind, chunks=len(pieces), embed_s=time.perf_counter() - started)

    def ingest_paths(
        self, paths: Iterable[Path], collection: str, progress: Callable[[str, int, int], None] | None = None
    ) -> IngestReport:
        """Files and folders (recursive). Files gone from an ingested folder are removed."""
        self.check_collection(collection)
        report = IngestReport()
        files: list[Path] = []
        roots: list[Path] = []
        for p in paths:
            p = p.resolve()
            if p.is_dir():
                roots.append(p)
                files += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            elif p.is_file():
                files.append(p)
            else:
                report.skipped.append(f"{p}: no such file or folder")
        for i, f in enumerate(files):
            if progress:
                progress(str(f), i, len(files))
            if kind_of(f.name) is None:
                report.skipped.append(f"{f}: unsupported file type '{f.suffix or '(none)'}'")
                continue
            try:
                data = f.read_bytes()
            except OSError as exc:
                report.skipped.append(f"{f}: {exc.strerror}")
                continue
            self.ingest_bytes(str(f), data, collection, report)
        if progress:
            progress("", len(files), len(files))
        if roots and collection in self.collection_names():
            seen = {str(f) for f in files}
            for d in self.list_documents(collection):
                uri = str(d["uri"])
                # an attachment ("mail.eml#report.pdf") stays while its file does; it goes with it otherwise
                if uri.split("#", 1)[0] not in seen and any(uri.startswith(str(r) + "/") for r in roots):
                    with contextlib.suppress(NotFound):  # gone already, with the mail it was attached to
                        self.delete_document(collection, str(d["id"]))
                    report.removed.append(uri)
        return report

    # -- search ---------------------------------------------------------------------------------
    def retriever(self) -> KnowledgeBase:
        return self

    def _bm25_for(self, collection: str, col: Any) -> BM25Index:
        return self._bm25.index(collection, col)

    def warm_reranker(self) -> str | None:
        """Load the reranker (exporting it the first time) before the first question; if it cannot load, searches
        go on without it and the reason is returned (and logged)."""
        if self.reranker is None:
            return None
        try:
            self.reranker.warm()
        except (BackendUnavailable, OSError, RuntimeError, ValueError) as exc:
            log.warning("reranking off: %s", exc)
            self.reranker = None
            return str(exc)
        return None

    def search(
        self,
        query: str,
        collection: str,
        principal: Principal,
        k: int = 4,
        mode: Mode = "hybrid",
        rerank: bool | None = None,
    ) -> list[Chunk]:
        """The top `k` chunks for `query`; with `rerank` (default: whether a reranker is configured) the hybrid
        search's top `rerank_candidates` are reordered by the reranker's reading of each beside the question, and
        each chunk carries its `rerank_score`."""
        if not query or not query.strip():
            raise InvalidRequest("the query is empty")
        if len(query) > self.max_query:
            raise InvalidRequest(f"the query is {len(query)} characters; the limit is {self.max_query}")
        if not 1 <= k <= 100:
            raise InvalidRequest("k must be between 1 and 100")
        if not principal.may_read(collection):
            raise Forbidden(f"you may not read collection '{collection}'")
        if rerank and self.reranker is None:
            raise InvalidRequest("reranking is off on this server (rag.rerank=false)")
        col = self._collection(collection)
        lexicon = lambda: self._bm25_for(collection, col)  # noqa: E731
        if self.reranker is None or rerank is False:
            return hybrid_search(col, self.embedder, lexicon, query, k, mode)
        chunks = hybrid_search(col, self.embedder, lexicon, query, max(k, self.rerank_candidates), mode)
        n = self.rerank_candidates
        return (rerank_chunks(self.reranker, query, chunks[:n]) + chunks[n:])[:k]
