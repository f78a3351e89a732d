"""benchmarks/assertion.py, search.py and summaries.py: their scoring, on small inputs."""

from __future__ import annotations

import json

import pytest
import spacy
from spacy.util import registry

from benchmarks import assertion, search, summaries
from tests.scripted import ScriptedGenerator

pytest.importorskip("medspacy")

RECORDS = [
    {
        "id": "r1",
        "text": "No rash after amoxicillin.",
        "entities": [
            {"start": 3, "end": 7, "label": "ADVERSE_EVENT", "text": "rash", "status": "negated"},
            {"start": 14, "end": 25, "label": "DRUG", "text": "amoxicillin", "status": "present"},
        ],
    },
    {
        "id": "r2",
        "text": "Her mother had a rash.",
        "entities": [
            {"start": 17, "end": 21, "label": "ADVERSE_EVENT", "text": "rash", "status": "family"}
        ],
    },
]


def test_score_counts_per_status_and_collapses_what_a_set_cannot_tell() -> None:
    pairs = [("negated", "negated"), ("negated", "present"), ("present", "negated")]
    pairs += [("family", "family")]
    row = assertion.score(pairs)
    assert row["accuracy"] == 0.5 and row["n"] == 4
    assert row["per_status"]["negated"] == {
        "n": 2,
        "n_predicted": 2,
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
    }
    assert row["per_status"]["family"]["f1"] == 1.0 and row["per_status"]["historical"]["n"] == 0
    assert row["confusion"]["negated->present"] == 1
    assert assertion.scored_status("uncertain") == "hypothetical"
    assert assertion.scored_status("family", three_statuses=True) == "present"
    assert assertion.scored_status("family") == "family"


def test_context_settings_predict_on_gold_entities() -> None:
    plain = assertion.predict(*reversed(assertion.context_process("medspacy")), RECORDS)
    ours = assertion.predict(*reversed(assertion.context_process("medllm")), RECORDS)
    assert [p for _, _, p in plain] == ["negated", "negated", "family"]
    assert [p for _, _, p in ours] == ["negated", "present", "family"]
    results = assertion.run({"tiny": RECORDS}, {"medllm": assertion.context_process("medllm")})
    assert (
        results["tiny"]["medllm"]["accuracy"] == 1.0 and results["tiny"]["medllm"]["errors"] == []
    )
    sets = assertion.assertion_sets()
    assert len(sets["assertion-dev"]) == 112 and len(sets["assertion-test"]) == 40
    oos = assertion.out_of_style_set()
    assert sum(e["status"] == "negated" for r in oos for e in r["entities"]) == 11


@registry.misc("test.ScriptedStatusGenerator.v1")
def make_status_generator(statuses: dict[str, str]) -> ScriptedGenerator:
    """Answers each listed string found in the text with the status given for it."""

    def answer(text: str) -> str:
        found = sorted((text.find(t), t) for t in statuses if t in text)
        label = {"amoxicillin": "DRUG"}
        return json.dumps(
            [
                {"text": t, "label": label.get(t, "ADVERSE_EVENT"), "status": statuses[t]}
                for _, t in found
            ]
        )

    return ScriptedGenerator(answer)


def test_the_model_setting_reads_statuses_from_a_saved_pipeline(tmp_path) -> None:
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "medllm_ner",
        config={
            "generator": {
                "@misc": "test.ScriptedStatusGenerator.v1",
                "statuses": {"rash": "historical", "amoxicillin": "present"},
            }
        },
    )
    nlp.to_disk(tmp_path / "model")
    model = assertion.model_process(tmp_path / "model", with_context=False)
    predicted = assertion.predict(*reversed(model), RECORDS)
    # the model's statuses land on the gold entities ("rash" twice: both historical)
    assert [p for _, _, p in predicted] == ["historical", "present", "historical"]
    both = assertion.model_process(tmp_path / "model", with_context=True)
    assert [p for _, _, p in assertion.predict(*reversed(both), RECORDS)] == [
        "historical",
        "present",
        "historical",
    ]


def test_the_search_benchmark_checks_every_count(tmp_path) -> None:
    result = search.run(n=30, repeats=2)
    assert result["n_texts"] == 30 and result["stats"]["documents"] == 30
    assert all(q["verified"] for q in result["queries"]), result["queries"]
    assert any(q["documents"] for q in result["queries"])
    assert result["build_seconds"] > 0 and result["queries"][0]["median_ms"] > 0
    page = search.markdown({"results": result, "machine": {}, "command": "x"})
    assert "| Query | Documents | Checked |" in page and "NO" not in page.split("| Query")[1]


def test_the_summary_benchmark_scores_items_and_leads() -> None:
    reference = {"medications": {"present": ["Metformin"]}, "adverse_events": {"negated": ["rash"]}}
    predicted = {"medications": {"present": ["metformin"]}, "adverse_events": {"present": ["rash"]}}
    scores = summaries.structured_scores([predicted], [reference])
    assert scores["items"]["f1"] == 0.5 and scores["items_without_status"]["f1"] == 1.0
    assert summaries.lead("One. Two? Three.") == "One. Two?"
    names = summaries.checker_names()
    assert ("metformin", "DRUG") in names and ("can't stop yawning", "ADVERSE_EVENT") in names
