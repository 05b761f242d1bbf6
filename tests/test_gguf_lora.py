"""peft LoRA -> llama.cpp GGUF LoRA: format, clear refusals, caching, and the adapter's effect matched in llama.cpp.

The effect tests build a real peft adapter on the real model and compare what it does to the logits in
transformers+peft with what its conversion does in llama.cpp. Exactness is checked on an F32 re-encoding of the
shipped GGUF: on quantized weights llama.cpp rounds activations to 8 bits, and that rounding is chaotic (a 1e-6
change in layer 0 moves the last logits by a norm of ~40), so only a strong adapter is comparable there.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file

from enclave.core.errors import InvalidRequest
from enclave.core.settings import Settings
from enclave.engine import gguf_lora
from enclave.engine.gguf_lora import (
    GGUF_FILE,
    KV_SOURCE_SHA256,
    WEIGHTS_FILE,
    convert_peft_to_gguf,
    ensure_gguf_adapter,
)
from enclave.engine.modelfiles import base_gguf
from tests.conftest import MODEL_CACHE

BASE = base_gguf(Settings())  # the shipped SmolLM2-135M-Instruct.Q4_1.gguf
# The effect tests run on both architectures the converter knows: llama (SmolLM2, q/k rows permuted) and qwen2
# (Qwen2.5-Coder-0.5B, NeoX rope: rows kept).
BASES = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
N_HEAD, N_HEAD_KV, HEAD_DIM, HIDDEN = 9, 3, 64, 576
PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France, and why is it famous?"},
]


# -- synthetic adapters: format, refusals and caching, no model needed ------------------------------------------


def peft_config(**overrides: Any) -> dict[str, Any]:
    """The fields of a peft LoraConfig that the converter reads, with peft's defaults."""
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "k_proj", "v_proj"],
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    return {**config, **overrides}


def synthetic_tensors(seed: int = 0, layers: tuple[int, ...] = (0, 1)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    outs = {"q_proj": N_HEAD * HEAD_DIM, "k_proj": N_HEAD_KV * HEAD_DIM, "v_proj": N_HEAD_KV * HEAD_DIM}
    tensors = {}
    for layer in layers:
        for module, out in outs.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((8, HIDDEN)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((out, 8)).astype(np.float32)
    return tensors


def write_adapter(folder: Path, tensors: dict[str, np.ndarray] | None = None, **config: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(synthetic_tensors() if tensors is None else tensors, str(folder / WEIGHTS_FILE))
    (folder / "adapter_config.json").write_text(json.dumps(peft_config(**config)))
    return folder


def test_writes_llama_cpp_lora_layout(tmp_path: Path) -> None:
    tensors = synthetic_tensors()
    out = convert_peft_to_gguf(write_adapter(tmp_path / "a", tensors), BASE)
    assert out == tmp_path / "a" / GGUF_FILE
    reader = gguf.GGUFReader(out)
    kv = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert kv["general.type"] == "adapter"
    assert kv["general.architecture"] == "llama"
    assert kv["adapter.type"] == "lora"
    assert kv["adapter.lora.alpha"] == 16.0
    assert reader.fields["adapter.lora.alpha"].types == [gguf.GGUFValueType.FLOAT32]
    assert len(kv[KV_SOURCE_SHA256]) == 64
    got = {t.name: t for t in reader.tensors}
    assert len(got) == 12
    # ggml's ne order is numpy's reversed: lora_a is (in, r), lora_b (r, out) -- what llama.cpp checks.
    assert list(got["blk.1.attn_q.weight.lora_a"].shape) == [HIDDEN, 8]
    assert list(got["blk.1.attn_k.weight.lora_b"].shape) == [8, N_HEAD_KV * HEAD_DIM]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)

    def data(name: str) -> np.ndarray:
        return np.asarray(got[name].data).reshape(tuple(reversed([int(d) for d in got[name].shape])))

    prefix = "base_model.model.model.layers.1.self_attn"
    np.testing.assert_array_equal(data("blk.1.attn_q.weight.lora_a"), tensors[f"{prefix}.q_proj.lora_A.weight"])
    np.testing.assert_array_equal(data("blk.1.attn_v.weight.lora_b"), tensors[f"{prefix}.v_proj.lora_B.weight"])
    # q and k: within each head, HF row s*32 + j (s = which half) lands on llama.cpp row 2j + s.
    for module, name, heads in (("q_proj", "attn_q", N_HEAD), ("k_proj", "attn_k", N_HEAD_KV)):
        hf, llama = tensors[f"{prefix}.{module}.lora_B.weight"], data(f"blk.1.{name}.weight.lora_b")
        for h in range(heads):
            for s in range(2):
                for j in range(HEAD_DIM // 2):
                    assert (llama[h * HEAD_DIM + 2 * j + s] == hf[h * HEAD_DIM + s * HEAD_DIM // 2 + j]).all()


def corrupt(folder: Path) -> None:
    (folder / WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")


def truncated(folder: Path) -> None:
    raw = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(raw[: len(raw) // 2])


def retarget(old: str, new: str) -> dict[str, np.ndarray]:
    return {k.replace(old, new): v for k, v in synthetic_tensors().items()}


REFUSALS: list[tuple[str, Any, str]] = [
    ("no config", lambda d: (d / "adapter_config.json").unlink(), "adapter file missing"),
    ("no weights", lambda d: (d / WEIGHTS_FILE).unlink(), "only safetensors adapters"),
    ("corrupt weights", corrupt, "adapter_model.safetensors is corrupt"),
    ("truncated weights", truncated, "adapter_model.safetensors is corrupt"),
    ("config not json", lambda d: (d / "adapter_config.json").write_text("{"), "not valid JSON"),
    ("rslora", {"use_rslora": True}, "use_rslora"),
    ("dora", {"use_dora": True}, "DoRA"),
    ("per-module alpha", {"alpha_pattern": {"q_proj": 32}}, "alpha_pattern"),
    ("trained biases", {"bias": "lora_only"}, "bias"),
    ("not lora", {"peft_type": "IA3"}, "is not LORA"),
    ("zero alpha", {"lora_alpha": 0}, "lora_alpha must be a positive number"),
    ("lm_head", {"tensors": {"base_model.model.lm_head.lora_A.weight": np.ones((8, HIDDEN), np.float32)}}, "lm_head"),
    ("unknown module", {"tensors": retarget("self_attn.v_proj", "self_attn.rotary")}, "self_attn.rotary"),
    ("module in wrong block", {"tensors": retarget("self_attn.v_proj", "mlp.v_proj")}, "mlp.v_proj"),
    ("layer beyond base", {"tensors": synthetic_tensors(layers=(30,))}, "only 30 layers"),
    (
        "other model's width",
        {"tensors": {k: v[:, :512] if ".lora_A." in k else v for k, v in synthetic_tensors().items()}},
        "do not fit the base model's blk.0.attn_k.weight",
    ),
    (
        "half a pair",
        {"tensors": {k: v for k, v in synthetic_tensors().items() if not k.endswith("v_proj.lora_B.weight")}},
        "lora_A or lora_B is missing",
    ),
    ("no lora tensors", {"tensors": {}}, "holds no LoRA weights"),
]


@pytest.mark.parametrize(("case", "change", "message"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refuses_with_a_clear_message(tmp_path: Path, case: str, change: Any, message: str) -> None:
    if isinstance(change, dict):
        config = dict(change)
        folder = write_adapter(tmp_path / "a", config.pop("tensors", None), **config)
    else:
        folder = write_adapter(tmp_path / "a")
        change(folder)
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        convert_peft_to_gguf(folder, BASE)
    assert sorted(p.name for p in folder.iterdir() if p.suffix in (".gguf", ".tmp")) == []


def test_refuses_a_missing_or_foreign_base(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "a")
    with pytest.raises(InvalidRequest, match="base model not found"):
        convert_peft_to_gguf(folder, tmp_path / "nope.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(InvalidRequest, match=r"cannot read the base model junk\.gguf"):
        convert_peft_to_gguf(folder, tmp_path / "junk.gguf")


def test_ensure_reuses_the_cached_file_and_reconverts_when_the_source_changes(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "a")
    out = ensure_gguf_adapter(folder, BASE)
    first = out.stat()
    assert ensure_gguf_adapter(folder, BASE) == out
    assert (out.stat().st_ino, out.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)

    def recorded() -> str:
        return str(gguf.GGUFReader(out).get_field(KV_SOURCE_SHA256).contents())  # type: ignore[union-attr]

    before = recorded()
    save_file(synthetic_tensors(seed=1), str(folder / WEIGHTS_FILE))  # retrained
    assert ensure_gguf_adapter(folder, BASE) == out
    assert out.stat().st_ino != first.st_ino  # replaced whole, never rewritten in place
    assert recorded() != before

    second = out.stat()
    (folder / "adapter_config.json").write_text(json.dumps(peft_config(lora_alpha=32)))
    ensure_gguf_adapter(folder, BASE)
    assert gguf.GGUFReader(out).get_field("adapter.lora.alpha").contents() == 32.0  # type: ignore[union-attr]
    assert out.stat().st_ino != second.st_ino

    out.write_bytes(out.read_bytes()[:100])  # a torn copy is converted again, not trusted
    ensure_gguf_adapter(folder, BASE)
    assert gguf.GGUFReader(out).get_field("adapter.lora.alpha").contents() == 32.0  # type: ignore[union-attr]
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.gguf", "adapter_config.json", WEIGHTS_FILE]


# -- real adapters on the real model, run by transformers+peft and by llama.cpp ----------------------------------


class LlamaRunner:
    """One llama.cpp model and context; adapters are hot-loaded per call, as the engine does per request."""

    def __init__(self, path: Path, exact: bool) -> None:
        import llama_cpp

        self.lib = llama_cpp
        # F32 KV cache on the exact path: llama.cpp's default F16 cache rounds keys and values.
        kv = llama_cpp.GGML_TYPE_F32 if exact else None
        self.llm = llama_cpp.Llama(
            str(path), n_ctx=256, n_threads=2, verbose=False, logits_all=True, type_k=kv, type_v=kv
        )

    def logits(self, ids: list[int], adapter: Path | None = None) -> np.ndarray:
        lib, llm = self.lib, self.llm
        ptr = lib.llama_adapter_lora_init(llm.model, str(adapter).encode()) if adapter else None
        if adapter and not ptr:
            raise AssertionError(f"llama.cpp refused {adapter}")
        try:
            if ptr:
                one = (lib.llama_adapter_lora_p_ctypes * 1)(ptr)
                assert lib.llama_set_adapters_lora(llm.ctx, one, 1, (ctypes.c_float * 1)(1.0)) == 0
            llm.reset()
            llm.eval(ids)
            return np.array(llm.scores[: len(ids)])
        finally:
            if ptr:
                lib.llama_set_adapters_lora(llm.ctx, None, 0, None)
                lib.llama_adapter_lora_free(ptr)

    def close(self) -> None:
        self.llm.close()


@pytest.fixture(scope="module", params=BASES)
def base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path]:
    """(settings serving that base, its GGUF file)."""
    from enclave.engine.modelfiles import base_gguf

    settings = Settings(
        data_dir=str(tmp_path_factory.mktemp("data")),
        models={"cache_dir": str(MODEL_CACHE), "base": request.param},  # type: ignore[arg-type]
    )
    return settings, base_gguf(settings)


@pytest.fixture(scope="module")
def hf(base: tuple[Settings, Path]) -> tuple[Any, Any, list[int]]:
    from enclave.engine.modelfiles import load_model

    tokenizer, model, _ = load_model(base[0])
    ids = list(tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True))
    return tokenizer, model, ids


@pytest.fixture(scope="module")
def exact_llama(base: tuple[Settings, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaRunner]:
    """llama.cpp on the shipped weights re-encoded as F32: the same values, no activation rounding."""
    import llama_cpp

    folder = tmp_path_factory.mktemp("f32")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True
    params.nthread = 2
    f32 = folder / "f32.gguf"
    assert llama_cpp.llama_model_quantize(str(base[1]).encode(), str(f32).encode(), ctypes.byref(params)) == 0
    runner = LlamaRunner(f32, exact=True)
    yield runner
    runner.close()
    shutil.rmtree(folder)  # 0.5-2 GB; pytest would keep it around for three runs


@pytest.fixture(scope="module")
def shipped_llama(base: tuple[Settings, Path]) -> Iterator[LlamaRunner]:
    runner = LlamaRunner(base[1], exact=False)
    yield runner
    runner.close()


def peft_adapter(
    hf: tuple[Any, Any, list[int]], folder: Path, targets: list[str], b_std: float, **lora: Any
) -> np.ndarray:
    """Save a peft LoRA with seeded random A and B (peft starts B at zero) and return its effect on all logits."""
    import torch
    from peft import LoraConfig, get_peft_model

    _, model, ids = hf
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, **lora))
    try:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if ".lora_A." in name or ".lora_B." in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * (b_std if ".lora_B." in name else 0.05))
            x = torch.tensor([ids])
            with peft_model.disable_adapter():
                base = peft_model(x).logits[0].numpy()
            adapted = peft_model(x).logits[0].numpy()
        peft_model.save_pretrained(str(folder))
    finally:
        peft_model.unload()  # the module-scoped model goes back to plain for the next test
    return np.asarray(adapted - base)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


EXACT = [
    # (case, target modules, extra LoraConfig, cosine ceiling of the un-permuted conversion or None)
    # v and o convert right either way, so here the un-permuted file is only ~8% off; the exact one agrees to 1e-6.
    ("attention", ["q_proj", "k_proj", "v_proj", "o_proj"], {}, 0.99),
    ("rope pairs only", ["q_proj", "k_proj"], {}, 0.3),  # nothing right is left when the q/k rows are misplaced
    ("mlp, rank per module", ["gate_proj", "up_proj", "down_proj"], {"rank_pattern": {"down_proj": 4}}, None),
]


@pytest.mark.slow
@pytest.mark.parametrize(("case", "targets", "lora", "wrong_ceiling"), EXACT, ids=[c[0] for c in EXACT])
def test_llama_cpp_applies_the_adapter_as_peft_does(
    base: tuple[Settings, Path],
    hf: tuple[Any, Any, list[int]],
    exact_llama: LlamaRunner,
    tmp_path: Path,
    case: str,
    targets: list[str],
    lora: dict[str, Any],
    wrong_ceiling: float | None,
) -> None:
    ids = hf[2]
    want = peft_adapter(hf, tmp_path, targets, 0.01, **lora)
    gguf_file = base[1]
    plain = exact_llama.logits(ids)
    got = exact_llama.logits(ids, convert_peft_to_gguf(tmp_path, gguf_file)) - plain
    similarity = cosine(got, want)  # every position's logits, so a misplaced rope pair cannot hide
    print(f"\n{case}: cosine {similarity:.6f}, norm ratio {np.linalg.norm(got) / np.linalg.norm(want):.6f}")
    assert similarity > 0.9999
    assert cosine(got[-1], want[-1]) > 0.9999
    assert np.linalg.norm(got) == pytest.approx(np.linalg.norm(want), rel=1e-3)  # alpha / rank scaling
    if wrong_ceiling is not None and gguf_lora.read_base(gguf_file).arch == "llama":
        # The same adapter without the q/k row permutation: llama.cpp then rotates the wrong pairs of dimensions.
        unpermuted = gguf_lora._convert(tmp_path, gguf_file, tmp_path / "unpermuted.gguf", permute_qk=False)
        wrong = cosine(exact_llama.logits(ids, unpermuted) - plain, want)
        print(f"{case}: un-permuted cosine {wrong:.4f}")
        assert wrong < wrong_ceiling


@pytest.mark.slow
def test_shipped_quantized_base_follows_a_strong_adapter(
    base: tuple[Settings, Path], hf: tuple[Any, Any, list[int]], shipped_llama: LlamaRunner, tmp_path: Path
) -> None:
    """The GGUF as shipped: its activation rounding blurs small effects, a strong adapter still comes through."""
    ids = hf[2]
    want = peft_adapter(hf, tmp_path, ["q_proj", "k_proj", "v_proj", "o_proj"], 0.05)
    got = shipped_llama.logits(ids, ensure_gguf_adapter(tmp_path, base[1])) - shipped_llama.logits(ids)
    last, every = cosine(got[-1], want[-1]), cosine(got, want)
    print(f"\nshipped {base[1].name}: cosine last position {last:.4f}, all positions {every:.4f}")
    assert last > 0.9
    assert every > 0.9
    assert os.path.getsize(tmp_path / GGUF_FILE) > 0
