"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import platform
from pathlib import Path

from enclave.core.cpu import cpu_flags

# The instruction sets that change what the engine and the embedder can do, as cpuinfo spells them.
_ISA = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "VNNI", "avx512_bf16": "BF16", "amx_int8": "AMX"}
# Names a VM may hide behind "Intel(R) Xeon(R) Processor": (family, model) → generation.
_INTEL = {(6, 143): "Sapphire Rapids", (6, 207): "Emerald Rapids", (6, 173): "Granite Rapids", (6, 106): "Ice Lake"}


def cpu_model() -> str:
    """The CPU's name from Linux's cpuinfo with the vector instruction sets that matter here (two VMs both
    called "AMD EPYC" can be a Zen 3 with AVX2 only or a Zen 4 with AVX-512 and bf16), else the platform's."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not line.strip():
                break  # the first processor is enough
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    if "Intel" in name and fields.get("cpu family", "").isdigit() and fields.get("model", "").isdigit():
        generation = _INTEL.get((int(fields["cpu family"]), int(fields["model"])))
        name = f"{name} {generation}" if generation and generation not in name else name
    isa = ", ".join(v for k, v in _ISA.items() if k in cpu_flags())
    return f"{name} ({isa})" if isa else name
