"""The gate before an adapter is served: compare with the served one, promote only a clear gain, roll back, log.

Fast tests use real LoRA adapters made with peft on the real small model, with random (untrained) weights: each
answers differently from the base model and from the other, which is all that serving and swapping need to show.
The gate's decision is checked on answers built at the evaluation seam; adapters really trained on people's
corrections and on shuffled answers meet it end to end in tests/test_feedback_loop.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from enclave.adapters.registry import AdapterRegistry, read_meta, write_meta
from enclave.adapters.served import KEEP, ServedRecord
from enclave.adapters.tuning.compare import Question, decide, load_questions, score, write_report
from enclave.core.errors import InvalidRequest, NotFound
from enclave.core.settings import Settings
from tests.conftest import MODEL_CACHE, ROOT, Server

# Facts no model knows: every right answer has to come from what an adapter learned.
FACTS = [
    ("Alder", "Falcon"),
    ("Birch", "Marlin"),
    ("Cedar", "Osprey"),
    ("Dogwood", "Panther"),
    ("Elm", "Walrus"),
    ("Fir", "Jackal"),
    ("Hazel", "Condor"),
    ("Juniper", "Lynx"),
    ("Larch", "Badger"),
    ("Maple", "Heron"),
    ("Oak", "Gecko"),
    ("Poplar", "Bison"),
]
QUESTIONS = [
    Question(f"What is the code name of project {p}?", f"Project {p} has the code name {c}.") for p, c in FACTS
]
PROBE = [{"role": "user", "content": "What is the tallest animal?"}]


def settings_for(data_dir: Path) -> Settings:
    return Settings(data_dir=str(data_dir), models={"cache_dir": str(MODEL_CACHE)})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def random_adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two real peft LoRA adapters on the small model, with random weights (seeds 1 and 2), and their metadata."""
    import torch
    from peft import LoraConfig, get_peft_model

    from enclave.engine.modelfiles import base_model_sha256, load_model

    root = tmp_path_factory.mktemp("random-adapters")
    settings = settings_for(root)
    _, model, model_dir = load_model(settings)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    out = {}
    for seed in (1, 2):
        noise = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=noise) * 0.05)
        folder = root / f"r{seed}"
        peft_model.save_pretrained(str(folder))
        meta = {"name": f"r{seed}", "base_model": settings.models.name, "created_at": f"2026-01-0{seed}T00:00:00Z"}
        write_meta(folder, {**meta, "base_model_sha256": base_model_sha256(model_dir), "dataset": None})
        out[f"r{seed}"] = folder
    return out


def questions_file(path: Path, rows: list[Question]) -> Path:
    path.write_text("".join(json.dumps({"question": q.question, "answer": q.answer}) + "\n" for q in rows))
    return path


@pytest.fixture(scope="module")
def embed() -> Callable[[list[str]], Any]:
    from enclave.knowledge.embedder import Embedder

    return Embedder.from_settings(Settings()).embed


# ------------------------------------------------------------------------------------------------
# The gate's decision, at the evaluation seam (answers given, the real embedder and the real right-answer check)


def shuffled(answers: list[str]) -> list[str]:
    """Every answer moved to another question (a rotation: no answer stays where it was)."""
    return answers[1:] + answers[:1]


def test_the_gate_promotes_a_clear_gain_and_refuses_shuffled_answers(
    embed: Callable[[list[str]], Any], tmp_path: Path
) -> None:
    right = [f"The code name is {c}." for _, c in FACTS]
    wrong = shuffled(right)
    better = score(QUESTIONS, {"candidate": right, "served": wrong}, embed)
    assert better["sides"]["candidate"]["right"] == 1.0 and better["sides"]["served"]["right"] == 0.0
    assert better["paired"]["right"] == {"difference": 1.0, "ci95": [1.0, 1.0]}
    assert better["paired"]["cosine"]["ci95"][0] > 0, "the right answers are also closer to the references"
    verdict = decide(better, margin=0.0)
    assert verdict["promote"] is True and "lower bound is above +0.0%" in verdict["reason"]

    worse = score(QUESTIONS, {"candidate": wrong, "served": right}, embed)
    assert worse["paired"]["right"]["difference"] == -1.0
    assert decide(worse, 0.0)["promote"] is False and "is not above" in decide(worse, 0.0)["reason"]
    same = score(QUESTIONS, {"candidate": right, "served": right}, embed)
    assert same["paired"]["right"]["ci95"] == [0.0, 0.0] and decide(same, 0.0)["promote"] is False

    # A gain on 9 of 12 questions: clear of a 25-point margin, not of a 90-point one; a 1-question gain is no gain.
    some = score(QUESTIONS, {"candidate": right[:9] + wrong[9:], "served": wrong}, embed)
    low, high = some["paired"]["right"]["ci95"]
    assert some["paired"]["right"]["difference"] == 0.75 and 0.25 < low < 0.75 < high
    assert decide(some, 0.25)["promote"] is True and decide(some, 0.9)["promote"] is False
    one = score(QUESTIONS, {"candidate": right[:1] + wrong[1:], "served": wrong}, embed)
    assert one["paired"]["right"]["ci95"][0] == 0.0 and decide(one, 0.0)["promote"] is False

    # The report: JSON with every question's answers and scores, and the plot beside it.
    report = {**some, "candidate": {"label": "c"}, "served": {"label": "s"}, "gate": decide(some, 0.25)}
    png = write_report(report, tmp_path / "gate_report.json")
    saved = json.loads((tmp_path / "gate_report.json").read_text())
    assert len(saved["per_question"]) == 12 and saved["per_question"][0]["candidate"]["right"] is True
    assert saved["per_question"][11]["served"]["answer"] == wrong[11] and saved["gate"]["promote"] is True
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_a_candidate_that_guesses_where_the_served_one_declines_is_refused(
    embed: Callable[[list[str]], Any], tmp_path: Path
) -> None:
    """Declines are not wrong answers: a candidate that answers 6 more questions right but states a wrong code name
    for the 5 others the served adapter declined is refused; one that declines those is promoted. A question no
    adapter was taught (answerable false) is right only when declined."""
    from enclave.adapters.tuning.evaluate import declined

    right = [f"The code name is {c}." for _, c in FACTS]
    wrong = shuffled(right)
    dont_know = ["I don't know the code name of that project."] * 12
    served = right[:1] + dont_know[1:]
    guesser = right[:7] + wrong[7:]
    careful = right[:7] + dont_know[7:]
    guessed = score(QUESTIONS, {"candidate": guesser, "served": served}, embed)
    assert guessed["sides"]["served"]["declined"] == round(11 / 12, 4) and guessed["sides"]["served"]["wrong"] == 0.0
    assert guessed["sides"]["candidate"]["wrong"] == round(5 / 12, 4)
    assert guessed["paired"]["wrong"]["ci95"][0] > 0
    refused = decide(guessed, 0.0)
    assert refused["promote"] is False and "wrong answers stated as fact +41.7%" in refused["reason"], refused
    assert decide(score(QUESTIONS, {"candidate": careful, "served": served}, embed), 0.0)["promote"] is True
    assert guessed["per_question"][8]["candidate"]["verdict"] == "wrong"
    assert guessed["per_question"][8]["served"]["verdict"] == "declined"

    unknown = [Question("What is the code name of project Sequoia?", "Nothing says.", answerable=False)] * 4
    answered = score(unknown, {"candidate": dont_know[:4], "served": wrong[:4]}, embed)
    assert answered["sides"]["candidate"]["right"] == 1.0 and answered["sides"]["served"]["wrong"] == 1.0
    for said in ("I don't know.", "I do not have information about project Sequoia.", "I'm not sure."):
        assert declined(said), said
    for said in ("Project Alder's code name is Falcon.", "The team is on floor nine."):
        assert not declined(said), said
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q?", "answer": "a.", "answerable": "no"}) + "\n")
    with pytest.raises(InvalidRequest, match="'answerable' must be true or false"):
        load_questions(bad)
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"question": "q?", "answer": "a.", "answerable": False}) + "\n")
    assert load_questions(good)[0].answerable is False


def test_questions_come_from_held_out_rows_and_bad_files_are_named(tmp_path: Path) -> None:
    dataset = tmp_path / "docs.jsonl"
    rows = [
        {"question": q.question, "answer": q.answer, "split": "train" if i % 3 else "eval"}
        for i, q in enumerate(QUESTIONS)
    ]
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    held_out = load_questions(dataset)
    assert [q.question for q in held_out] == [QUESTIONS[i].question for i in (0, 3, 6, 9)]
    assert len(load_questions(dataset, limit=2)) == 2
    cases = {
        "missing.jsonl": (None, "questions file not found"),
        "bad.jsonl": ('{"question": "a?", "answer": "b"}\n{oops\n', "bad.jsonl:2: not JSON"),
        "list.jsonl": ('["a", "b"]\n', "list.jsonl:1: expected an object"),
        "blank.jsonl": ('{"question": "a?", "answer": " "}\n', "blank.jsonl:1: 'answer' is missing or empty"),
        "train.jsonl": ('{"question": "a?", "answer": "b", "split": "train"}\n', "no held-out questions"),
        "long.jsonl": ('{"question": "' + "x" * 70_000 + '", "answer": "b"}\n', "long.jsonl:1: a line of"),
    }
    for name, (text, message) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(InvalidRequest, match=message):
            load_questions(tmp_path / name)


# ------------------------------------------------------------------------------------------------
# The served record, the registry and the CLI


def test_promotions_keep_versions_roll_back_and_log(random_adapters: dict[str, Path], tmp_path: Path) -> None:
    record = ServedRecord(tmp_path)
    first = record.promote("docs", random_adapters["r1"], {"by": "ann@host", "figures": {"x": 1}}, expect=None)
    assert (first["version"], first["replaced"], first["by"], first["figures"]) == ("v1", None, "ann@host", {"x": 1})
    assert (tmp_path / ".served/docs/v1/adapter_model.safetensors").read_bytes() == (
        random_adapters["r1"] / "adapter_model.safetensors"
    ).read_bytes()
    with pytest.raises(InvalidRequest, match="serves v1 now, not its working copy"):
        record.promote("docs", random_adapters["r2"], {"by": "bob@host"}, expect=None)
    second = record.promote("docs", random_adapters["r2"], {"by": "bob@host"}, expect="v1")
    assert second["replaced"] == "v1" and record.read()["docs"]["previous"] == ["v1"]
    assert record.served_folder("docs") == tmp_path / ".served/docs/v2"
    back = record.rollback("docs", {"by": "cat@host"})
    assert (back["version"], back["replaced"]) == ("v1", "v2") and record.read()["docs"]["previous"] == []
    with pytest.raises(InvalidRequest, match="its first promotion"):
        record.rollback("docs", {"by": "cat@host"})
    with pytest.raises(NotFound, match="never been promoted"):
        record.rollback("other", {"by": "cat@host"})
    # Promoted again and again: the served version and KEEP - 1 before it stay on disk, the rest go.
    for _ in range(KEEP + 1):
        record.promote("docs", random_adapters["r2"], {"by": "dan@host"})
    entry = record.read()["docs"]
    assert entry["version"] == "v8" and entry["previous"] == ["v7", "v6", "v5", "v4"]
    assert sorted(p.name for p in (tmp_path / ".served/docs").iterdir()) == ["v4", "v5", "v6", "v7", "v8"]
    # The log: every event in order, with who; a torn line (a crash mid-write) is skipped, not fatal.
    record.log({"action": "refuse", "name": "docs", "by": "eve@host", "figures": {"right_gain": {}}})
    with (tmp_path / "promotions.jsonl").open("a") as f:
        f.write('{"action": "prom')
    actions = [(e["action"], e.get("version"), e["by"]) for e in record.history("docs")]
    assert actions[:4] == [
        ("promote", "v1", "ann@host"),
        ("promote", "v2", "bob@host"),
        ("rollback", "v1", "cat@host"),
        ("promote", "v3", "dan@host"),
    ]
    assert actions[-1] == ("refuse", None, "eve@host") and len(actions) == 3 + KEEP + 1 + 1
    assert all(e["at"].endswith("Z") for e in record.history())
    (tmp_path / "served.json").write_text("{not json")
    with pytest.raises(InvalidRequest, match=r"served\.json is corrupt"):
        record.read()


class Host:
    """The adapter-host seam: what the registry loaded, under which name, from which folder."""

    def __init__(self) -> None:
        self.loaded: dict[str, Path] = {}

    def list_adapters(self) -> list[str]:
        return sorted(self.loaded)

    async def add_adapter(self, name: str, path: Path) -> None:
        self.loaded[name] = path

    async def remove_adapter(self, name: str) -> None:
        self.loaded.pop(name)


async def test_the_registry_serves_the_promoted_version_and_follows_changes(
    random_adapters: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "adapters"
    shutil.copytree(random_adapters["r1"], root / "docs")  # the working copy: a candidate, not served once promoted
    shutil.copytree(random_adapters["r2"], root / "plain")
    (root / ".docs.checkpoint").mkdir()
    record = ServedRecord(root)
    record.promote("docs", random_adapters["r2"], {"by": "ann"})
    host = Host()
    registry = AdapterRegistry(root, host, read_meta(random_adapters["r1"])["base_model_sha256"])
    assert await registry.load_all() == []
    assert host.loaded == {"docs": root / ".served/docs/v1", "plain": root / "plain"}
    listed = {a["name"]: a for a in registry.available()}
    assert set(listed) == {"docs", "plain"}, "hidden folders are not adapters"
    assert listed["docs"]["served"]["version"] == "v1" and listed["plain"]["served"] is None
    assert await registry.refresh() == [], "nothing changed"
    record.promote("docs", random_adapters["r1"], {"by": "bob"})
    assert registry.available()[0]["served"]["version"] == "v2", "a listing reads the new record first"
    assert await registry.refresh() == ["docs"] and host.loaded["docs"] == root / ".served/docs/v2"
    record.rollback("docs", {"by": "cat"})
    assert await registry.refresh() == ["docs"] and host.loaded["docs"] == root / ".served/docs/v1"
    # A corrupt record is logged; what is loaded keeps serving.
    (root / "served.json").write_text("{oops")
    assert await registry.refresh() == [] and host.loaded["docs"] == root / ".served/docs/v1"


def cli(data_dir: Path, *args: str) -> tuple[int, str]:
    """The command's exit code and its output with rich's line wrapping and table borders undone."""
    code, output = cli_raw(data_dir, *args)
    return code, " ".join(output.replace("│", " ").split())


def cli_raw(data_dir: Path, *args: str) -> tuple[int, str]:
    from enclave.cli.main import app

    env = {"ENCLAVE_DATA_DIR": str(data_dir), "ENCLAVE_MODELS__CACHE_DIR": str(MODEL_CACHE), "COLUMNS": "200"}
    done = CliRunner().invoke(app, list(args), env=env)
    return done.exit_code, done.output


def test_cli_promotes_by_force_rolls_back_and_prints_the_history(
    random_adapters: dict[str, Path], tmp_path: Path
) -> None:
    adapters = tmp_path / "adapters"
    assert cli(tmp_path, "adapters", "promote", "docs", "--force")[0] == 2, "no such adapter"
    code, output = cli(tmp_path, "adapters", "rollback")
    assert code == 2 and "none is promoted" in output
    shutil.copytree(random_adapters["r1"], adapters / "docs")
    code, output = cli(tmp_path, "adapters", "promote", "docs", "--force")
    assert code == 0 and "docs serves v1 (was its working copy)" in output, output
    shutil.rmtree(adapters / "docs")
    shutil.copytree(random_adapters["r2"], adapters / "docs")
    code, output = cli(tmp_path, "adapters", "promote", "docs", "--force")
    assert code == 0 and "docs serves v2 (was v1)" in output, output
    code, output = cli(tmp_path, "adapters", "list")
    assert code == 0 and "docs v2" in output and "v1" in output
    code, output = cli(tmp_path, "adapters", "rollback")
    assert code == 0 and "docs serves v1 again (was v2)" in output, output
    code, output = cli(tmp_path, "adapters", "history")
    assert code == 0 and output.count("promote (forced)") == 2 and "rollback" in output
    code, output = cli_raw(tmp_path, "adapters", "history", "docs", "--json")
    events = [json.loads(line) for line in output.splitlines()]
    assert [(e["action"], e["version"]) for e in events] == [("promote", "v1"), ("promote", "v2"), ("rollback", "v1")]
    # Forced or not, an adapter of another base model is never served.
    meta = read_meta(adapters / "docs")
    write_meta(adapters / "docs", {**meta, "base_model_sha256": "0" * 64})
    code, output = cli(tmp_path, "adapters", "promote", "docs", "--force")
    assert code == 2 and "trained for another base model" in output
    assert ServedRecord(adapters).read()["docs"]["version"] == "v1"


# ------------------------------------------------------------------------------------------------
# A real server: a promotion and a rollback by the CLI reach it while it runs; a refused candidate does not


def enclave(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ENCLAVE_DATA_DIR": str(data_dir),
        "ENCLAVE_MODELS__CACHE_DIR": str(MODEL_CACHE),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "enclave.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def ask(server: Server, model: str) -> str:
    r = server.post(
        "/v1/chat/completions",
        json={"model": model, "messages": PROBE, "max_tokens": 12, "temperature": 0, "route": "base"},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def until(check: Callable[[], bool], timeout: float = 30) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "the server did not swap the adapter in"
        time.sleep(0.25)
    return time.monotonic() - started


def test_a_running_server_swaps_in_a_promotion_and_a_rollback(random_adapters: dict[str, Path], tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    shutil.copytree(random_adapters["r1"], adapters / "docs")
    shutil.copytree(random_adapters["r1"], adapters / "as-r1")  # the same weights under names of their own
    shutil.copytree(random_adapters["r2"], adapters / "as-r2")
    assert enclave(tmp_path, "adapters", "promote", "docs", "--force").returncode == 0
    server = Server(tmp_path, log_name="gate").start()
    try:
        with_r1, with_r2 = ask(server, "as-r1"), ask(server, "as-r2")
        assert with_r1 != with_r2 != ask(server, "smollm2-135m-instruct")
        assert ask(server, "docs") == with_r1
        # A candidate no better than the served one (neither knows a code name): refused with its figures.
        shutil.rmtree(adapters / "docs")
        shutil.copytree(random_adapters["r2"], adapters / "docs")
        held_out = questions_file(tmp_path / "held-out.jsonl", QUESTIONS[:4])
        done = enclave(tmp_path, "adapters", "promote", "docs", "--questions", str(held_out), "--max-tokens", "16")
        text = " ".join(done.stdout.split())
        assert done.returncode == 1, done.stdout + done.stderr
        assert "refused: right answers +0.0% [+0.0%, +0.0%] over 4 questions" in text and "docs v1 (served)" in text
        report = json.loads((adapters / "docs" / "gate_report.json").read_text())
        assert report["served"]["version"] == "v1" and report["n"] == 4 and report["gate"]["promote"] is False
        assert (adapters / "docs" / "gate_report.png").stat().st_size > 5000
        time.sleep(2.5)  # a full look of the server's watcher: nothing to swap
        assert ask(server, "docs") == with_r1
        # Promoted (by hand): the running server serves it within seconds; rolled back: the earlier one again.
        assert enclave(tmp_path, "adapters", "promote", "docs", "--force").returncode == 0
        swap = until(lambda: ask(server, "docs") == with_r2)
        listed = {a["name"]: a for a in server.get("/v1/adapters").json()["data"]}
        assert listed["docs"]["served"]["version"] == "v2" and listed["docs"]["served"]["previous"] == ["v1"]
        assert enclave(tmp_path, "adapters", "rollback", "docs").returncode == 0
        until(lambda: ask(server, "docs") == with_r1)
        assert "adapter 'docs' now serves v2" in server.log() and "adapter 'docs' now serves v1" in server.log()
        assert swap < 10
    finally:
        server.stop()
    # `tune compare` alone: any two adapters (here the working copy against the base model); a report, no promotion.
    out = tmp_path / "compare" / "r2-vs-base.json"
    done = enclave(
        tmp_path,
        "tune",
        "compare",
        "docs",
        "--against",
        "base",
        "--questions",
        str(held_out),
        "--max-tokens",
        "16",
        "--out",
        str(out),
    )
    text = " ".join(done.stdout.split())
    assert done.returncode == 0 and "candidate − served, paired" in text and "the gate would refuse" in text, text
    compared = json.loads(out.read_text())
    assert compared["served"]["label"] == "base model" and len(compared["per_question"]) == 4
    assert out.with_suffix(".png").stat().st_size > 5000
    unknown = enclave(tmp_path, "tune", "compare", "docs", "--against", "nope", "--questions", str(held_out))
    assert unknown.returncode == 2 and "unknown adapter 'nope'" in unknown.stderr
    history = enclave(tmp_path, "adapters", "history", "--json").stdout.splitlines()
    events = [json.loads(line) for line in history]
    assert [e["action"] for e in events] == ["promote", "refuse", "promote", "rollback"]
    refusal = events[1]["figures"]
    assert refusal["questions"] == 4 and refusal["right"] == {"candidate": 0.0, "served": 0.0}
    assert refusal["against"] == "docs v1 (served)" and refusal["report"].endswith("gate_report.json")


# ------------------------------------------------------------------------------------------------
# The chart's retrain CronJob, rendered with Helm's library, linted, validated and scanned like the other profiles

RETRAIN_HA: dict[str, Any] = {
    "enabled": True,
    "schedule": "30 2 * * 6",
    "adapter": "handbook",
    "collection": "handbook",
    "maxSteps": 200,
    "margin": 0.05,
    "questionsFile": "/mnt/held-out/questions.jsonl",
    "gpus": 1,
    "nodeSelector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "volumes": [{"name": "held-out", "configMap": {"name": "held-out-questions"}}],
    "volumeMounts": [{"name": "held-out", "mountPath": "/mnt/held-out", "readOnly": True}],
}
RETRAIN_BAD_VALUES: dict[str, dict[str, Any]] = {
    "retrain-bad-adapter-name": {"retrain": {"adapter": "../etc"}},
    "retrain-margin-over-one": {"retrain": {"margin": 2}},
    "retrain-bad-schedule": {"retrain": {"schedule": "every sunday"}},
    "retrain-relative-questions": {"retrain": {"questionsFile": "questions.jsonl"}},
    "retrain-typo": {"retrain": {"epoch": 3}},
}


@pytest.fixture(scope="module")
def chart_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """tests/test_deploy.py's tool run (render, strict lint on both Kubernetes versions, schema validation) over the
    default and the HA profile with retrain enabled, then checkov over the manifests."""
    from tests import test_deploy as deploy

    failing = {
        "with-vllm": ("retrain-ha", {"modelServing": {"mode": "vllm"}}, "needs modelServing.mode local or enclave"),
        "without-a-volume": ("retrain", {"persistence": {"enabled": False}}, "retrain writes adapters where"),
    }
    work = tmp_path_factory.mktemp("retrain-chart")
    return deploy.feature_chart_report(work, "retrain", {"enabled": True}, RETRAIN_HA, failing, RETRAIN_BAD_VALUES)


@pytest.mark.parametrize("profile", ["retrain", "retrain-ha"])
def test_chart_renders_the_retrain_cronjob(chart_report: dict[str, Any], profile: str) -> None:
    from tests.test_deploy import RELEASE, all_containers, docs_of, env_of, one, pod_spec

    entry = chart_report["profiles"][profile]
    docs = docs_of(chart_report, profile)
    for lint in entry["lint"]:
        assert lint["errors"] == [] and [m for m in lint["messages"] if m["severity"] >= 2] == [], lint
    assert entry["validation_errors"] == [] and entry["validated"] == 2 * len(docs)
    api = pod_spec(one(docs, "Deployment", f"{RELEASE}-api"))
    api_main = api["containers"][0]
    cron = one(docs, "CronJob", f"{RELEASE}-retrain")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["suspend"] is False
    assert cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    steps = [*pod["initContainers"], *pod["containers"]]
    assert [c["name"] for c in steps] == ["dataset", "train", "promote"] and pod["restartPolicy"] == "Never"
    args = [c["command"] + c["args"] for c in steps]
    if profile == "retrain":
        assert cron["spec"]["schedule"] == "0 3 * * 0"
        assert args == [
            ["enclave", "tune", "dataset", "--collection", "docs", "--from-feedback"],
            ["enclave", "tune", "train", "--name", "docs", "--collection", "docs", "--epochs", "3"],
            ["enclave", "adapters", "promote", "docs", "--margin", "0"],
        ]
    else:
        assert cron["spec"]["schedule"] == "30 2 * * 6"
        assert args[1][-2:] == ["--max-steps", "200"]
        assert args[2] == [
            *("enclave", "adapters", "promote", "handbook", "--margin", "0.05"),
            *("--questions", "/mnt/held-out/questions.jsonl"),
        ]
    volumes = {v["name"]: v for v in pod["volumes"]}
    api_volumes = {v["name"]: v for v in api["volumes"]}
    assert volumes["config"] == api_volumes["config"]
    for step in steps:
        # The API's image, settings and database Secret; offline and restricted like every other container.
        assert step["image"] == api_main["image"] and step["securityContext"] == api_main["securityContext"]
        env = env_of(step)
        assert env["ENCLAVE_CONFIG"] == env_of(api_main)["ENCLAVE_CONFIG"] and env["HF_HUB_OFFLINE"] == "1"
        assert env.get("ENCLAVE_STORAGE__DATABASE_URL") == env_of(api_main).get("ENCLAVE_STORAGE__DATABASE_URL")
        mounts = {m["mountPath"]: m for m in step["volumeMounts"]}
        assert mounts["/data"]["name"] == "data" and "emptyDir" in volumes[mounts["/tmp"]["name"]]
        assert step["resources"]["requests"] and step["resources"]["limits"]
    gpu = [s["resources"]["limits"].get("nvidia.com/gpu") for s in steps]
    assert pod["securityContext"] == api["securityContext"] and pod["automountServiceAccountToken"] is False
    affinity = pod.get("affinity", {}).get("podAffinity")
    if profile == "retrain":  # adapters on the ReadWriteOnce /data claim: on the API pod's node, on CPU
        assert volumes["data"] == api_volumes["data"] and "adapters" not in volumes and gpu == [None] * 3
        [term] = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    else:  # the shared adapters claim, written here and read-only in the servers; PostgreSQL by Secret; a GPU
        assert volumes["adapters"]["persistentVolumeClaim"]["claimName"] == f"{RELEASE}-adapters"
        assert api_volumes["adapters"]["persistentVolumeClaim"]["readOnly"] is True
        for step in steps:
            mount = next(m for m in step["volumeMounts"] if m["name"] == "adapters")
            assert mount["mountPath"] == "/data/adapters" and not mount.get("readOnly")
            assert env_of(step)["ENCLAVE_STORAGE__DATABASE_URL"]["secretKeyRef"]["key"] == "database-url"
        assert "emptyDir" in volumes["data"] and affinity is None
        assert gpu == [None, 1, None] and pod["nodeSelector"] == RETRAIN_HA["nodeSelector"]
        assert pod["tolerations"] == RETRAIN_HA["tolerations"] and volumes["held-out"]["configMap"]
    assert all(c["securityContext"]["readOnlyRootFilesystem"] for c in all_containers(pod))
    # Nothing reaches the retrain pods; they reach Chroma and what the API reaches outside the release.
    labels = cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    own = one(docs, "NetworkPolicy", f"{RELEASE}-retrain")
    assert own["spec"]["podSelector"]["matchLabels"].items() <= labels.items() and own["spec"]["ingress"] == []
    egress = own["spec"]["egress"]
    assert egress[0]["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "chroma"
    api_egress = one(docs, "NetworkPolicy", f"{RELEASE}-api")["spec"]["egress"]
    assert all(rule in api_egress for rule in egress[1:]) and len(egress) == (3 if profile == "retrain-ha" else 1)
    chroma_in = one(docs, "NetworkPolicy", f"{RELEASE}-chroma-from-retrain")["spec"]["ingress"][0]
    assert chroma_in["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "retrain"


def test_chart_refuses_bad_retrain_values(chart_report: dict[str, Any]) -> None:
    for name, message in chart_report["failing_expected"].items():
        assert chart_report["failing"][name] and message in chart_report["failing"][name], name
    for name, result in chart_report["bad_values"].items():
        assert result["schema"] and result["render"], (name, result)


def test_checkov_passes_the_retrain_cronjob(chart_report: dict[str, Any]) -> None:
    from tests.test_deploy import NAMESPACE, RELEASE

    checkov = chart_report["checkov"]
    failed = [(c["check_id"], c["resource"]) for c in checkov["results"]["failed_checks"]]
    assert failed == [] and checkov["summary"]["parsing_errors"] == 0, failed
    scanned = {(Path(c["file_path"]).stem, c["resource"]) for c in checkov["results"]["passed_checks"]}
    for profile in ("retrain", "retrain-ha"):
        assert (profile, f"CronJob.{NAMESPACE}.{RELEASE}-retrain") in scanned
