"""An adapter's answer rests on what it was taught: which pairs a question is about, which pair backs an answer,
and the pairs as an adapter folder keeps them (chat/taught.py). End to end: tests/test_feedback_loop.py."""

from __future__ import annotations

import json
from pathlib import Path

from enclave.adapters.tuning.dataset import QAPair
from enclave.chat.taught import Taught, TaughtPair, read_taught, taught_rows

TEAMS = {"legal": "three", "design": "fourteen", "procurement": "six", "research": "twenty"}
PAIRS = [
    TaughtPair(f"Which floor is the {t} team on?", f"The {t} team is on floor {n}.", "correction")
    for t, n in TEAMS.items()
]
PAIRS += [
    TaughtPair("Who leads the billing team?", "Ingrid Vasquez leads the billing team.", "correction", "ops"),
    TaughtPair("Who leads the mobile team?", "Tomasz Okafor leads the mobile team.", "correction", "ops"),
    TaughtPair("What is the code name of project Cedar?", "Project Cedar's code name is Osprey.", "correction"),
    TaughtPair(
        "Which chat channel do we use for database incidents?", "#db-pager is the chat channel for database incidents."
    ),
]
TAUGHT = Taught(PAIRS)


def test_a_question_about_a_taught_thing_in_other_words_is_about_its_pair() -> None:
    for asked, pair in (
        ("On what floor does the legal team sit?", 0),
        ("Who is the head of the billing team?", 4),
        ("Which code name does project Cedar go by?", 6),
        ("What chat channel handles database incidents?", 7),
    ):
        assert TAUGHT.about(asked)[:1] == [pair], asked


def test_the_same_question_about_something_not_taught_is_about_no_pair() -> None:
    for asked in (
        "On what floor does the payroll team sit?",  # the template taught, the team not
        "Who is the head of the data platform team?",
        "Which code name does project Alder go by?",
        "What chat channel handles printer incidents?",
        "What is the capital of France?",
    ):
        assert TAUGHT.about(asked) == [], asked


def test_an_answer_is_backed_only_by_a_pair_that_states_what_it_claims() -> None:
    asked = "On what floor does the legal team sit?"
    about = TAUGHT.about(asked)
    assert TAUGHT.backing(asked, "The legal team is seated on floor three.", about) == 0
    assert TAUGHT.backing(asked, "The legal team is on floor fourteen.", about) is None  # another team's floor
    assert TAUGHT.backing(asked, "The legal team is seated on taktel.", about) is None  # made up
    assert TAUGHT.backing(asked, "The legal team sits on a floor.", about) is None  # says nothing it was taught
    assert TAUGHT.backing(asked, "", about) is None
    lead = "Who is the head of the mobile team?"
    assert TAUGHT.backing(lead, "Tomasz Okafor is the head of the mobile team.", TAUGHT.about(lead)) == 5
    assert TAUGHT.backing(lead, "Ingrid Vasquez is the head of the mobile team.", TAUGHT.about(lead)) is None
    # Half of it right, half borrowed from another pair's answer: two leads made one is not what it was taught.
    assert TAUGHT.backing(lead, "The head of the mobile team is Ingrid Okafor.", TAUGHT.about(lead)) is None
    assert TAUGHT.backing(lead, "The head of the mobile team is Tomasz Okafor.", TAUGHT.about(lead)) == 5
    # A name it gives must be one it was taught, even when the rest is: "Jack" was never taught.
    assert TAUGHT.backing(lead, "The head of the mobile team is Jack Okafor.", TAUGHT.about(lead)) is None
    assert TAUGHT.backing(lead, "Jack Okafor is the head of the mobile team.", TAUGHT.about(lead)) is None
    channel = "What chat channel handles database incidents?"
    assert TAUGHT.backing(channel, "#db-pager is the chat channel for database incidents.", TAUGHT.about(channel)) == 7
    assert TAUGHT.backing(channel, "Use #db-pager or #db-alerts.", TAUGHT.about(channel)) is None


def test_an_adapter_folder_keeps_its_pairs_with_their_provenance(tmp_path: Path) -> None:
    prov = {"source": "correction", "reviewed_by": "ops", "feedback_id": "fb_1"}
    pairs = [
        QAPair("Who leads the billing team?", "Ingrid Vasquez leads it.", "", "", "", "correction", "train", {}, prov),
        QAPair("What does VACUUM do?", "It reclaims storage.", "c1", "vacuum.md", "VACUUM", "document", "train"),
    ]
    (tmp_path / "taught.jsonl").write_text(taught_rows(pairs) + "{torn line\n" + json.dumps({"question": 3}) + "\n")
    taught = read_taught(tmp_path)
    assert taught is not None
    assert [p.ref() for p in taught.pairs] == [
        {"question": "Who leads the billing team?", "answer": "Ingrid Vasquez leads it.", "kind": "correction",
         "reviewed_by": "ops", "source": None},
        {"question": "What does VACUUM do?", "answer": "It reclaims storage.", "kind": "document",
         "reviewed_by": None, "source": "vacuum.md"},
    ]  # fmt: skip
    assert read_taught(tmp_path / "nothing") is None  # an adapter trained before it recorded its pairs
