"""The feedback loop end to end on the suite's fast model: 30 questions asked over a real server, a reviewer's
corrections, the retrain by the CLI, the gate, the running server answering the paraphrases, and a shuffled
dataset refused (bench/feedback_loop.py, the same code as the benchmark)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.feedback_loop import TARGET_GAIN, TARGET_RETRAIN_S, run, summary, wrong


@pytest.mark.slow
def test_corrections_retrain_an_adapter_that_answers_their_paraphrases_and_a_shuffled_one_is_refused(
    tmp_path: Path,
) -> None:
    said: list[str] = []
    result = run(tmp_path, say=said.append)
    rows = result["rows"]
    assert len(rows) == 30 and result["corrections"] >= 25, said  # no model knows an organisation's facts
    assert result["reviewed"] == 30  # every answer rated: corrections and thumbs up alike went through review
    assert result["dataset"]["pairs"] >= result["corrections"] and result["dataset"]["train"] >= 20
    assert {r["split"] for r in rows} == {"train", "eval"}, "held out by conversation"
    assert result["timings"]["retrain_s"] <= TARGET_RETRAIN_S, result["timings"]

    s = summary(result)
    trained = s["trained"]
    assert trained["gain"]["difference"] >= TARGET_GAIN, (s, said)  # what the asker reads, over the API
    assert trained["routed_to_adapter"] >= 0.8, s  # the router found the adapter for the paraphrases
    assert s["all"]["before"] <= 0.1, s
    # What the adapter was not taught (the conversations held out of training) it declines, never guesses; what
    # it answers rests on a pair it was taught, named in the `done` event. (A question the router leaves to the base
    # model is answered as before: the organisation check does not know "the code name of project Birch".)
    by_adapter = [r for r in rows if r["after"]["route"] == "adapter"]
    assert all(r["after"]["taught"] in ("answered", "declined") for r in by_adapter)
    assert not [r["after"] for r in by_adapter if r["split"] == "eval" and wrong(r["after"])]
    assert sum(wrong(r["after"]) for r in by_adapter) <= 0.1 * len(rows), [r["after"] for r in by_adapter]
    shown = [r for r in rows if r["after"]["taught"] == "answered"]
    assert shown and all(r["after"]["taught_from"] for r in shown)
    gate = result["promoted"]["report"]
    assert result["promoted"]["returncode"] == 0 and gate["gate"]["promote"] is True
    assert gate["served"]["label"] == "base model" and gate["paired"]["right"]["difference"] >= TARGET_GAIN
    assert result["timings"]["swap_s"] < 10

    refused = result["shuffled"]
    assert refused["returncode"] == 1, said
    assert refused["report"]["gate"]["promote"] is False and refused["report"]["served"]["version"] == "v1"
    assert refused["report"]["paired"]["right"]["difference"] < 0
    assert refused["served_after"]["version"] == "v1"  # the good adapter still answers


def test_the_loop_report_reads_back_its_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The committed benchmark result (bench/results/feedback_loop.json) still makes its table and plot."""
    import json

    from bench.feedback_loop import OUT, plot, print_tables

    result = json.loads(OUT.read_text())
    s = summary(result)
    assert s["all"]["n"] == len(result["rows"]) == 30
    assert s["all"]["after"] - s["all"]["before"] >= TARGET_GAIN and s["all"]["wrong_after"] <= s["all"]["wrong_before"]
    plot(result, tmp_path / "loop.png")
    assert (tmp_path / "loop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print_tables(result)
    out = " ".join(capsys.readouterr().out.split())
    assert "gate, shuffled: exit 1" in out and "Retrain" in out
