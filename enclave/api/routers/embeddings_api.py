"""OpenAI's /v1/embeddings on the service's own embedder (the model the knowledge base indexes with)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from enclave.api.routers.deps import get_state, principal, require_ready
from enclave.core.errors import BackendUnavailable, InvalidRequest, NotFound
from enclave.core.protocols import Principal

router = APIRouter(prefix="/v1", tags=["openai"])

# Texts one request may embed (OpenAI's own limit).
MAX_INPUTS = 2048


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    state = get_state(request)
    require_ready(state)
    if state.kb is None:
        raise BackendUnavailable("the embedder is not available on this server (no knowledge base)")
    embedder = state.kb.embedder
    if body.model != embedder.name:
        raise NotFound(f"the embedding model '{body.model}' does not exist; this server embeds with '{embedder.name}'")
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest("input must be a text or a list of texts (token arrays are not supported)")
    texts = [str(t) for t in texts]
    if len(texts) > MAX_INPUTS:
        raise InvalidRequest(f"input has {len(texts)} texts; at most {MAX_INPUTS} per request")
    limit = state.settings.limits.max_message_chars
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidRequest(f"input[{i}] is empty")
        if len(text) > limit:
            raise InvalidRequest(f"input[{i}] is {len(text)} characters; the limit is {limit}")
    measured = await asyncio.to_thread(embedder.measure, texts)
    too_long = [i for i, (_, cut) in enumerate(measured) if cut]
    if too_long:
        raise InvalidRequest(
            f"input[{too_long[0]}] is longer than the {measured[too_long[0]][0]} tokens '{embedder.name}' reads; "
            "split it"
        )
    if body.dimensions is not None and body.dimensions != embedder.dimension:
        raise InvalidRequest(f"dimensions must be {embedder.dimension} for '{embedder.name}' (it cannot shorten)")
    release = await state.pipeline.key_limits.acquire(who.name) if state.pipeline.key_limits else None
    try:
        vectors = await asyncio.to_thread(embedder.embed, texts)
    finally:
        if release:
            release()
    state.metrics.requests.labels("embeddings").inc()
    tokens = sum(n for n, _ in measured)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "model": embedder.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _encoded(vector: list[float], fmt: str) -> list[float] | str:
    """A vector as floats, or as base64 of little-endian float32 (what the openai client asks for by default)."""
    if fmt == "float":
        return vector
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
