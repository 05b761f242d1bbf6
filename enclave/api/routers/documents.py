"""The knowledge base over HTTP: upload, list, delete documents and collections, and search."""

from __future__ import annotations

import asyncio
from typing import Any, BinaryIO

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile
from pydantic import BaseModel, Field

from enclave.api.routers.deps import inbox_of, kb_of, principal
from enclave.core.errors import Forbidden, InvalidRequest
from enclave.core.protocols import Principal

router = APIRouter(tags=["knowledge base"])


def _readable(who: Principal, collection: str) -> None:
    if not who.may_read(collection):
        raise Forbidden(f"you may not read collection '{collection}'")


def _admin(who: Principal) -> None:
    if not who.admin:
        raise Forbidden("changing the knowledge base needs an admin key")


FILES_DOC = "One or more files (any format `enclave formats` lists); a name may hold a folder path: a/b.docx."


def upload_name(raw: str | None) -> str:
    """The file's name as sent, a relative path kept (a dropped folder), never climbing out: 'a/../b' → 'a/b'."""
    parts = [p for p in (raw or "").replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if not parts:
        raise InvalidRequest("every uploaded file needs a file name")
    return "/".join(parts)[-500:]


@router.post("/v1/documents")
async def upload(
    request: Request,
    files: list[UploadFile] = File(..., description=FILES_DOC),
    collection: str = Form("docs"),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """Ingest the files now and answer when they are in (or refused, each with its reason)."""
    _admin(who)
    kb = kb_of(request)
    kb.check_collection(collection)
    from enclave.knowledge.store import IngestReport

    report = IngestReport()
    for f in files:
        name = upload_name(f.filename)
        data = await f.read()
        await asyncio.to_thread(kb.ingest_bytes, f"upload/{name}", data, collection, report)
    return {"collection": collection, **report.as_dict()}


@router.post("/v1/ingest", status_code=202)
async def ingest_job(
    request: Request,
    files: list[UploadFile] = File(..., description=FILES_DOC),
    collection: str = Form("docs"),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """Accept files for ingestion in the background: once this answers 202 they are on disk and survive a restart;
    `GET /v1/ingest/{id}` follows each file (queued, reading, OCR page 3/12, embedding, done or error)."""
    _admin(who)
    inbox = inbox_of(request)
    # Spooled to disk by the server: copied into the inbox in pieces, never read whole.
    batch: list[tuple[str, bytes | BinaryIO]] = [(upload_name(f.filename), f.file) for f in files]
    job = await asyncio.to_thread(inbox.accept, collection, batch)
    return job.as_dict()


@router.get("/v1/ingest")
async def ingest_jobs(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """The latest ingest jobs, newest first."""
    _admin(who)
    return {"object": "list", "data": [j.as_dict() for j in inbox_of(request).recent()]}


@router.get("/v1/ingest/{job_id}")
async def ingest_status(job_id: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """One ingest job, file by file."""
    _admin(who)
    return inbox_of(request).get(job_id).as_dict()


@router.get("/v1/collections")
async def collections(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    rows = await asyncio.to_thread(kb_of(request).list_collections)
    return {"object": "list", "data": [c for c in rows if who.may_read(c["name"])]}


@router.delete("/v1/collections/{collection}", status_code=204)
async def delete_collection(collection: str, request: Request, who: Principal = Depends(principal)) -> Response:
    _admin(who)
    await asyncio.to_thread(kb_of(request).delete_collection, collection)
    return Response(status_code=204)


@router.get("/v1/collections/{collection}/documents")
async def documents(collection: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    _readable(who, collection)
    return {"object": "list", "data": await asyncio.to_thread(kb_of(request).list_documents, collection)}


@router.get("/v1/collections/{collection}/documents/{doc_id}")
async def document(
    collection: str, doc_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    _readable(who, collection)
    doc: dict[str, Any] = await asyncio.to_thread(kb_of(request).get_document, collection, doc_id)
    return doc


@router.delete("/v1/collections/{collection}/documents/{doc_id}", status_code=204)
async def delete_document(
    collection: str, doc_id: str, request: Request, who: Principal = Depends(principal)
) -> Response:
    _admin(who)
    await asyncio.to_thread(kb_of(request).delete_document, collection, doc_id)
    return Response(status_code=204)


class SearchRequest(BaseModel):
    query: str = Field(description="What to look for.")
    collection: str = Field("docs", description="Collection to search.")
    k: int = Field(5, ge=1, le=50, description="How many results.")
    rerank: bool | None = Field(
        None,
        description="Reorder the candidates with the reranker (unset: as the server is configured, rag.rerank); "
        "true on a server without one is refused.",
    )


class SearchResult(BaseModel):
    id: str
    title: str
    uri: str
    snippet: str
    score: float
    rerank_score: float | None = Field(None, description="The reranker's logit, when it ordered the results.")
    section: str = ""
    page: int | None = None


class SearchResponse(BaseModel):
    results: list[SearchResult]


@router.post("/v1/search")
async def search(body: SearchRequest, request: Request, who: Principal = Depends(principal)) -> SearchResponse:
    kb = kb_of(request)
    chunks = await asyncio.to_thread(kb.search, body.query, body.collection, who, body.k, "hybrid", body.rerank)
    return SearchResponse(
        results=[
            SearchResult(
                id=c.id,
                title=c.title,
                uri=c.uri,
                snippet=" ".join(c.text.split())[:300],
                score=c.score,
                rerank_score=c.metadata.get("rerank_score"),
                section=str(c.metadata.get("section") or ""),
                page=c.metadata.get("page"),
            )
            for c in chunks
        ]
    )
