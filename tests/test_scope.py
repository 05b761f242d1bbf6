"""Organisation questions vs general ones (enclave/chat/scope.py): the issue's examples, hard negatives that use
the trigger words generically, and the accuracy on the labelled set (bench/data/org_questions.jsonl), whose test
split was written before the rules and never tuned on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from enclave.chat.scope import about_organisation, find_cue, reason

DATA = Path(__file__).resolve().parents[1] / "bench" / "data" / "org_questions.jsonl"

ORGANISATION = [
    "Who is the CEO of our company?",
    "What is the office wifi password?",
    "What is our VPN address?",
    "How many vacation days do I get?",
    "Who's our CTO?",
    "When is payday?",
    "Does the company pay for training courses?",
    "Where can I download my payslip?",
    "What's the password for the guest network?",
    "Who is on the on-call rota this week?",
]
GENERAL = [
    "What is the capital of France?",
    "How do I reverse a list in Python?",
    "What does HTTP 404 mean?",
    "Explain what a VPN is",
    "How many days are in a leap year?",
]
HARD_NEGATIVES = [
    "What is a VPN?",
    "What does a CEO do?",
    "How do I configure a VPN on Linux?",
    "What is a typical vacation policy in Germany?",
    "How can we sort a list in Python?",
    "Who is the CEO of Microsoft?",
    "How do I choose a strong wifi password?",
    "How do I change my password in Linux?",
    "How do I ask my manager for a raise?",
    "What are the best practices for office ergonomics?",
    "How can we improve communication in remote teams?",
    "Why does our body need vitamin D?",
    "What is the refund policy of Amazon?",
    "How do we attract more customers?",
]


@pytest.mark.parametrize("question", ORGANISATION)
def test_questions_about_the_organisation(question: str) -> None:
    assert about_organisation(question), question


@pytest.mark.parametrize("question", GENERAL + HARD_NEGATIVES)
def test_general_questions_even_with_the_trigger_words(question: str) -> None:
    assert not about_organisation(question), reason(question)


@pytest.mark.parametrize(
    "variant",
    ["WHO IS THE CEO OF OUR COMPANY???", "who is the ceo of our company", "Who’s  the CEO of our company ?!",
     "  who's the ceo of our company.  "],
)
def test_case_and_punctuation_change_nothing(variant: str) -> None:
    assert about_organisation(variant)
    assert not about_organisation(variant.replace("our company", "Microsoft").replace("OUR COMPANY", "MICROSOFT"))


@pytest.mark.parametrize(
    ("question", "cue", "words"),
    [
        ("What is our VPN address?", "our", "our vpn"),
        ("What is the office wifi password?", "office", "the office"),
        ("How many vacation days do I get?", "entitlement", "do i get"),
        ("Who is my manager?", "my_work", "my manager"),
        ("When is payday?", "hr_vocab", "payday"),
        ("Which clients did we lose last quarter?", "business", "which clients"),
    ],
)
def test_reason_names_the_cue(question: str, cue: str, words: str) -> None:
    found = find_cue(question)
    assert found is not None and found.name == cue and words in found.words
    text = reason(question)
    assert text is not None and f"'{found.words}'" in text and found.label in text
    assert reason("What is the capital of France?") is None


def _rows() -> list[dict[str, object]]:
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


def test_labelled_set_is_big_enough_and_well_formed() -> None:
    rows = _rows()
    for row in rows:
        assert set(row) == {"question", "organisation", "source", "split"}, row
        assert isinstance(row["question"], str) and isinstance(row["organisation"], bool)
        assert row["source"] == "written" and row["split"] in ("dev", "test")
    questions = [str(r["question"]).lower() for r in rows]
    assert len(questions) == len(set(questions))
    for split, floor in (("dev", 50), ("test", 30)):
        for label in (True, False):
            assert sum(r["split"] == split and r["organisation"] is label for r in rows) >= floor


@pytest.mark.parametrize(("split", "floor"), [("dev", 0.95), ("test", 0.9)])
def test_accuracy_on_the_labelled_set(split: str, floor: float) -> None:
    # Measured at commit time: dev 158/158, test 59/60 (the one miss: "How much is my annual bonus?").
    rows = [r for r in _rows() if r["split"] == split]
    wrong = [r["question"] for r in rows if about_organisation(str(r["question"])) is not r["organisation"]]
    assert 1 - len(wrong) / len(rows) >= floor, wrong


def test_fast_enough_for_every_request() -> None:
    questions = [str(r["question"]) for r in _rows()]
    start = time.perf_counter()
    for q in questions:
        about_organisation(q)
    assert (time.perf_counter() - start) / len(questions) < 1e-3
    long = "Who is our CEO? " + "lorem ipsum dolor sit amet " * 5000
    start = time.perf_counter()
    assert about_organisation(long)
    assert time.perf_counter() - start < 0.05
