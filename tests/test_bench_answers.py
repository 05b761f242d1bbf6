"""`bench.answers`' scoring and `enclave.chat.grounding`: what counts as a right, cited, supported, looping answer."""

from __future__ import annotations

import pytest

from bench.answers import degenerate, names, paired, spread, wilson
from enclave.chat.grounding import citations_in, ground, lexical_support, split_sentences


def test_an_entity_is_named_as_a_word_of_its_own() -> None:
    assert names("Use the json module [1].", "json")
    assert names("Call json.dumps on it.", "json")
    assert not names("Use jsonschema.", "json") and not names("Use simplejson.", "json")
    assert names("os.path.join builds paths", "os.path") and not names("the os module", "os.path")
    assert names("Run `ls -l`.", "ls") and not names("Run lsblk.", "ls")


@pytest.mark.parametrize(
    ("text", "loops"),
    [
        ("enclave --skip-all " + "--skip-all-documents " * 12, True),
        ("It is a device that is used to manage the internet. " * 6, True),
        ("Use the json module to encode and decode JSON [1]. It reads and writes files too [2].", False),
        ("Options: -a all, -b bytes, -c count, -d delimiter, -e escape, -f fields, -g group, -h help, -i ignore, "
         "-j join, -k keep, -l lines, -m mode, -n number.", False),
    ],
)
def test_a_loop_is_degenerate_and_a_list_is_not(text: str, loops: bool) -> None:
    assert degenerate(text, "length") is loops
    assert degenerate("short", "repetition")  # the engine's own loop guard said so


def test_wilson_interval_holds_the_share() -> None:
    low, high = wilson(45, 50)
    assert low < 0.9 < high and low >= 0 and high <= 1
    assert wilson(0, 0) == (0.0, 0.0)


def test_paired_comparison_sees_a_clear_difference_and_not_noise() -> None:
    ours = {f"q{i}": {"names_entity": True} for i in range(60)}
    theirs = {f"q{i}": {"names_entity": i % 2 == 0} for i in range(60)}
    clear = paired(ours, theirs, ["names_entity"])["names_entity"]
    assert clear["difference"] == 0.5 and not clear["within_noise"] and clear["ci95"][0] > 0.3
    same = paired(ours, ours, ["names_entity"])["names_entity"]
    assert same["difference"] == 0 and same["within_noise"]


def test_spread_picks_the_same_evenly_spaced_items() -> None:
    items = [{"i": i} for i in range(100)]
    assert spread(items, 4) == [{"i": 0}, {"i": 25}, {"i": 50}, {"i": 75}] and spread(items, 200) == items


def test_sentences_keep_their_citations_and_spans() -> None:
    text = "Use the json module [1]. It encodes data. [2] Also see pickle [1, 3].\nDone"
    sentences = split_sentences(text)
    assert [s.cited for s in sentences] == [[1], [2], [1, 3], []]
    assert all(text[s.start : s.end] == s.text for s in sentences)
    assert citations_in("see [2] and [3, 4]") == [2, 3, 4]


def test_support_favours_the_passage_that_says_it() -> None:
    passages = [
        "json — JSON encoder and decoder. The json module encodes Python objects as JSON text and decodes them.",
        "tarfile — Read and write tar archive files, including those using gzip compression.",
    ]

    def embed(texts: list[str]) -> list[list[float]]:  # a bag of content words: enough to rank two passages
        vocab = sorted({w for t in texts for w in t.lower().split()})
        return [[float(w in t.lower().split()) for w in vocab] for t in texts]

    answer = "The json module encodes and decodes JSON [1]. Use tarfile for tar archives [1]."
    grounded = ground(answer, passages, embed)
    assert grounded[0].best == 1 and grounded[0].supported_by_citation
    assert grounded[1].best == 2 and grounded[1].cited_support < grounded[1].support[1]  # cites the wrong one
    assert lexical_support("nothing here matches", passages[0]) == 0.0


def test_grounding_reuses_the_passages_stored_vectors() -> None:
    passages = ["json — JSON encoder and decoder.", "tarfile — Read and write tar archive files."]
    vocab = sorted({w for t in [*passages, "Use tarfile for tar archives."] for w in t.lower().split()})
    asked: list[str] = []

    def embed(texts: list[str]) -> list[list[float]]:
        asked.extend(texts)
        return [[float(w in t.lower().split()) for w in vocab] for t in texts]

    answer = "Use tarfile for tar archives [2]."
    stored = embed(passages)
    asked.clear()
    again = ground(answer, passages, embed)
    assert len(asked) == 3  # the sentence and both passages
    asked.clear()
    reused = ground(answer, passages, embed, stored)
    assert len(asked) == 1  # the sentence only: the passages' vectors came from the knowledge base
    assert [g.support for g in reused] == [g.support for g in again]
    asked.clear()
    ground(answer, passages, embed, [stored[0], None])  # one vector missing: all are embedded, as before
    assert len(asked) == 3
