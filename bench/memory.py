"""Memory of the serving process per base model: `python -m bench.memory`.

For each model, starts `enclave serve` as `make run` does (embedded defaults, sample documents ingested), reads
the process's resident memory once it is ready and has answered one question ("at rest"), then while 8
WebSocket chats stream at once (the peak, sampled every 50 ms, and the kernel's high-water mark). Prints a
table and writes `bench/results/memory.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from websockets.asyncio.client import connect

from bench.load import _rss_mb, start_serve, status_kb, stop_serve
from bench.machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "memory.json"
QUESTIONS = [
    "How do I ingest documents into a collection?",
    "Which command trains a LoRA adapter?",
    "How does the router choose between RAG, an adapter and the base model?",
    "What does the moderation filter check in a streamed answer?",
    "How is Enclave deployed on Kubernetes?",
    "Which endpoints does the chat API offer?",
    "How are answers cited?",
    "What happens when a document is ingested twice?",
]


async def _chat(url: str, question: str, max_tokens: int) -> str:
    async with connect(url, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "chat", "message": question, "max_tokens": max_tokens}))
        while True:
            ev = json.loads(await asyncio.wait_for(ws.recv(), timeout=600))
            if ev["type"] in ("done", "error"):
                return str(ev["type"])


async def _streams(url: str, pid: int, n: int, max_tokens: int) -> tuple[float, list[str]]:
    peak = 0.0
    tasks = [asyncio.create_task(_chat(url, QUESTIONS[i % len(QUESTIONS)], max_tokens)) for i in range(n)]
    while not all(t.done() for t in tasks):
        peak = max(peak, _rss_mb(pid))
        await asyncio.sleep(0.05)
    return peak, [t.result() for t in tasks]


def measure(model: str, streams: int, max_tokens: int, console: Console) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="enclave-memory-"))
    env = {**os.environ, "ENCLAVE_DATA_DIR": str(data), "ENCLAVE_MODELS__BASE": model, "HF_HUB_OFFLINE": "1"}
    proc, base = start_serve(data, env, timeout_s=600)
    try:
        url = base.replace("http://", "ws://") + "/v1/chat/ws"
        ready = _rss_mb(proc.pid)
        asyncio.run(_chat(url, QUESTIONS[0], max_tokens))
        rest = _rss_mb(proc.pid)
        peak, ends = asyncio.run(_streams(url, proc.pid, streams, max_tokens))
        row = {
            "model": model,
            "rss_ready_mb": round(ready),
            "rss_at_rest_mb": round(rest),
            f"rss_peak_{streams}_streams_mb": round(peak),
            "rss_high_water_mb": round(status_kb(proc.pid, "VmHWM") / 1024),
            "streams_done": ends.count("done"),
            "streams": streams,
        }
        console.print(row)
        return row
    finally:
        stop_serve(proc)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from enclave.engine.catalog import CATALOG, installed

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(m.name for m in CATALOG.values() if installed(m)))
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    console = Console()
    rows = [measure(m.strip(), args.streams, args.max_tokens, console) for m in args.models.split(",") if m.strip()]
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "note": "enclave serve as `make run` starts it: embedder, Chroma, sample documents, moderation, engine",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    table = Table(title=f"serving process RSS · {result['machine']['cpu']} · {result['machine']['cores']} cores")
    for col in ("model", "ready MB", "at rest MB", f"{args.streams} streams peak MB", "high-water MB", "done"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["model"],
            str(r["rss_ready_mb"]),
            str(r["rss_at_rest_mb"]),
            str(r[f"rss_peak_{args.streams}_streams_mb"]),
            str(r["rss_high_water_mb"]),
            f"{r['streams_done']}/{r['streams']}",
        )
    console.print(table)
    return result


if __name__ == "__main__":
    main()
