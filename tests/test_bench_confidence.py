"""benchmarks/confidence.py: what a confidence threshold does to strict and seed scores."""

from __future__ import annotations

import pytest
import spacy

import spacy_medllm  # noqa: F401  (registers the Doc and Span extensions)
from spacy_medllm.core.records import NOT_IN_TEXT
from spacy_medllm.pipeline.component import CONFIDENCE_ATTR


def docs_with_confidence():
    """A predicted and a gold doc: 'Abilify' right (-0.001), 'rash' wrong label (-0.5), one gold
    span missed, and an invented string rejected as not in the text (-2.0)."""
    nlp = spacy.blank("en")
    text = "Abilify gave me nausea and a rash."
    pred = nlp(text)
    pred.ents = [pred.char_span(0, 7, "DRUG"), pred.char_span(29, 33, "DRUG")]
    pred.ents[0]._.set(CONFIDENCE_ATTR, -0.001)
    pred.ents[1]._.set(CONFIDENCE_ATTR, -0.5)
    pred._.medllm = {
        "medllm_ner": {
            "chunks": [
                {
                    "confidence": [
                        {"text": "Abilify", "label": "DRUG", "confidence": -0.001},
                        {"text": "rash", "label": "DRUG", "confidence": -0.5},
                        {"text": "bad nausea", "label": "ADVERSE_EVENT", "confidence": -2.0},
                    ]
                }
            ],
            "rejected": [{"text": "bad nausea", "label": "ADVERSE_EVENT", "reason": NOT_IN_TEXT}],
        }
    }
    gold = nlp(text)
    gold.ents = [
        gold.char_span(0, 7, "DRUG"),
        gold.char_span(16, 22, "ADVERSE_EVENT"),
        gold.char_span(29, 33, "ADVERSE_EVENT"),
    ]
    return pred, gold


def test_collect_marks_spans_right_or_wrong_and_scores_invented_strings():
    from benchmarks import confidence as script

    pred, gold = docs_with_confidence()
    collected = script.collect([pred], [gold])
    assert collected["spans"] == [(-0.001, True), (-0.5, False)]
    assert collected["n_gold"] == 3
    assert collected["invented"] == [-2.0]
    assert collected["emitted"] == [[("Abilify", -0.001), ("rash", -0.5), ("bad nausea", -2.0)]]


def test_thresholds_trade_recall_for_precision_and_seed_scores_follow():
    from benchmarks import confidence as script

    pred, gold = docs_with_confidence()
    summary = script.summarise(
        script.collect([pred], [gold]), seed_gold=[{"Abilify", "nausea", "rash"}]
    )
    assert summary["roc_auc"] == 1.0
    assert summary["median_confidence"]["not_in_text"] == -2.0
    assert summary["invented_below_median_correct"] == 1.0
    none, *_, most = summary["by_drop_share"]
    assert (none["threshold"], none["n_kept"], none["precision"]) == (None, 2, 0.5)
    assert none["recall"] == pytest.approx(1 / 3)
    # seed metric on all three written strings: Abilify and rash right, "bad nausea" false
    assert (none["seed"]["tp"], none["seed"]["fp"], none["seed"]["fn"]) == (2, 1, 1)
    # 30% of two scored spans rounds to one: the wrong span goes, and with it "bad nausea"
    assert (most["threshold"], most["n_kept"], most["precision"]) == (-0.001, 1, 1.0)
    assert (most["seed"]["tp"], most["seed"]["fp"], most["seed"]["fn"]) == (1, 0, 2)
    best = summary["best_on_test"]
    assert best["threshold"] == -0.001 and best["f1"] == pytest.approx(0.5)


def test_markdown_has_seed_columns_only_with_seed_gold():
    from benchmarks import confidence as script

    pred, gold = docs_with_confidence()
    collected = script.collect([pred], [gold])
    report = {
        "corpus": "toy",
        "pipeline": "p",
        "n_docs": 1,
        "seconds": 1.0,
        "machine": {"cpus_available": 2},
        "command": "c",
    }
    plain = script.markdown({**report, "summary": script.summarise(collected)})
    seeded = script.markdown(
        {**report, "summary": script.summarise(collected, [{"Abilify", "nausea", "rash"}])}
    )
    assert "Seed P / R / F1" not in plain and "Seed P / R / F1" in seeded
    assert "| least confident 30% | -0.001 | 1 | 1.000 |" in plain
