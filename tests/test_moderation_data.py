"""The committed public moderation data (enclave/moderation/data/public, from bench.moderation_data): valid labels,
every category in both splits, no text in both, nothing from garak. Reads the files only: no network, no rebuild."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bench.moderation_data import CATEGORIES, OUT, norm

# Fewer than 10 rows in the eval split, because the eval sources hold no more of them (see SOURCES.md):
# HarmBench has 9 behaviours about sexual content and sex crimes, guardmeter and redharness none.
THIN = {("eval", "sexual"): 9}


def rows(split: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (OUT / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict[str, str]]]:
    return {split: rows(split) for split in ("train", "eval")}


def test_rows_are_well_formed(splits: dict[str, list[dict[str, str]]]) -> None:
    for split, data in splits.items():
        assert data, split
        for r in data:
            assert set(r) == {"text", "label", "source"}, r
            assert r["label"] in CATEGORIES, r
            assert r["text"].strip() and len(r["text"]) <= 8000, r["source"]


def test_every_category_in_both_splits(splits: dict[str, list[dict[str, str]]]) -> None:
    for split, data in splits.items():
        counts = Counter(r["label"] for r in data)
        for label in CATEGORIES:
            assert counts[label] >= THIN.get((split, label), 10), (split, label, counts[label])


def test_no_text_in_both_splits(splits: dict[str, list[dict[str, str]]]) -> None:
    train = {norm(r["text"]) for r in splits["train"]}
    shared = [r["text"][:80] for r in splits["eval"] if norm(r["text"]) in train]
    assert not shared


def test_splits_share_no_source(splits: dict[str, list[dict[str, str]]]) -> None:
    # FreshQA is the one source in both: its first half trains, its second half evaluates
    train, eval_ = ({r["source"] for r in data} for data in splits.values())
    assert train & eval_ == {"inspect-evals/freshqa"}


def test_nothing_from_garak(splits: dict[str, list[dict[str, str]]]) -> None:
    for data in splits.values():
        assert not [r for r in data if "garak" in r["source"].lower()]
