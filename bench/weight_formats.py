"""Which weights for which step: every format of the default model on a bare llama.cpp loop.

`python -m bench.weight_formats`: the shipped GGUF and every format the engine can re-encode it to
(bf16, Q8_0, f16), each opened with the engine's context parameters (8 sequences, flash attention, both
cores) and timed on the three kinds of step the engine runs: reading a 600-token prompt (prefill), one
sequence decoding alone, and eight decoding together (seven of them at ~300 positions). No scheduler: what
the weights themselves cost, so the engine can pick per step. Prints a table and writes
`bench/results/weight_formats.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.inference import machine_info, quant_name, weight_bytes
from bench.machine import cpu_model
from enclave.core.settings import Settings, offline_environment

OUT = Path(__file__).resolve().parents[1] / "bench" / "results" / "weight_formats.json"
FORMATS = ("original", "bf16", "q8_0", "f16")


class Loop:
    """One llama.cpp context on `path` and a batch: decode (token, sequence, position) triples."""

    def __init__(self, path: Path, threads: int, slots: int = 8) -> None:
        from enclave.engine.llama_engine import open_context

        self.lib, self.model, self.ctx = open_context(
            path, slots=slots, context_tokens=2048, threads=threads, batch_tokens=512, flash_attention=True
        )
        self.batch = self.lib.llama_batch_init(512, 0, 1)
        self.mem = self.lib.llama_get_memory(self.ctx)

    def decode(self, items: list[tuple[int, int, int]], logits: bool = True) -> None:
        """One step; the logits of every token (decoding), or of none (a prompt chunk, as the engine reads it)."""
        b = self.batch
        for i, (tok, seq, pos) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, int(logits)
            b.seq_id[i][0] = seq
        b.n_tokens = len(items)
        if self.lib.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def prefill(self, seq: int, ids: list[int]) -> None:
        for at in range(0, len(ids), 512):
            self.decode([(t, seq, at + j) for j, t in enumerate(ids[at : at + 512])], logits=False)

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)


def measure(path: Path, threads: int, repeats: int) -> dict[str, Any]:
    loop = Loop(path, threads)
    ids = [(i * 37) % 5000 + 100 for i in range(600)]
    try:
        loop.prefill(0, ids[:64])  # warm-up
        prefill, single, eight = [], [], []
        for _ in range(repeats):
            for s in range(8):
                loop.lib.llama_memory_seq_rm(loop.mem, s, -1, -1)
            t = time.perf_counter()
            loop.prefill(0, ids)
            prefill.append(len(ids) / (time.perf_counter() - t))
            t = time.perf_counter()
            for k in range(32):
                loop.decode([(200 + k, 0, len(ids) + k)])
            single.append(32 / (time.perf_counter() - t))
            for s in range(1, 8):
                loop.prefill(s, ids[:300])
            t = time.perf_counter()
            for k in range(32):
                loop.decode([(300 + k, 0, len(ids) + 32 + k), *((300 + k, s, 300 + k) for s in range(1, 8))])
            eight.append(8 * 32 / (time.perf_counter() - t))
    finally:
        loop.close()
    best = {"prefill": max(prefill), "single": max(single), "eight": max(eight)}
    return {
        "prefill_tokens_per_s": round(best["prefill"], 1),
        "single_tokens_per_s": round(best["single"], 1),
        "eight_streams_tokens_per_s": round(best["eight"], 1),
        "eight_over_single": round(best["eight"] / best["single"], 2),
        "runs": {"prefill": prefill, "single": single, "eight": eight},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from enclave.engine.llamacpp import engine_weights

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per format; the best is reported")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    offline_environment()
    console = Console()
    threads = os.cpu_count() or 1
    settings = Settings(models={"engine": "llama_cpp"})  # type: ignore[arg-type]
    rows: dict[str, Any] = {}
    for fmt in args.formats.split(","):
        shipped, path = engine_weights(settings, fmt)
        name = quant_name(shipped) + " (shipped)" if fmt == "original" else fmt.upper()
        console.print(f"[dim]{name}: {path.name}")
        rows[name] = {"file": path.name, **weight_bytes(path), **measure(path, threads, args.repeats)}
    table = Table(title=f"weights per kind of step, bare llama.cpp loop, best of {args.repeats} — {cpu_model()}")
    for col in ("weights", "MB / token", "prefill tok/s", "1 stream tok/s", "8 streams tok/s", "8 ÷ 1"):
        table.add_column(col, justify="left" if col == "weights" else "right")
    for name, r in rows.items():
        table.add_row(
            name,
            f"{r['weight_bytes_per_token'] / 1e6:.0f}",
            f"{r['prefill_tokens_per_s']}",
            f"{r['single_tokens_per_s']}",
            f"{r['eight_streams_tokens_per_s']}",
            f"{r['eight_over_single']}×",
        )
    console.print(table)
    out = {"machine": machine_info(), "threads": threads, "formats": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    console.print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
