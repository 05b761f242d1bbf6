"""What rating an answer costs: `python -m bench.feedback [--postgres URL]`.

Starts `enclave serve` on the echo backend (no model: only the service is measured), asks `--answers` questions,
then posts `--ratings` ratings one after another over a kept-alive connection, cycling through the answers and
through an up-rating, a down-rating with a reason, and one with a 300-character correction — so most are a
rating replaced (the upsert), as when people change their minds. Per store (SQLite always; PostgreSQL with
`--postgres`, in a database of its own that is dropped afterwards): the time the server's handler spent
(its `Server-Timing` header: rate limit, checks, the store's read of the turn and its upsert, the metric) and
the round trip a client on the same machine sees, p50/p95/max; then checks that the store holds one rating per
answer. Prints a table and writes `bench/results/feedback.json` with the machine's CPU. Target: ≤ 20 ms p95.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from bench.load import start_serve, stop_serve
from bench.machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "feedback.json"
TARGET_P95_MS = 20.0
WARMUP = 20
CORRECTION = ("The policy gives 20 days for adoption leave, at full pay, booked through the HR portal. " * 4)[:300]
BODIES: list[dict[str, Any]] = [
    {"rating": "up"},
    {"rating": "down", "reason": "incomplete"},
    {"rating": "down", "reason": "wrong", "correction": CORRECTION},
]


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values), 2),
        "p95_ms": round(_pct(values, 0.95), 2),
        "max_ms": round(max(values), 2),
    }


def _answers(client: httpx.Client, n: int) -> list[str]:
    """n answers (the echo backend's), each in its own conversation; their message ids."""
    ids = []
    for i in range(n):
        with client.stream("POST", "/v1/chat/stream", json={"message": f"question {i} about leave"}) as r:
            done = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")][-1]
        if done.get("type") != "done":
            raise SystemExit(f"the chat failed: {done}")
        ids.append(done["message_id"])
    return ids


def _rate_all(client: httpx.Client, ids: list[str], n: int) -> tuple[list[float], list[float]]:
    """Posts n ratings in turn; (handler ms from Server-Timing, round-trip ms)."""
    server, trip = [], []
    for i in range(n):
        body = BODIES[i % len(BODIES)]
        started = time.perf_counter()
        r = client.post(f"/v1/messages/{ids[i % len(ids)]}/feedback", json=body)
        took = (time.perf_counter() - started) * 1000
        if r.status_code != 200:
            raise SystemExit(f"rating {i} failed: {r.status_code} {r.text}")
        match = re.search(r"dur=([0-9.]+)", r.headers.get("server-timing", ""))
        server.append(float(match.group(1)) if match else float("nan"))
        trip.append(took)
    return server, trip


def run_store(name: str, database_url: str | None, args: argparse.Namespace) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="enclave-feedback-"))
    env = {
        **os.environ,
        "ENCLAVE_DATA_DIR": str(data),
        "ENCLAVE_MODELS__BACKEND": "echo",
        "ENCLAVE_MODELS__ECHO_TOKENS_PER_SECOND": "0",
        "ENCLAVE_RAG__INGEST_SAMPLES": "false",
        # The limiter runs (its cost is measured), at a budget the benchmark stays under.
        "ENCLAVE_LIMITS__REQUESTS_PER_MINUTE": "100000",
        "HF_HUB_OFFLINE": "1",
    }
    if database_url:
        env["ENCLAVE_STORAGE__DATABASE_URL"] = database_url
    proc, base = start_serve(data, env, ("--log-level", "warning"))
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            ids = _answers(client, args.answers)
            _rate_all(client, ids, WARMUP)
            server, trip = _rate_all(client, ids, args.ratings)
            stored = client.get("/v1/feedback", params={"limit": 1}).json()["total"]
    finally:
        stop_serve(proc)
    return {
        "store": name,
        "ratings": args.ratings,
        "answers": args.answers,
        "ratings_stored": stored,
        "server": _summary(server),
        "round_trip": _summary(trip),
        "meets_target": _pct(server, 0.95) <= TARGET_P95_MS,
    }


def _postgres_database(url: str, create: bool) -> str:
    """A fresh database beside the one `url` names (created, or dropped with `create=False`); its URL."""
    import sqlalchemy as sa

    name = f"enclave_bench_feedback_{os.getpid()}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        if create:
            c.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return url.rsplit("/", 1)[0] + f"/{name}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratings", type=int, default=500)
    ap.add_argument("--answers", type=int, default=50, help="answers rated in turn (each rated ratings/answers times)")
    ap.add_argument("--postgres", help="also measure on PostgreSQL: a SQLAlchemy URL of a database to start from")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    console = Console()
    rows = [run_store("SQLite", None, args)]
    if args.postgres:
        url = _postgres_database(args.postgres, create=True)
        try:
            rows.append(run_store("PostgreSQL", url, args))
        finally:
            _postgres_database(args.postgres, create=False)
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}
    out = {
        "settings": {
            "ratings": args.ratings,
            "answers": args.answers,
            "warmup": WARMUP,
            "target_p95_ms": TARGET_P95_MS,
        },
        "results": rows,
        "machine": machine,
        "note": "one client, sequential, on the same machine as the server; server = the handler's Server-Timing",
    }
    table = Table(title=f"POST /v1/messages/{{id}}/feedback — {machine['cpu']}, {machine['cores']} cores")
    for col in ("store", "ratings", "stored", "server p50 / p95 / max ms", "round trip p50 / p95 / max ms", "≤ 20 ms"):
        table.add_column(col, justify="right")
    for row in rows:
        s, t = row["server"], row["round_trip"]
        table.add_row(
            row["store"],
            str(row["ratings"]),
            f"{row['ratings_stored']} (one per answer)" if row["ratings_stored"] == row["answers"] else "WRONG",
            f"{s['p50_ms']:.1f} / {s['p95_ms']:.1f} / {s['max_ms']:.1f}",
            f"{t['p50_ms']:.1f} / {t['p95_ms']:.1f} / {t['max_ms']:.1f}",
            "yes" if row["meets_target"] else "no",
        )
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
