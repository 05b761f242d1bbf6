"""bench.retrieval's question-by-question comparison of two runs (the judge of "within noise")."""

from __future__ import annotations

import pytest

from bench.retrieval import paired, score_rank


def test_a_question_scores_from_the_rank_of_its_page() -> None:
    assert score_rank(1) == {"hit@1": 1.0, "hit@5": 1.0, "mrr": 1.0, "ndcg@10": 1.0}
    assert score_rank(3)["hit@5"] == 1.0 and score_rank(3)["ndcg@10"] == pytest.approx(0.5)
    assert score_rank(11)["ndcg@10"] == 0.0 and score_rank(11)["mrr"] == pytest.approx(1 / 11)
    assert score_rank(None) == {"hit@1": 0.0, "hit@5": 0.0, "mrr": 0.0, "ndcg@10": 0.0}


def test_two_runs_that_rank_alike_are_within_noise() -> None:
    theirs: dict[str, int | None] = {f"m{i}": 1 + i % 7 for i in range(200)}
    ours = dict(theirs)
    for i in range(0, 200, 25):  # 8 of 200 questions move: 4 from rank 3 down to 5, 4 from rank 3 up to 1
        theirs[f"m{i}"], ours[f"m{i}"] = 3, (5 if i % 50 else 1)
    p = paired(ours, theirs)
    assert p["questions"] == 200 and p["ranked_better"] == 4 and p["ranked_worse"] == 4
    assert p["ndcg@10"]["within_noise"] and p["hit@5"]["within_noise"]
    low, high = p["ndcg@10"]["ci95"]
    assert low < p["ndcg@10"]["difference"] < high and low < 0 < high
    same = paired(theirs, theirs)
    assert same["ndcg@10"] == {"difference": 0.0, "ci95": [0.0, 0.0], "within_noise": True}
    assert same["ranked_better"] == same["ranked_worse"] == 0


def test_a_run_that_ranks_worse_is_beyond_noise() -> None:
    theirs: dict[str, int | None] = {f"m{i}": 1 for i in range(100)}
    ours: dict[str, int | None] = {f"m{i}": (None if i % 3 == 0 else 1) for i in range(100)}
    ours["only-ours"] = 1  # questions one run lacks are left out
    p = paired(ours, theirs)
    assert p["questions"] == 100 and p["ranked_worse"] == 34 and p["ranked_better"] == 0
    assert p["ndcg@10"]["difference"] == pytest.approx(-0.34)
    assert not p["ndcg@10"]["within_noise"] and p["ndcg@10"]["ci95"][1] < 0
    with pytest.raises(ValueError, match="no question"):
        paired({"a": 1}, {"b": 1})
