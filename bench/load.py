"""How many concurrent WebSocket streams one Enclave process holds: `python -m bench.load`.

Starts `enclave serve` on the echo backend (deterministic tokens at a set rate, so the service alone is
measured, moderation and the conversation store included), then for each level of concurrency keeps that
many WebSocket clients chatting back to back for a while. Per level: streams completed and dropped
(an `error` event, a closed socket or a missing `done`), the time to first token the service adds
(p50/p99; the echo backend itself adds one token interval, subtracted; the moderation hold-back adds
`holdback_tokens` intervals, reported separately), aggregate tokens/s, and the
server's resident memory before and after. Prints a table and writes `bench/results/load.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from websockets.asyncio.client import connect

from enclave.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "load.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status_kb(pid: int, field: str) -> int:
    """A field of /proc/PID/status in KiB (VmRSS, VmHWM, ...); 0 when absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _rss_mb(pid: int) -> float:
    return status_kb(pid, "VmRSS") / 1024


def start_serve(
    data: Path, env: dict[str, str], extra_args: tuple[str, ...] = (), timeout_s: float = 300
) -> tuple[subprocess.Popen[bytes], str]:
    """`enclave serve` on a free port, logging to data/server.log; (the process, its base URL) once /readyz
    answers 200. A server that exits or is not ready in time is stopped and named with its log."""
    port = _free_port()
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "enclave.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port), *extra_args],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_serve(proc)
    raise SystemExit(f"the server did not become ready; see {data / 'server.log'}")


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as Kubernetes stops a pod; killed if it has not exited within a minute."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


async def _client(url: str, stop_at: float, tokens: int, stats: dict[str, Any]) -> None:
    message = " ".join(f"w{i}" for i in range(tokens))
    try:
        async with connect(url, max_size=2**20, open_timeout=60, ping_interval=None) as ws:
            while time.monotonic() < stop_at:
                sent = time.monotonic()
                await ws.send(json.dumps({"type": "chat", "message": message, "route": "base", "max_tokens": tokens}))
                first = None
                n = 0
                while True:
                    e = json.loads(await asyncio.wait_for(ws.recv(), timeout=120))
                    if e["type"] == "token":
                        n += 1
                        if first is None:
                            first = time.monotonic() - sent
                    elif e["type"] == "done":
                        stats["completed"] += 1
                        stats["tokens"] += n
                        if first is not None:
                            stats["ttft"].append(first)
                        break
                    elif e["type"] == "error":
                        stats["dropped"] += 1
                        stats["errors"].append(e.get("code"))
                        break
    except Exception as exc:  # a socket that closes or times out mid-answer is a dropped stream
        stats["dropped"] += 1
        stats["errors"].append(type(exc).__name__)


async def _level(url: str, streams: int, seconds: float, tokens: int) -> dict[str, Any]:
    stats: dict[str, Any] = {"completed": 0, "dropped": 0, "tokens": 0, "ttft": [], "errors": []}
    started = time.monotonic()
    stop_at = started + seconds
    clients = []
    for _ in range(streams):  # open gradually: a thundering herd of handshakes is a different benchmark
        clients.append(asyncio.create_task(_client(url, stop_at, tokens, stats)))
        await asyncio.sleep(min(0.01, seconds / streams / 10))
    await asyncio.gather(*clients)
    elapsed = time.monotonic() - started
    return {**stats, "elapsed": elapsed}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="50,200,500,1000", help="concurrent streams per level")
    ap.add_argument("--seconds", type=float, default=60, help="how long each level runs")
    ap.add_argument("--rate", type=float, default=10, help="echo tokens per second per stream")
    ap.add_argument("--tokens", type=int, default=20, help="tokens per answer")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    console = Console()

    data = Path(tempfile.mkdtemp(prefix="enclave-load-"))
    env = {
        **os.environ,
        "ENCLAVE_DATA_DIR": str(data),
        "ENCLAVE_MODELS__BACKEND": "echo",
        "ENCLAVE_MODELS__ECHO_TOKENS_PER_SECOND": str(args.rate),
        "ENCLAVE_LIMITS__MAX_CONCURRENT_GENERATIONS": str(max(levels) + 10),
        "ENCLAVE_LIMITS__MAX_QUEUE": str(max(levels) + 10),
        "ENCLAVE_RAG__INGEST_SAMPLES": "false",
        "HF_HUB_OFFLINE": "1",
    }
    proc, base = start_serve(data, env, ("--log-level", "warning"))
    ws_url = base.replace("http://", "ws://") + "/v1/chat/ws"
    try:
        rows = []
        rss0 = _rss_mb(proc.pid)
        interval = 1.0 / args.rate
        holdback = Settings().moderation.holdback_tokens
        for n in levels:
            before = _rss_mb(proc.pid)
            r = asyncio.run(_level(ws_url, n, args.seconds, args.tokens))
            after = _rss_mb(proc.pid)
            added = [max(0.0, t - interval) * 1000 for t in r["ttft"]]
            # The moderation hold-back releases the first token only once `holdback` more have been generated
            # and checked: at this echo rate that is a fixed holdback × interval. What is left is overhead.
            beyond = [max(0.0, t - (holdback + 1) * interval) * 1000 for t in r["ttft"]]
            row = {
                "streams": n,
                "seconds": round(r["elapsed"], 1),
                "answers_completed": r["completed"],
                "dropped": r["dropped"],
                "errors": sorted(set(r["errors"]))[:5],
                "ttft_added_p50_ms": round(_pct(added, 0.5), 1),
                "ttft_added_p99_ms": round(_pct(added, 0.99), 1),
                "ttft_beyond_holdback_p50_ms": round(_pct(beyond, 0.5), 1),
                "ttft_beyond_holdback_p99_ms": round(_pct(beyond, 0.99), 1),
                "tokens_per_s": round(r["tokens"] / r["elapsed"], 1),
                "rss_before_mb": round(before, 1),
                "rss_after_mb": round(after, 1),
            }
            rows.append(row)
            console.print(row)
        out = {
            "settings": vars(args) | {"out": str(args.out)},
            "levels": rows,
            "rss_start_mb": round(rss0, 1),
            "rss_end_mb": round(_rss_mb(proc.pid), 1),
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
            "note": "client and server share the machine's cores",
        }
    finally:
        stop_serve(proc)
    table = Table(
        title=f"WebSocket streams on one process (echo backend, {args.rate:g} tokens/s, {args.tokens} tokens)"
    )
    cols = ("streams", "answers", "dropped", "TTFT added p50/p99 ms", "beyond hold-back p50/p99", "tokens/s", "RSS MB")
    for col in cols:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(
            str(row["streams"]),
            str(row["answers_completed"]),
            str(row["dropped"]),
            f"{row['ttft_added_p50_ms']:.0f} / {row['ttft_added_p99_ms']:.0f}",
            f"{row['ttft_beyond_holdback_p50_ms']:.0f} / {row['ttft_beyond_holdback_p99_ms']:.0f}",
            f"{row['tokens_per_s']:.0f}",
            f"{row['rss_before_mb']:.0f}→{row['rss_after_mb']:.0f}",
        )
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    console.print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
