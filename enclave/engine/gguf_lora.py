"""Convert a peft LoRA adapter (HF layout) to llama.cpp's GGUF LoRA format, so the llama.cpp engine can hot-load it.

The one subtle step: for llama, llama.cpp stores attn_q/attn_k rows in its rope order, so lora_B of q and k is
row-permuted; qwen2 uses NeoX rope (HF's own layout), whose rows the GGUF keeps as they are.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from enclave.core.errors import InvalidRequest
from enclave.core.files import atomic_path

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
GGUF_FILE = "adapter.gguf"

# Our own KVs in the adapter.gguf: llama.cpp lists and ignores them; ensure_gguf_adapter reads them.
KV_SOURCE_SHA256 = "enclave.source_sha256"
KV_CONFIG_SHA256 = "enclave.config_sha256"
KV_BASE = "enclave.base_fingerprint"
KV_VERSION = "enclave.converter_version"
# Bump when the output changes for the same input, so cached files are rebuilt.
CONVERTER_VERSION = 1
# The architectures the conversion knows, and whether their GGUF permutes the q/k rows (llama's converter does;
# qwen2's, whose rope is NeoX-style, does not).
ARCHITECTURES: dict[str, bool] = {"llama": True, "qwen2": False}

# peft module name -> (parent module, llama.cpp tensor name)
MODULES: dict[str, tuple[str, str]] = {
    "q_proj": ("self_attn", "attn_q"),
    "k_proj": ("self_attn", "attn_k"),
    "v_proj": ("self_attn", "attn_v"),
    "o_proj": ("self_attn", "attn_output"),
    "gate_proj": ("mlp", "ffn_gate"),
    "up_proj": ("mlp", "ffn_up"),
    "down_proj": ("mlp", "ffn_down"),
}
_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(\w+)\.(\w+)\.lora_([AB])\.weight$")

# Config options whose adapters compute something llama.cpp's plain `W x + alpha/r * B A x` does not.
_UNSUPPORTED = {
    "use_rslora": "rsLoRA scales by alpha/sqrt(r), llama.cpp by alpha/r",
    "use_dora": "DoRA's magnitude vector has no llama.cpp equivalent",
    "use_qalora": "QA-LoRA pools its input; llama.cpp does not",
    "lora_bias": "llama.cpp adapters carry no bias",
    "fan_in_fan_out": "transposed (Conv1D) weights do not occur in llama models",
    "modules_to_save": "fully trained modules cannot be expressed as a LoRA",
    "trainable_token_indices": "trained token rows cannot be expressed as a LoRA",
    "layer_replication": "replicated layers do not exist in the base GGUF",
    "alora_invocation_tokens": "activated LoRA is not supported by this converter",
    "target_parameters": "LoRA on raw parameters is not supported",
    "alpha_pattern": "per-module alpha is not supported (llama.cpp has one alpha per adapter)",
    "megatron_config": "Megatron-parallel LoRA is not supported",
}

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}


@dataclass(frozen=True)
class BaseInfo:
    """What the conversion needs to know about the base GGUF."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    shapes: dict[str, tuple[int, ...]]  # tensor name -> numpy-order shape (out, in)

    @property
    def fingerprint(self) -> str:
        return f"{self.arch}|layers={self.n_layer}|heads={self.n_head}|kv_heads={self.n_head_kv}"


def convert_peft_to_gguf(adapter_dir: Path, base_gguf: Path, out_path: Path | None = None) -> Path:
    """Write `adapter_dir`'s peft LoRA as a llama.cpp GGUF LoRA for `base_gguf`; returns the written path.

    Raises InvalidRequest when the adapter is missing, corrupt, uses a LoRA variant llama.cpp cannot run, or does
    not fit the base model.
    """
    return _convert(Path(adapter_dir), Path(base_gguf), out_path, permute_qk=True)


def ensure_gguf_adapter(adapter_dir: Path, base_gguf: Path) -> Path:
    """`adapter_dir/adapter.gguf`, converted again only when the peft files or the base model's layout changed."""
    adapter_dir, base_gguf = Path(adapter_dir), Path(base_gguf)
    out = adapter_dir / GGUF_FILE
    config_bytes, weights_bytes = _read_sources(adapter_dir)
    base = read_base(base_gguf)
    wanted = {
        KV_SOURCE_SHA256: hashlib.sha256(weights_bytes).hexdigest(),
        KV_CONFIG_SHA256: hashlib.sha256(config_bytes).hexdigest(),
        KV_BASE: base.fingerprint,
        KV_VERSION: CONVERTER_VERSION,
    }
    if out.is_file() and _cached_kvs(out) == wanted:
        return out
    return _convert(adapter_dir, base_gguf, out, permute_qk=True)


def read_base(base_gguf: Path) -> BaseInfo:
    """Architecture, head counts and tensor shapes of a GGUF model (header only; the weights are not read)."""
    if not base_gguf.is_file():
        raise InvalidRequest(f"base model not found: {base_gguf}")
    try:
        kvs, shapes = read_gguf_header(base_gguf)
        arch = str(kvs["general.architecture"])
        info = BaseInfo(
            arch=arch,
            n_layer=int(kvs[f"{arch}.block_count"]),
            n_head=int(kvs[f"{arch}.attention.head_count"]),
            n_head_kv=int(kvs[f"{arch}.attention.head_count_kv"]),
            shapes=shapes,
        )
    except (ValueError, KeyError, OSError, struct.error) as e:
        raise InvalidRequest(f"cannot read the base model {base_gguf.name}: {e}") from e
    if info.arch not in ARCHITECTURES:
        raise InvalidRequest(
            f"base model architecture {info.arch!r} is not supported (supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    return info


def read_gguf_header(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """Scalar and string KVs (arrays skipped) and numpy-order tensor shapes of a little-endian GGUF file.

    gguf.GGUFReader would do, but it turns every element of the tokenizer's arrays into a numpy view: 3 s for this
    49k-token vocabulary, on every staleness check. Skipping the arrays takes milliseconds.
    """
    import gguf

    t = gguf.GGUFValueType
    scalars = {
        t.UINT8: "B", t.INT8: "b", t.UINT16: "H", t.INT16: "h", t.UINT32: "I", t.INT32: "i",
        t.FLOAT32: "f", t.BOOL: "?", t.UINT64: "Q", t.INT64: "q", t.FLOAT64: "d",
    }  # fmt: skip
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos = 0

        def take(fmt: str) -> Any:
            nonlocal pos
            value = struct.unpack_from("<" + fmt, buf, pos)[0]
            pos += struct.calcsize(fmt)
            return value

        def string() -> str:
            nonlocal pos
            n = take("Q")
            if pos + n > len(buf):
                raise ValueError("string runs past the end of the file")
            pos += n
            return bytes(buf[pos - n : pos]).decode("utf-8", errors="replace")

        if bytes(buf[:4]) != b"GGUF":
            raise ValueError("not a GGUF file")
        pos = 4
        if take("I") not in (2, 3):
            raise ValueError("unsupported GGUF version (or a big-endian file)")
        n_tensors, n_kv = take("Q"), take("Q")
        kvs: dict[str, Any] = {}
        for _ in range(n_kv):
            key, kind = string(), take("I")
            if kind == t.STRING:
                kvs[key] = string()
            elif kind in scalars:
                kvs[key] = take(scalars[t(kind)])
            elif kind == t.ARRAY:
                item, n = take("I"), take("Q")
                if item == t.STRING:
                    for _ in range(n):
                        length = take("Q")  # not `pos += take(...)`: that would add to pos as it was before take
                        pos += length
                elif item in scalars:
                    pos += n * struct.calcsize(scalars[t(item)])
                else:
                    raise ValueError(f"unsupported array type {item} in {key}")
            else:
                raise ValueError(f"unknown value type {kind} in {key}")
            if pos > len(buf):
                raise ValueError("metadata runs past the end of the file")
        shapes: dict[str, tuple[int, ...]] = {}
        for _ in range(n_tensors):
            name, n_dims = string(), take("I")
            ne = [take("Q") for _ in range(n_dims)]
            pos += struct.calcsize("<IQ")  # ggml type, data offset
            shapes[name] = tuple(reversed(ne))  # ggml lists the fastest-varying dimension first
    return kvs, shapes


def _cached_kvs(path: Path) -> dict[str, Any] | None:
    try:
        kvs = read_gguf_header(path)[0]
    except (ValueError, OSError, struct.error):
        return None  # unreadable: convert again
    return {key: kvs.get(key) for key in (KV_SOURCE_SHA256, KV_CONFIG_SHA256, KV_BASE, KV_VERSION)}


def _read_sources(adapter_dir: Path) -> tuple[bytes, bytes]:
    config, weights = adapter_dir / CONFIG_FILE, adapter_dir / WEIGHTS_FILE
    for path in (config, weights):
        if not path.is_file():
            hint = " (only safetensors adapters are supported)" if path == weights else ""
            raise InvalidRequest(f"adapter file missing: {path}{hint}")
    return config.read_bytes(), weights.read_bytes()


def _parse_config(raw: bytes) -> dict[str, Any]:
    try:
        config = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"{CONFIG_FILE} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise InvalidRequest(f"{CONFIG_FILE} is not a JSON object")
    if config.get("peft_type") != "LORA":
        raise InvalidRequest(f"adapter type {config.get('peft_type')!r} is not LORA")
    for option, why in _UNSUPPORTED.items():
        if config.get(option):
            raise InvalidRequest(f"adapter uses {option}, which cannot be converted: {why}")
    if config.get("bias", "none") != "none":
        raise InvalidRequest("adapter trains biases (bias != 'none'); llama.cpp adapters carry no bias")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        # llama.cpp reads alpha 0 as "no scaling", which is not what peft does with it.
        raise InvalidRequest(f"lora_alpha must be a positive number, got {alpha!r}")
    return config


def _parse_safetensors(raw: bytes) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as float32 arrays (BF16 included, which numpy cannot load itself)."""
    try:
        if len(raw) < 8:
            raise ValueError("file too short")
        n = int.from_bytes(raw[:8], "little")
        if n > len(raw) - 8:
            raise ValueError("header larger than the file")
        header = json.loads(raw[8 : 8 + n])
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        data = memoryview(raw)[8 + n :]
        tensors = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            dtype = _DTYPES.get(spec["dtype"])
            if dtype is None:
                raise ValueError(f"tensor {name} has unsupported dtype {spec['dtype']}")
            shape = tuple(int(d) for d in spec["shape"])
            begin, end = (int(x) for x in spec["data_offsets"])
            if not 0 <= begin <= end <= len(data) or end - begin != int(np.prod(shape)) * np.dtype(dtype).itemsize:
                raise ValueError(f"tensor {name} lies outside the file or has the wrong size")
            arr = np.frombuffer(data[begin:end], dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
            if spec["dtype"] == "BF16":
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            tensors[name] = arr.astype(np.float32)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"{WEIGHTS_FILE} is corrupt: {e}") from e
    return tensors


def _qk_rows_to_llama(b: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> llama.cpp row order of a q or k projection: per head, rows [x_0..x_{d/2-1}, y_0..] become x_0, y_0, ...

    HF's rope rotates element j with element j + d/2 of a head; llama.cpp's (non-NeoX) rope rotates adjacent pairs,
    so its converter stored row (h, s, j) of HF at (h, j, s). transformers undid that when it loaded the GGUF, so
    weights trained in HF layout must be re-ordered the same way before llama.cpp adds them to its rows.
    """
    rows = b.shape[0]
    if rows % (2 * n_head):
        raise InvalidRequest(f"{rows} q/k rows do not split into {n_head} heads of rope pairs")
    return b.reshape(n_head, 2, rows // n_head // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


def _pairs(tensors: dict[str, np.ndarray], base: BaseInfo) -> dict[tuple[int, str], dict[str, np.ndarray]]:
    """(layer, peft module) -> {"A": ..., "B": ...}, refusing keys and shapes that do not fit the base."""
    pairs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, arr in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise InvalidRequest(f"adapter tensor {key} is not a LoRA weight of a llama layer's linear projection")
        layer, parent, module, side = int(m[1]), m[2], m[3], m[4]
        if module not in MODULES or MODULES[module][0] != parent:
            known = ", ".join(MODULES)
            raise InvalidRequest(f"adapter targets {parent}.{module}, which cannot be converted (supported: {known})")
        if layer >= base.n_layer:
            raise InvalidRequest(f"adapter has layer {layer}, the base model only {base.n_layer} layers")
        if arr.ndim != 2:
            raise InvalidRequest(f"adapter tensor {key} has shape {arr.shape}, expected a matrix")
        pairs.setdefault((layer, module), {})[side] = arr
    if not pairs:
        raise InvalidRequest(f"{WEIGHTS_FILE} holds no LoRA weights")
    for (layer, module), ab in sorted(pairs.items()):
        where = f"layer {layer} {module}"
        if set(ab) != {"A", "B"}:
            raise InvalidRequest(f"{where}: lora_A or lora_B is missing")
        name = f"blk.{layer}.{MODULES[module][1]}.weight"
        out, inp = base.shapes.get(name, (None, None))
        a, b = ab["A"], ab["B"]
        if a.shape[0] != b.shape[1] or a.shape[1] != inp or b.shape[0] != out:
            raise InvalidRequest(
                f"{where}: lora_A {a.shape} and lora_B {b.shape} do not fit the base model's {name} "
                f"(out={out}, in={inp}); was the adapter trained on another model?"
            )
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise InvalidRequest(f"{where}: the adapter holds NaN or infinite values")
    return pairs


def _convert(adapter_dir: Path, base_gguf: Path, out_path: Path | None, *, permute_qk: bool) -> Path:
    """The conversion; `permute_qk=False` exists only so the test can show the permutation matters."""
    import gguf

    config_bytes, weights_bytes = _read_sources(adapter_dir)
    config = _parse_config(config_bytes)
    base = read_base(base_gguf)
    pairs = _pairs(_parse_safetensors(weights_bytes), base)
    out = Path(out_path) if out_path is not None else adapter_dir / GGUF_FILE
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, base.arch)
        try:
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            # llama.cpp scales each pair by alpha / rank, rank read from the tensor: rank_pattern needs nothing more.
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
            writer.add_string(KV_SOURCE_SHA256, hashlib.sha256(weights_bytes).hexdigest())
            writer.add_string(KV_CONFIG_SHA256, hashlib.sha256(config_bytes).hexdigest())
            writer.add_string(KV_BASE, base.fingerprint)
            writer.add_uint32(KV_VERSION, CONVERTER_VERSION)
            for (layer, module), ab in sorted(pairs.items()):
                a, b = ab["A"], ab["B"]
                permute = permute_qk and ARCHITECTURES[base.arch]
                if permute and module == "q_proj":
                    b = _qk_rows_to_llama(b, base.n_head)
                elif permute and module == "k_proj":
                    b = _qk_rows_to_llama(b, base.n_head_kv)
                name = f"blk.{layer}.{MODULES[module][1]}.weight"
                # numpy (r, in) and (out, r) are ggml ne (in, r) and (r, out): what llama.cpp checks for.
                writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a, dtype=np.float32))
                writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b, dtype=np.float32))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
    return out
