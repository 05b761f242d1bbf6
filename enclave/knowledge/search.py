"""Hybrid search: BM25 (its index and cache) and dense rankings fused by reciprocal rank."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from enclave.core.protocols import Chunk
from enclave.knowledge.chroma import get_all
from enclave.knowledge.embedder import Embedder

RRF_K = 60
# How stale the BM25 index may be after another process (say `enclave ingest` beside the server) wrote to
# the collection: its chunk count is rechecked at most this often, because Chroma counts by scanning.
RECOUNT_S = 1.0
_WORD = re.compile(r"[A-Za-z0-9_]+")
Mode = Literal["dense", "bm25", "hybrid"]


def tokenize(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


class BM25Index:
    """Okapi BM25 (k1 1.5, b 0.75, negative idf floored at a quarter of the mean, as rank_bm25 does) with
    every document's term weights precomputed in a sparse matrix: a query is a sum of a few columns,
    a millisecond or two at ten thousand chunks instead of a Python loop over every document."""

    K1, B, EPS = 1.5, 0.75, 0.25

    def __init__(self, ids: list[str], texts: list[str]) -> None:
        import numpy as np
        from scipy import sparse

        self.ids = ids
        self.vocab: dict[str, int] = {}
        self.matrix: Any = None
        self.idf: Any = None
        if not ids:
            return
        rows: list[int] = []
        cols: list[int] = []
        counts: list[int] = []
        lengths = np.zeros(len(texts), dtype=np.float32)
        for i, text in enumerate(texts):
            tokens = tokenize(text) or ["_"]
            lengths[i] = len(tokens)
            for term, c in Counter(tokens).items():
                rows.append(i)
                cols.append(self.vocab.setdefault(term, len(self.vocab)))
                counts.append(c)
        n = len(texts)
        tf = sparse.csr_matrix((np.asarray(counts, dtype=np.float32), (rows, cols)), shape=(n, len(self.vocab)))
        df = np.bincount(np.asarray(cols), minlength=len(self.vocab)).astype(np.float64)
        idf = np.log(n - df + 0.5) - np.log(df + 0.5)
        idf[idf < 0] = self.EPS * idf.mean()
        self.idf = idf
        self.unseen = float(np.log(n + 0.5) - np.log(0.5))  # a term no chunk holds
        norm = self.K1 * (1 - self.B + self.B * lengths / lengths.mean())
        row_of = np.repeat(np.arange(n), np.diff(tf.indptr))
        tf.data = (tf.data * (self.K1 + 1) / (tf.data + norm[row_of]) * idf[tf.indices]).astype(np.float32)
        self.matrix = tf.tocsc()

    def rarity(self, query: str) -> dict[str, float]:
        """Each query term's idf in the collection (how much it tells chunks apart); an unknown term gets the
        idf of a term no chunk holds."""
        if self.idf is None:
            return {}
        return {
            t: round(float(self.idf[self.vocab[t]]) if t in self.vocab else self.unseen, 3) for t in tokenize(query)
        }

    def top(self, query: str, n: int) -> list[tuple[str, float]]:
        import numpy as np

        cols = [self.vocab[t] for t in tokenize(query) if t in self.vocab]
        if self.matrix is None or not cols or n <= 0:
            return []
        scores = np.asarray(self.matrix[:, cols].sum(axis=1)).ravel()
        k = min(n, len(scores))
        idx = np.argpartition(-scores, k - 1)[:k]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        return [(self.ids[i], float(scores[i])) for i in idx if scores[i] > 0]


@dataclass
class _BM25Cached:
    version: int  # this process's change counter for the collection when the index was built
    count: int  # the collection's chunk count then
    index: BM25Index
    counted_at: float  # monotonic time of the last count


class BM25Cache:
    """Each collection's BM25 index, kept until this process changes the collection or its chunk count moves."""

    def __init__(self) -> None:
        self._cached: dict[str, _BM25Cached] = {}
        self._versions: dict[str, int] = {}

    def changed(self, collection: str) -> None:
        """This process wrote to the collection: its index is rebuilt on the next search."""
        self._versions[collection] = self._versions.get(collection, 0) + 1

    def index(self, collection: str, col: Any) -> BM25Index:
        """The collection's BM25 index, rebuilt when this process changed the collection or its chunk count
        moved (another process's writes). Counting scans Chroma's table (~10 ms at 100k chunks, three times
        what the rest of a search costs), so it is redone at most every RECOUNT_S, not on every search."""
        version = self._versions.get(collection, 0)
        now = time.monotonic()
        cached = self._cached.get(collection)
        if cached is not None and cached.version == version and now - cached.counted_at < RECOUNT_S:
            return cached.index
        count = col.count()
        if cached is None or (cached.version, cached.count) != (version, count):
            got = get_all(col, ["documents"])
            cached = _BM25Cached(version, count, BM25Index(list(got["ids"]), list(got["documents"])), now)
            self._cached[collection] = cached
        cached.counted_at = now
        return cached.index


def fuse(*rankings: list[str]) -> dict[str, float]:
    """Reciprocal-rank fusion: each id's sum of 1 / (RRF_K + rank) over the rankings, in first-seen order."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, cid in enumerate(ranking):
            fused[cid] = fused.get(cid, 0.0) + 1.0 / (RRF_K + rank + 1)
    return fused


def hybrid_search(
    col: Any, embedder: Embedder, lexicon: Callable[[], BM25Index], query: str, k: int, mode: Mode
) -> list[Chunk]:
    """The top `k` chunks of a Chroma collection for a checked query; `lexicon` gives its BM25 index."""
    import numpy as np

    depth = max(k * 4, 30)
    qvec = embedder.embed([query])[0]
    q = np.asarray(qvec, dtype=np.float32)
    dense: list[str] = []
    if mode in ("dense", "hybrid"):
        # No count first: Chroma returns what there is (nothing from an empty collection).
        res = col.query(query_embeddings=[qvec], n_results=depth, include=[])
        dense = list(res["ids"][0])
    lexical: list[tuple[str, float]] = []
    rarity: dict[str, float] = {}
    if mode in ("bm25", "hybrid"):
        index = lexicon()
        lexical = index.top(query, depth)
        rarity = index.rarity(query)
    fused = fuse(dense, [cid for cid, _ in lexical])
    top = sorted(fused, key=lambda c: -fused[c])[:k]
    if not top:
        return []
    got = col.get(ids=top, include=["documents", "metadatas", "embeddings"])
    bm25 = dict(lexical)
    by_id = {}
    for cid, text, meta, emb in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True):
        vec = np.asarray(emb, dtype=np.float32)
        cos = float(np.dot(q, vec))
        by_id[cid] = Chunk(
            id=cid,
            text=text,
            title=str(meta["title"]),
            uri=str(meta["uri"]),
            score=round(fused[cid], 6),
            metadata={
                "dense_score": round(cos, 4),
                "bm25_score": round(bm25.get(cid, 0.0), 4),
                "section": meta.get("section") or "",
                "page": meta.get("page") or None,
                "doc_id": meta["doc_id"],
                # the query's terms and their idf in the collection, one dict shared by the chunks of one search
                "query_idf": rarity,
            },
            embedding=vec,
        )
    return [by_id[c] for c in top]
