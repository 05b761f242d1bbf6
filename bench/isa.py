"""Each llama.cpp build variant on CPUs this machine is not: decode every weight format under QEMU's user-mode
emulator with an older CPU model, so a build that would execute an instruction that CPU lacks dies here (SIGILL)
instead of on a customer's node.

    python -m bench.isa                       # the x86-64-v3 variant on Haswell (AVX2 only), plus the control
    python -m bench.isa --variant x86-64-v3 --cpu Haswell --wheel-dir /tmp/v3

Needs Debian's qemu-user (`apt-get install qemu-user`) and the variant's wheel (built here if missing, ~6 min).
Emulation is ~50x slower than the CPU: a few tokens per format. The control runs this venv's own build (compiled
for this CPU) on the emulated one; on a machine with AVX-512 it must die of SIGILL, which shows the emulator
really withholds what the old CPU lacks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.machine import cpu_model
from enclave.core.cpu import variant_args
from enclave.core.settings import default_model_cache

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "isa.json"
LLAMA_CPP = "llama-cpp-python==0.3.36"

# Run inside the emulated process: a few greedy tokens, printed as JSON.
_DECODE = """
import json, sys, llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=128, n_threads=2, verbose=False)
out = llm("The capital of France is", max_tokens=4, temperature=0)
print(json.dumps({"text": out["choices"][0]["text"], "info": llama_cpp.llama_print_system_info().decode()}))
"""


def weight_files(cache: Path) -> dict[str, Path]:
    """The shipped Q4_1 file and the engine's re-encodings of it (made by `make setup`'s engine check)."""
    from enclave.core.settings import Settings
    from enclave.engine.modelfiles import base_gguf

    shipped = base_gguf(Settings())  # the default catalogue model as shipped (SmolLM2's Q4_1)
    files = {"original": shipped}
    for fmt in ("q8_0", "f16", "bf16"):
        found = sorted(cache.glob(f"{shipped.stem}-*.{fmt}.gguf"))
        if found:
            files[fmt] = found[-1]
    return files


def variant_lib(variant: str, wheel_dir: Path) -> Path:
    wheels = sorted(wheel_dir.glob("llama_cpp_python-*.whl"))
    if not wheels:
        Console().print(f"building the {variant} wheel into {wheel_dir} (~6 min on 2 cores)")
        wheel_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "--no-cache-dir",
                "-w",
                str(wheel_dir),
                LLAMA_CPP,
            ],
            check=True,
            env={**os.environ, "CMAKE_ARGS": " ".join(variant_args(variant))},
        )
        wheels = sorted(wheel_dir.glob("llama_cpp_python-*.whl"))
    out = wheel_dir / "lib"
    if not (out / "llama_cpp" / "lib" / "libllama.so").is_file():
        with zipfile.ZipFile(wheels[-1]) as z:
            z.extractall(out, [n for n in z.namelist() if n.startswith("llama_cpp/lib/")])
    return out / "llama_cpp" / "lib"


def decode(cpu: str, path: Path, lib: Path | None, timeout: float) -> dict[str, object]:
    env = dict(os.environ)
    if lib is not None:
        env["LLAMA_CPP_LIB_PATH"] = str(lib)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            ["qemu-x86_64", "-cpu", cpu, sys.executable, "-c", _DECODE, str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "detail": f"no answer in {timeout:.0f} s", "seconds": timeout}
    seconds = round(time.perf_counter() - t0, 1)
    if proc.returncode < 0 or proc.returncode > 128:
        code = -proc.returncode if proc.returncode < 0 else proc.returncode - 128
        return {"ok": False, "detail": f"died of {signal.Signals(code).name}", "seconds": seconds}
    if proc.returncode != 0:
        return {"ok": False, "detail": (proc.stderr.strip().splitlines() or ["failed"])[-1][:120], "seconds": seconds}
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    features = [f.split(" = ")[0].strip() for f in got["info"].split("|") if f.strip().endswith("= 1")]
    return {"ok": True, "detail": f"{got['text']!r}", "features": features, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="x86-64-v3", help="a build variant of enclave/core/cpu.py")
    ap.add_argument("--cpu", default="Haswell", help="QEMU CPU model to emulate (qemu-x86_64 -cpu help)")
    ap.add_argument("--wheel-dir", type=Path, help="where the variant's wheel is (or is built)")
    ap.add_argument("--cache", type=Path, default=default_model_cache(), help="the engine's model cache")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if shutil.which("qemu-x86_64") is None:
        sys.exit("qemu-x86_64 is missing: apt-get install qemu-user")
    wheel_dir = args.wheel_dir or Path(tempfile.gettempdir()) / f"enclave-{args.variant}"
    lib = variant_lib(args.variant, wheel_dir)
    files = weight_files(args.cache)
    rows = []
    for fmt, path in files.items():
        rows.append({"build": args.variant, "format": fmt, **decode(args.cpu, path, lib, args.timeout)})
        Console().print(rows[-1])
    # The control: this venv's build, made for this CPU, on the emulated one.
    rows.append(
        {"build": "this venv's", "format": "original", **decode(args.cpu, files["original"], None, args.timeout)}
    )
    table = Table(title=f"llama.cpp builds on an emulated {args.cpu} (qemu-x86_64) · host {cpu_model()}")
    for col in ("build", "format", "result", "detail", "seconds"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["build"]), str(r["format"]), "ok" if r["ok"] else "FAILED", str(r["detail"]), str(r["seconds"])
        )
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"host_cpu": cpu_model(), "emulated_cpu": args.cpu, "variant": args.variant, "rows": rows}, indent=1)
    )
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
