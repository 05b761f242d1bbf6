"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import platform
from pathlib import Path

from ingest.embedder import cpu_flags

# The instruction sets that change what the engine and the embedder can do, as cpuinfo spells them.
_ISA = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "VNNI", "avx512_bf16": "BF16", "amx_bf16": "AMX"}


def cpu_model() -> str:
    """The CPU's name from Linux's cpuinfo with the vector instruction sets that matter here (two VMs both
    called "AMD EPYC" can be a Zen 3 with AVX2 only or a Zen 4 with AVX-512 and bf16), else the platform's."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or "unknown"
    isa = ", ".join(v for k, v in _ISA.items() if k in cpu_flags())
    return f"{name} ({isa})" if isa else name
