"""benchmarks/seed_vote.py: votes of finished runs on the seed metric, from their report files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import seed_vote as seed_vote_module
from benchmarks.seed_vote import vote as seed_vote


def write_report(path: Path, gold: list[list[str]], predicted: list[list[str] | None]) -> Path:
    records = [
        {
            "index": i,
            "parseable": p is not None,
            "gold": [[s, "ADVERSE_EVENT"] for s in g],
            "predicted": [[s, "ADVERSE_EVENT"] for s in (p or [])],
        }
        for i, (g, p) in enumerate(zip(gold, predicted, strict=True))
    ]
    systems = [
        {"name": "llama2-adapter", "kind": "predictions", "records": records},
        {"name": "smollm2-lora", "kind": "pipeline", "records": records},
    ]
    path.write_text(json.dumps({"systems": systems}), encoding="utf8")
    return path


def test_vote_counts_runs_per_string_and_unparseable_answers_as_nothing():
    vote = seed_vote
    runs = [[{"a", "b"}, {"x"}], [{"a"}, None], [{"a", "c"}, {"x", "y"}]]
    assert vote(runs, 1) == [{"a", "b", "c"}, {"x", "y"}]
    assert vote(runs, 2) == [{"a"}, {"x"}]
    assert vote(runs, 3) == [{"a"}, set()]
    with pytest.raises(ValueError, match="between 1 and 3"):
        vote(runs, 4)


def test_needed_for_bar_matches_the_seed_gold():
    needed = seed_vote_module.needed_for_bar(174, 0.92, 0.91)
    # 158/174 = 0.908 < 0.91 <= 159/174; 159/(159+13) = 0.924 >= 0.92 > 159/(159+14)
    assert needed == {"min_tp": 159, "max_fp_at_min_tp": 13}


def test_run_scores_singles_declared_vote_search_and_union(tmp_path):
    script = seed_vote_module
    gold = [["nausea", "rash"], ["headache"]]
    a = write_report(tmp_path / "a.json", gold, [["nausea", "itch"], ["headache"]])
    b = write_report(tmp_path / "b.json", gold, [["nausea", "rash"], None])
    c = write_report(tmp_path / "c.json", gold, [["rash", "itch"], ["headache", "fever"]])
    result = script.run({"a": a, "b": b, "c": c}, ["a", "b", "c"])
    assert result["single"]["b"]["tp"] == 2 and result["single"]["b"]["fn"] == 1
    assert result["single"]["b"]["n_unparseable"] == 1
    by_k = {row["k"]: row for row in result["declared_vote"]["by_k"]}
    assert (by_k[2]["tp"], by_k[2]["fp"], by_k[2]["fn"]) == (3, 1, 0)  # "itch" twice
    assert (by_k[3]["tp"], by_k[3]["fp"]) == (0, 0)
    assert result["union_correct"] == {"tp": 3, "recall": 1.0}
    # three pairs at k = 1, 2 and the triple at k = 1, 2, 3
    assert result["search"]["n_votes"] == 9
    best = result["search"]["best_f1"]
    assert (best["tp"], best["fp"], best["fn"]) == (3, 1, 0)
    assert best["f1"] == pytest.approx(6 / 7)
    assert result["search"]["n_reaching_bar"] == 0
    assert result["search"]["best_recall_at_bar_precision"]["fp"] == 0
    assert "| a | " in script.markdown(result)


def test_run_refuses_reports_of_different_gold(tmp_path):
    script = seed_vote_module
    a = write_report(tmp_path / "a.json", [["nausea"]], [["nausea"]])
    b = write_report(tmp_path / "b.json", [["rash"]], [["rash"]])
    with pytest.raises(ValueError, match="different gold"):
        script.run({"a": a, "b": b}, ["a"])
    with pytest.raises(ValueError, match="not loaded"):
        script.run({"a": a}, ["z"])
