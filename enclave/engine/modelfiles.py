"""Finding the base model's files and converting them once: the GGUF, its transformers copy, its tokenizer.

`base_gguf` finds the operator's GGUF or the catalogue's; `load_model` converts it once into the model cache
for transformers (the conversion records the GGUF's hash, so adapters name the exact base they were trained on).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from enclave.core.errors import BackendUnavailable
from enclave.core.files import atomic_path
from enclave.core.settings import Settings
from enclave.engine.catalog import CATALOG, file_sha256, locate

log = logging.getLogger(__name__)


def base_gguf(settings: Settings) -> Path:
    """The GGUF file of the base model: the operator's own (models.gguf_dir), or one from the catalogue."""
    m = settings.models
    if m.gguf_dir:
        given = Path(m.gguf_dir).expanduser()
        if given.is_file():
            return given
        if m.gguf_file:
            path = given / m.gguf_file
            if not path.is_file():
                raise BackendUnavailable(f"model file not found: {path}")
            return path
        found = sorted(given.glob("*.gguf")) if given.is_dir() else []
        if len(found) != 1:
            what = ", ".join(f.name for f in found) or "no .gguf file"
            raise BackendUnavailable(f"models.gguf_dir {given} holds {what}: set models.gguf_file to one GGUF file")
        return found[0]
    model = CATALOG.get(m.base)
    if model is None:
        raise BackendUnavailable(f"unknown base model {m.base!r}; the catalogue has: {', '.join(CATALOG)}")
    return locate(model, settings.model_cache_path)


def converted_model_dir(settings: Settings) -> tuple[Path, Path]:
    """(gguf path, cache folder) — the cache key covers the file and the transformers version."""
    import transformers

    gguf = base_gguf(settings)
    stat = gguf.stat()
    key = hashlib.sha256(
        f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}|{transformers.__version__}".encode()
    ).hexdigest()[:16]
    return gguf, settings.model_cache_path / f"{gguf.stem}-{key}"


SOURCE_FILE = "enclave-source.json"


def base_model_sha256(model_dir: Path) -> str:
    """The GGUF's hash, recorded at conversion: adapters name the exact base they were trained on."""
    return str(json.loads((model_dir / SOURCE_FILE).read_text())["sha256"])


def load_model(settings: Settings) -> tuple[Any, Any, Path]:
    """Load tokenizer and model; the first load converts the GGUF (~30 s), later loads take a second."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, cache = converted_model_dir(settings)
    if _converted(cache):
        tokenizer = AutoTokenizer.from_pretrained(cache)
        model = AutoModelForCausalLM.from_pretrained(cache)
    else:
        log.info("converting %s once into %s", gguf.name, cache)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if cache.is_dir() and not _converted(cache):  # what an older version's interrupted conversion left
            shutil.rmtree(cache, ignore_errors=True)
        # A folder of this process's own: two processes converting at once never write into the same one, and
        # the first to finish wins (a whole conversion already in place is kept).
        with atomic_path(cache, directory=True, overwrite=False) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / SOURCE_FILE).write_text(json.dumps({"gguf": str(gguf), "sha256": file_sha256(gguf)}))
    model.eval()
    return tokenizer, model, cache


def _converted(cache: Path) -> bool:
    return (cache / "config.json").is_file() and (cache / "tokenizer.json").is_file()


def load_tokenizer(settings: Settings) -> Any:
    """Only the tokenizer (for chat templates in front of a remote server)."""
    from transformers import AutoTokenizer

    gguf, cache = converted_model_dir(settings)
    if (cache / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(cache)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
