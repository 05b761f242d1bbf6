"""The loop people close: ask, rate and correct, review, retrain, gate, serve — `python -m bench.feedback_loop`.

A real `enclave serve` (the default model, or `--model`), with an asker's key and a reviewer's admin key. The asker
puts 30 questions about facts only the organisation knows (`bench/data/feedback_loop.jsonl`: code names, floors,
team leads, Wi-Fi names, incident channels), each in a conversation of its own, then each question's paraphrase
(never rated, never trained on). A simulated reviewer reads each answer as it was stored: right (tune eval's check:
at least half the reference's key terms stated) is rated up, wrong is rated down with the reference as its
correction, and the admin accepts every correction in the review queue. Then the retrain, timed, by the CLI as a
CronJob runs it: `tune dataset --from-feedback`, `tune train`, `adapters promote` gated on the paraphrases. The
asker then puts the paraphrases again to the same running server (route auto: the router has to find the adapter),
and each answer is scored as before. Last, the bad dataset: the same pairs with their answers shuffled between
questions, trained and put to the gate, which has to refuse it while the good adapter stays served.

Prints a table per phase and writes `bench/results/feedback_loop.json` (every answer before and after, the gate's
reports, timings, the machine) and `docs/eval/gate/loop.png`. Targets: retrain ≤ 15 min on 2 cores; paraphrases
answered right ≥ 20 points more often after than before; the shuffled adapter refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.load import start_serve, stop_serve
from bench.machine import cpu_model
from enclave.core.settings import DEFAULT_BASE_MODEL

ROOT = Path(__file__).resolve().parents[1]
FACTS = ROOT / "bench" / "data" / "feedback_loop.jsonl"
OUT = ROOT / "bench" / "results" / "feedback_loop.json"
PLOT = ROOT / "docs" / "eval" / "gate" / "loop.png"
ADAPTER = "people"
ASKER, REVIEWER = "asker-key-0123456789", "reviewer-key-0123456789"
TARGET_RETRAIN_S = 15 * 60
TARGET_GAIN = 0.20
# What a model without the facts cannot be taught in a few steps at the default rate; the suite's 135M model needs
# a higher one (measured: 3e-3 with 96-token sequences for SmolLM2; 1e-3, the default, for the 0.5B model).
LEARNING_RATES = {"smollm2-135m-instruct": 3e-3}


def load_facts(path: Path = FACTS) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _h(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


class Asker:
    """One person's questions over SSE, each in a new conversation; the answer as the conversation stored it."""

    def __init__(self, base: str) -> None:
        self.client = httpx.Client(base_url=base, headers=_h(ASKER), timeout=300)

    def ask(self, question: str) -> dict[str, Any]:
        events = []
        with self.client.stream("POST", "/v1/chat/stream", json={"message": question}) as r:
            if r.status_code != 200:
                raise RuntimeError(f"chat failed: {r.status_code} {r.read().decode()[:300]}")
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
        route: dict[str, Any] = next((e for e in events if e["type"] == "route"), {})
        done = events[-1]
        if done["type"] != "done":
            raise RuntimeError(f"the answer ended with {done}")
        stored = self.client.get(f"/v1/conversations/{done['conversation_id']}").json()["messages"][-1]
        return {
            "answer": stored["content"],
            "route": route.get("route"),
            "adapter": route.get("adapter"),
            "taught": done.get("taught"),
            "taught_from": [t["question"] for t in done.get("taught_from") or []],
            "message_id": done["message_id"],
            "conversation_id": done["conversation_id"],
        }

    def rate(self, message_id: str, body: dict[str, Any]) -> None:
        r = self.client.post(f"/v1/messages/{message_id}/feedback", json=body)
        r.raise_for_status()


def review_all(base: str) -> int:
    """The admin accepts every pending correction in the review queue; how many."""
    with httpx.Client(base_url=base, headers=_h(REVIEWER), timeout=60) as admin:
        pending = admin.get("/v1/feedback", params={"review_state": "pending", "limit": 500}).json()["data"]
        for fb in pending:
            note = "checked against the team's records" if fb.get("correction") else None
            admin.post(
                f"/v1/feedback/{fb['id']}/review", json={"decision": "accepted", "note": note}
            ).raise_for_status()
    return len(pending)


def right(answer: str, fact: dict[str, str], question: str) -> bool:
    from enclave.adapters.tuning.evaluate import right as states_the_fact

    return states_the_fact(answer, fact["answer"], question)


def wrong(answer: dict[str, Any]) -> bool:
    """Neither right nor a decline: a wrong answer stated as if it were known (the worst thing to read)."""
    from enclave.adapters.tuning.evaluate import declined

    return not answer["right"] and not declined(answer["answer"])


def cli(env: dict[str, str], *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enclave.cli.main", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _must(done: subprocess.CompletedProcess[str], what: str) -> str:
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def shuffled_dataset(src: Path, dst: Path, seed: int = 7) -> None:
    """The same pairs with the training answers moved between questions (each question taught another's fact)."""
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    answers = [r["answer"] for r in train]
    rng = random.Random(seed)
    for _ in range(100):  # a derangement: no question keeps its own answer
        rng.shuffle(answers)
        if all(a != r["answer"] for a, r in zip(answers, train, strict=True)):
            break
    for r, a in zip(train, answers, strict=True):
        r["answer"] = a
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows))


def wait_served(base: str, version: str, timeout_s: float = 60) -> float:
    """Seconds until the running server has loaded the adapter and lists it as serving `version`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        listed = {a["name"]: a for a in httpx.get(base + "/v1/adapters", headers=_h(ASKER), timeout=10).json()["data"]}
        entry = listed.get(ADAPTER) or {}
        if (entry.get("served") or {}).get("version") == version and entry.get("loaded"):
            return time.monotonic() - started
        time.sleep(0.25)
    raise RuntimeError(f"the server did not serve {ADAPTER} {version} within {timeout_s:.0f} s")


def run(
    work: Path,
    model: str | None = None,
    steps: int = 60,
    max_tokens: int = 32,
    facts: list[dict[str, str]] | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The whole loop in `work` (a data dir of its own); the result as written to JSON."""
    facts = facts or load_facts()
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    keys = work / "keys.yaml"
    keys.write_text(
        f"- name: asker\n  key_sha256: {hashlib.sha256(ASKER.encode()).hexdigest()}\n"
        f"- name: reviewer\n  key_sha256: {hashlib.sha256(REVIEWER.encode()).hexdigest()}\n  admin: true\n"
    )
    env = {
        **os.environ,
        "ENCLAVE_DATA_DIR": str(data),
        "ENCLAVE_AUTH__API_KEYS_FILE": str(keys),
        "ENCLAVE_MODELS__MAX_TOKENS": str(max_tokens),
        "ENCLAVE_MODELS__TEMPERATURE": "0",
        "ENCLAVE_RAG__INGEST_SAMPLES": "false",
        "ENCLAVE_LIMITS__REQUESTS_PER_MINUTE": "10000",
        "ENCLAVE_ADAPTERS__MAX_SEQ_TOKENS": "96",
        "PYTHONUNBUFFERED": "1",
    }
    if model:
        env["ENCLAVE_MODELS__BASE"] = model
    base_model = env.get("ENCLAVE_MODELS__BASE", "")
    if base_model in LEARNING_RATES:
        env.setdefault("ENCLAVE_ADAPTERS__LEARNING_RATE", str(LEARNING_RATES[base_model]))
    paraphrases = work / "paraphrases.jsonl"
    paraphrases.write_text(
        "".join(json.dumps({"question": f["paraphrase"], "answer": f["answer"]}) + "\n" for f in facts)
    )
    dataset, bad = work / "feedback.jsonl", work / "shuffled.jsonl"
    timings: dict[str, float] = {}
    proc, base = start_serve(data, env)
    try:
        asker = Asker(base)
        started = time.monotonic()
        rows: list[dict[str, Any]] = []
        for i, fact in enumerate(facts, 1):
            asked = asker.ask(fact["question"])
            asked["right"] = right(asked["answer"], fact, fact["question"])
            before = asker.ask(fact["paraphrase"])
            before["right"] = right(before["answer"], fact, fact["paraphrase"])
            rows.append({"id": fact["id"], "topic": fact["topic"], "question": fact["question"],
                         "paraphrase": fact["paraphrase"], "reference": fact["answer"],
                         "asked": asked, "before": before})  # fmt: skip
            say(f"asked {i}/{len(facts)}: {'right' if asked['right'] else 'wrong'} ({asked['route']})")
        timings["asking_s"] = time.monotonic() - started
        for row in rows:  # the reviewer: a thumb on every answer, the reference as the correction of a wrong one
            if row["asked"]["right"]:
                asker.rate(row["asked"]["message_id"], {"rating": "up"})
            else:
                body = {"rating": "down", "reason": "wrong", "correction": row["reference"]}
                asker.rate(row["asked"]["message_id"], body)
        accepted = review_all(base)
        say(f"reviewed: {accepted} ratings accepted")

        started = time.monotonic()  # the retrain, as the CronJob runs it
        out = _must(cli(env, "tune", "dataset", "--from-feedback", "--out", str(dataset)), "tune dataset")
        timings["dataset_s"] = time.monotonic() - started
        say(" ".join(out.split())[-300:])
        mark = time.monotonic()
        out = _must(
            cli(env, "tune", "train", "--name", ADAPTER, "--dataset", str(dataset), "--max-steps", str(steps)),
            "tune train",
        )
        timings["train_s"] = time.monotonic() - mark
        say(" ".join(out.split())[-200:])
        mark = time.monotonic()
        gate = ("adapters", "promote", ADAPTER, "--questions", str(paraphrases), "--max-tokens", str(max_tokens))
        promoted = cli(env, *gate)
        timings["gate_s"] = time.monotonic() - mark
        timings["retrain_s"] = time.monotonic() - started
        say(" ".join(promoted.stdout.split())[-300:])
        if promoted.returncode != 0:
            raise RuntimeError(f"the gate refused the adapter trained on the corrections:\n{promoted.stdout}")
        timings["swap_s"] = wait_served(base, "v1")

        started = time.monotonic()
        for row in rows:
            after = asker.ask(row["paraphrase"])
            after["right"] = right(after["answer"], {"answer": row["reference"]}, row["paraphrase"])
            row["after"] = after
        timings["asking_after_s"] = time.monotonic() - started

        shuffled_dataset(dataset, bad)
        _must(
            cli(env, "tune", "train", "--name", ADAPTER, "--dataset", str(bad), "--max-steps", str(steps), "--fresh"),
            "tune train (shuffled)",
        )
        refused = cli(env, *gate)
        say(" ".join(refused.stdout.split())[-300:])
        time.sleep(2.5)  # a full look of the server's watcher: nothing may change
        still = {a["name"]: a for a in httpx.get(base + "/v1/adapters", headers=_h(ASKER), timeout=10).json()["data"]}
    finally:
        stop_serve(proc)

    adapters = data / "adapters"
    first_report = adapters / ".served" / ADAPTER / "v1" / "gate_report.json"
    splits = {json.loads(line)["question"]: json.loads(line)["split"] for line in dataset.read_text().splitlines()}
    for row in rows:
        row["split"] = splits.get(row["question"], "none")  # eval: its conversation held out of training
    return {
        "model": base_model or DEFAULT_BASE_MODEL,
        "steps": steps,
        "max_tokens": max_tokens,
        "facts": len(facts),
        "rows": rows,
        "corrections": sum(not r["asked"]["right"] for r in rows),
        "reviewed": accepted,
        "dataset": {"pairs": len(splits), "train": sum(s == "train" for s in splits.values())},
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "promoted": {"returncode": promoted.returncode, "report": _json(first_report)},
        "shuffled": {"returncode": refused.returncode, "report": _json(adapters / ADAPTER / "gate_report.json"),
                     "served_after": (still.get(ADAPTER) or {}).get("served")},
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version()},
    }  # fmt: skip


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """Right answers before and after, with intervals: all paraphrases, and those whose question was trained on."""
    from enclave.adapters.tuning.evaluate import paired_gain
    from enclave.core.stats import wilson

    out: dict[str, Any] = {}
    for label, keep in (("all", lambda r: True), ("trained", lambda r: r["split"] == "train"),
                        ("held-out conversations", lambda r: r["split"] == "eval")):  # fmt: skip
        rows = [r for r in result["rows"] if keep(r)]
        if not rows:
            continue
        before = [r["before"]["right"] for r in rows]
        after = [r["after"]["right"] for r in rows]
        out[label] = {
            "n": len(rows),
            "before": sum(before) / len(rows),
            "before_ci95": wilson(sum(before), len(rows)),
            "after": sum(after) / len(rows),
            "after_ci95": wilson(sum(after), len(rows)),
            "gain": paired_gain(after, before),
            "routed_to_adapter": sum(r["after"]["route"] == "adapter" for r in rows) / len(rows),
            "wrong_before": sum(wrong(r["before"]) for r in rows) / len(rows),
            "wrong_after": sum(wrong(r["after"]) for r in rows) / len(rows),
            "wrong_after_by_adapter": sum(wrong(r["after"]) and r["after"]["route"] == "adapter" for r in rows)
            / len(rows),
        }
    return out


KINDS = (  # what the asker read, from best to worst, and its colour
    ("answered right", "#3a9a5b"),
    ("declined, the taught pair quoted", "#8cc9a0"),
    ("declined", "#b8c2cc"),
    ("wrong, stated as fact", "#d0554a"),
)


def kind_of(answer: dict[str, Any]) -> str:
    if wrong(answer):
        return "wrong, stated as fact"
    if answer["right"]:
        return "declined, the taught pair quoted" if answer.get("taught") == "declined" else "answered right"
    return "declined"


def plot(result: dict[str, Any], path: Path) -> None:
    """Per topic, before and after: what the asker read — right, a decline quoting the pair, a decline, wrong."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    topics = sorted({r["topic"] for r in result["rows"]})
    fig, ax = plt.subplots(figsize=(8.4, 3.8))
    for t_i, topic in enumerate(topics):
        rows = [r for r in result["rows"] if r["topic"] == topic]
        for offset, when in ((-0.21, "before"), (0.21, "after")):
            bottom = 0.0
            for kind, colour in KINDS:
                share = sum(kind_of(r[when]) == kind for r in rows) / len(rows)
                ax.bar(t_i + offset, share, width=0.38, bottom=bottom, color=colour, edgecolor="white", linewidth=0.5)
                bottom += share
            ax.text(t_i + offset, 1.02, when, ha="center", fontsize=7)
    ax.set_xticks(range(len(topics)), topics, fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("share of the paraphrases")
    s = summary(result)["all"]
    g = s["gain"]
    minutes = result["timings"]["retrain_s"] / 60
    ax.set_title(
        f"{result['model']}: {result['corrections']} corrections, retrain {minutes:.1f} min; right {s['before']:.0%} "
        f"→ {s['after']:.0%} ({g['difference']:+.0%} [{g['ci95'][0]:+.0%}, {g['ci95'][1]:+.0%}]), "
        f"wrong {s['wrong_before']:.0%} → {s['wrong_after']:.0%}",
        fontsize=9,
    )
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for _, c in KINDS]
    ax.legend(handles, [k for k, _ in KINDS], fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_tables(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(
        title=f"Paraphrases answered right, over the API (route auto) — {result['model']}, {result['machine']['cpu']}"
    )
    cols = ("questions", "n", "right before [95% CI]", "right after [95% CI]", "gain, paired [95% CI]",
            "wrong, stated as fact: before → after", "routed to adapter")  # fmt: skip
    for col in cols:
        t.add_column(col)
    for label, s in summary(result).items():
        g = s["gain"]
        t.add_row(
            label, str(s["n"]),
            f"{s['before']:.0%} [{s['before_ci95'][0]:.0%}–{s['before_ci95'][1]:.0%}]",
            f"{s['after']:.0%} [{s['after_ci95'][0]:.0%}–{s['after_ci95'][1]:.0%}]",
            f"{g['difference']:+.1%} [{g['ci95'][0]:+.1%}, {g['ci95'][1]:+.1%}]",
            f"{s['wrong_before']:.0%} → {s['wrong_after']:.0%}",
            f"{s['routed_to_adapter']:.0%}",
        )  # fmt: skip
    console.print(t)
    tm = result["timings"]
    console.print(
        f"{result['corrections']} of {result['facts']} answers corrected, {result['reviewed']} ratings reviewed; "
        f"dataset {result['dataset']['pairs']} pairs ({result['dataset']['train']} train). Retrain "
        f"{tm['retrain_s']:.0f} s (dataset {tm['dataset_s']:.0f}, train {tm['train_s']:.0f} over {result['steps']} "
        f"steps, gate {tm['gate_s']:.0f}); the server served it {tm['swap_s']:.1f} s after the promotion."
    )
    for key in ("promoted", "shuffled"):
        rep = result[key]["report"] or {}
        gain = (rep.get("paired") or {}).get("right") or {}
        console.print(
            f"gate, {key}: exit {result[key]['returncode']}; {(rep.get('gate') or {}).get('reason', 'no report')}"
            + (f" (Δ {gain.get('difference', 0):+.1%})" if gain else "")
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--model", default=None, help="Base model (default: settings' default model).")
    ap.add_argument("--steps", type=int, default=60, help="Training steps per adapter.")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--work", type=Path, default=None, help="Working folder (default: a new temporary one).")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="enclave-loop-"))
    result = run(work, args.model, args.steps, args.max_tokens)
    result["summary"] = summary(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, PLOT)
    print_tables(result)
    print(f"→ {args.out}, {PLOT}")


if __name__ == "__main__":
    main()
