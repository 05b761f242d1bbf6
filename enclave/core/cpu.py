"""The CPU's instruction sets, and the llama.cpp build that runs on them (no Enclave imports, no dependencies).

`python3 -m enclave.core.cpu cmake-args` prints the CMake options the Makefile compiles llama.cpp with: every
x86 instruction set ggml can use that this CPU reports, named one by one instead of `-march=native`, and
AMX never. On 4th/5th-generation Xeons ggml's AMX kernels killed the process (SIGILL on Q4_1, SIGSEGV on
Q4_K) where the AVX-512 ones run the same files; decode on 2 cores is bound by memory, not by AMX.
`variants` and `variant-args NAME` give the image's portable builds, of which `select_llama_library` loads
the best one the node runs. The file runs as a plain script too (the image's build has no Enclave yet).
"""

from __future__ import annotations

import os
import platform
import sys
from functools import cache
from pathlib import Path

# ggml's option → the cpuinfo flags it needs, in the order ggml adds them.
X86_OPTIONS: dict[str, tuple[str, ...]] = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_F16C": ("f16c",),
    "GGML_FMA": ("fma",),
    "GGML_BMI2": ("bmi2",),
    "GGML_AVX2": ("avx2",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512vbmi",),
    "GGML_AVX512_VNNI": ("avx512_vnni",),
    "GGML_AVX512_BF16": ("avx512_bf16",),
}
# Never compiled in, whatever the CPU says (see the module's first lines).
X86_NEVER = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")
COMMON = ("-DLLAVA_BUILD=OFF", "-DGGML_OPENMP=OFF")

# The image's builds: the library loaded is the best one whose flags the node has (`variant_for`).
# x86-64-v3 runs on every server CPU of the last ten years; v4 adds AVX-512 with VNNI and BF16 (Zen 4+,
# Xeon Cooper Lake and later). Names are folder names under the image's llama.cpp directory.
VARIANTS: dict[str, tuple[str, ...]] = {
    "x86-64-v3": ("sse4_2", "avx", "f16c", "fma", "bmi2", "avx2"),
    "x86-64-v4-bf16": (
        "sse4_2", "avx", "f16c", "fma", "bmi2", "avx2",
        "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw", "avx512vbmi", "avx512_vnni", "avx512_bf16",
    ),
}


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux's cpuinfo spells them (avx2, avx512_vnni, ...); empty elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def is_x86() -> bool:
    return platform.machine().lower() in {"x86_64", "amd64"}


def cmake_args(flags: frozenset[str] | None = None, x86: bool | None = None) -> list[str]:
    """CMake options for a llama.cpp that uses what `flags` offer and nothing more (AMX never)."""
    flags = cpu_flags() if flags is None else flags
    if not (is_x86() if x86 is None else x86):
        return [*COMMON]  # ggml probes ARM and others itself, and has no AMX there
    args = [*COMMON, "-DGGML_NATIVE=OFF"]
    for option, needs in X86_OPTIONS.items():
        args.append(f"-D{option}={'ON' if all(f in flags for f in needs) else 'OFF'}")
    args += [f"-D{option}=OFF" for option in X86_NEVER]
    return args


def variant_args(name: str) -> list[str]:
    """CMake options of one of the image's portable builds."""
    return cmake_args(frozenset(VARIANTS[name]), x86=True)


def variant_for(flags: frozenset[str] | None = None) -> str | None:
    """The best image build this CPU can run, or None if it runs none of them."""
    flags = cpu_flags() if flags is None else flags
    fits = [name for name, needs in VARIANTS.items() if all(f in flags for f in needs)]
    return fits[-1] if fits else None


def select_llama_library(root: str | None = None) -> Path | None:
    """Where several builds ship side by side (the image), point llama_cpp at the best one this CPU runs.

    `root` (default: $ENCLAVE_LLAMA_LIBRARIES) holds one folder of shared libraries per `VARIANTS` name. Must
    run before the first `import llama_cpp`; an operator's own LLAMA_CPP_LIB_PATH is left alone.
    """
    if os.environ.get("LLAMA_CPP_LIB_PATH"):
        return Path(os.environ["LLAMA_CPP_LIB_PATH"])
    root = root or os.environ.get("ENCLAVE_LLAMA_LIBRARIES")
    name = variant_for() if root else None
    if root is None or name is None:
        return None
    for candidate in list(VARIANTS)[: list(VARIANTS).index(name) + 1][::-1]:
        folder = Path(root) / candidate
        if (folder / "libllama.so").is_file():
            os.environ["LLAMA_CPP_LIB_PATH"] = str(folder)
            return folder
    return None


def isa_summary(flags: frozenset[str] | None = None) -> str:
    """The vector instruction sets that matter to llama.cpp, for messages and benchmark records."""
    flags = cpu_flags() if flags is None else flags
    shown = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "neon", "asimd")
    return " ".join(f for f in shown if f in flags) or platform.machine()


def main(argv: list[str]) -> int:
    if argv[:1] == ["cmake-args"]:
        print(" ".join(cmake_args()))
    elif argv[:1] == ["variant-args"] and len(argv) == 2 and argv[1] in VARIANTS:
        print(" ".join(variant_args(argv[1])))
    elif argv[:1] == ["variants"]:
        print(" ".join(VARIANTS))
    else:
        print("usage: python3 -m enclave.core.cpu cmake-args | variants | variant-args NAME", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
