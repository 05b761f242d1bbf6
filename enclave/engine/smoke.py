"""Proves a weight file runs on this llama.cpp build and CPU before the server trusts it with its own process.

A llama.cpp build can hold kernels this CPU cannot run (AMX in a VM, a wheel compiled elsewhere) or that
crash on one weight type only; the process then dies of SIGILL or SIGSEGV on its first decode, taking every
open stream with it. So each weight file is first re-encoded (when it is a re-encoding) and decoded in a child
process: the engine itself, two sequences, a 40-token prompt, a few greedy steps. A pass is remembered per
(file, llama.cpp library, CPU) in a small JSON file, so later starts cost nothing.

    python -m enclave.engine.smoke WEIGHTS [--convert-from GGUF --format bf16] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from enclave.core.cpu import cpu_flags, isa_summary
from enclave.core.files import atomic_write

log = logging.getLogger(__name__)

CHILD_TIMEOUT = 600.0  # a 1.5B model re-encoded to bf16 on 2 cores takes about a minute
PROMPT_TOKENS = 40
NEW_TOKENS = 4


@dataclass(frozen=True)
class SmokeResult:
    ok: bool
    detail: str  # what happened, for a person: "decoded 2 x 4 tokens in 0.8 s" or the cause of death
    seconds: float = 0.0


def llama_library_dir() -> Path | None:
    """The folder holding the libllama.so that `import llama_cpp` would load, found without loading it."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        return Path(override)
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "lib"


def _library_key() -> str:
    folder = llama_library_dir()
    parts = [str(folder)]
    if folder is not None and folder.is_dir():
        for f in sorted(folder.glob("*.so*")):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return "|".join(parts)


def check_key(weights: Path) -> str:
    """Same file, same llama.cpp build, same CPU: the same outcome."""
    st = weights.stat() if weights.is_file() else None
    what = f"{weights.resolve()}:{st.st_size}:{int(st.st_mtime)}" if st else str(weights)
    cpu = " ".join(sorted(cpu_flags()))
    return hashlib.sha256(f"{what}|{_library_key()}|{cpu}".encode()).hexdigest()[:24]


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def explain(fmt: str, result: SmokeResult) -> str:
    """One paragraph an operator can act on."""
    return (
        f"the llama.cpp engine cannot run the {fmt} weights on this machine: {result.detail}. "
        f"CPU: {isa_summary()}; llama.cpp library: {llama_library_dir()}. "
        "If the build was made for another CPU, remove ~/.cache/enclave/wheels and run `make setup` again "
        "(it compiles for this CPU, without AMX); or set models.engine_format to a format that passed, "
        "or models.engine=transformers."
    )


def run_check(
    weights: Path,
    *,
    convert_from: Path | None = None,
    fmt: str | None = None,
    threads: int = 1,
    timeout: float = CHILD_TIMEOUT,
    command: list[str] | None = None,
) -> SmokeResult:
    """Decode with `weights` in a child process (making them from `convert_from` as `fmt` first, if missing)."""
    if command is None:
        command = [sys.executable, "-m", "enclave.engine.smoke", str(weights), "--threads", str(threads)]
        if convert_from is not None and fmt is not None:
            command += ["--convert-from", str(convert_from), "--format", fmt]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return SmokeResult(False, f"no answer within {timeout:.0f} s", time.perf_counter() - t0)
    elapsed = time.perf_counter() - t0
    if proc.returncode < 0:
        return SmokeResult(False, f"the decode died of {_signal_name(proc.returncode)}", elapsed)
    last = proc.stdout.strip().splitlines()[-1:] or [""]
    try:
        report = json.loads(last[0])
    except json.JSONDecodeError:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return SmokeResult(False, f"the check exited with code {proc.returncode}: {tail}", elapsed)
    return SmokeResult(bool(report.get("ok")), str(report.get("detail", "")), elapsed)


class SmokeChecks:
    """Remembers passes in `path` (a JSON object keyed by `check_key`); failures only for this process's life."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._failed: dict[str, SmokeResult] = {}  # this process's failures: a retry of the same file fails alike

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def check(self, weights: Path, **kwargs: object) -> SmokeResult:
        with self._lock:
            if weights.is_file():
                key = check_key(weights)
                seen = self._read().get(key)
                if seen and seen.get("ok"):
                    return SmokeResult(True, f"{seen.get('detail', '')} (checked before)")
                if key in self._failed:
                    return self._failed[key]
            result = run_check(weights, **kwargs)  # type: ignore[arg-type]
            if not result.ok and weights.is_file() and "no answer within" not in result.detail:
                self._failed[check_key(weights)] = result
            if result.ok and weights.is_file():
                data = self._read()
                data[check_key(weights)] = {**asdict(result), "file": str(weights), "at": int(time.time())}
                with contextlib.suppress(OSError):  # a read-only cache: the check simply runs again next start
                    atomic_write(self.path, json.dumps(data, indent=1))
            return result


# -- the child -------------------------------------------------------------------------------------------
def _decode(weights: Path, threads: int) -> str:
    from enclave.engine.llama_engine import EngineRequest, Finish, LlamaEngine, Sampling

    engine = LlamaEngine(weights, slots=2, context_tokens=128, threads=threads, batch_tokens=64, lookup_tokens=0)
    engine.start()
    try:
        n_vocab = int(engine._n_vocab)
        done = threading.Semaphore(0)
        outcomes: list[object] = []
        tokens: list[int] = []

        def emit(item: object) -> None:
            if isinstance(item, Finish | BaseException):
                outcomes.append(item)
                done.release()
            elif isinstance(item, tuple) and int(item[1]) >= 0:  # -1: text released without a new token
                tokens.append(int(item[1]))

        for k in range(2):  # two sequences: the batched kernels, then one alone
            ids = [(97 + 13 * i + k) % n_vocab for i in range(PROMPT_TOKENS - 8 * k)]
            engine.submit(EngineRequest(ids=ids, sampling=Sampling(NEW_TOKENS), adapter=None, emit=emit))
        for _ in range(2):
            if not done.acquire(timeout=CHILD_TIMEOUT):
                raise TimeoutError("the engine did not finish")
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            raise RuntimeError(str(errors[0]))
        if not tokens or any(t >= n_vocab for t in tokens):
            raise RuntimeError(f"the decode gave no valid tokens ({tokens[:8]})")
        if all(t == 0 for t in tokens):  # greedy over NaN logits picks token 0 every time
            raise RuntimeError("every token drawn was token 0: the logits are not finite")
        return f"decoded 2 x {NEW_TOKENS} tokens after {PROMPT_TOKENS}-token prompts"
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", type=Path)
    ap.add_argument("--convert-from", type=Path)
    ap.add_argument("--format", choices=["bf16", "q8_0", "f16"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.convert_from is not None and args.format is not None:
            from enclave.engine.llama_engine import convert_weights

            convert_weights(args.convert_from, args.weights, args.format, args.threads)
        if not args.weights.is_file():
            raise FileNotFoundError(f"no such weight file: {args.weights}")
        detail = _decode(args.weights, args.threads)
        report = {"ok": True, "detail": f"{detail} in {time.perf_counter() - t0:.1f} s"}
    except Exception as exc:  # reported to the parent, which decides what to do
        report = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    raise SystemExit(main())
