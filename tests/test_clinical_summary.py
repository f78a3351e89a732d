"""Structured and free-text summaries: items linked to spans, names checked against entities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import spacy

from spacy_medllm.cli import main
from spacy_medllm.clinical.entities import docs_from_records
from spacy_medllm.clinical.summary import (
    check_summary,
    lexicon_detector,
    llm_summaries,
    structured_summary,
    summarize,
    summary_names,
    summary_prompt,
    template_summary,
    ungrounded_names,
)

ROOT = Path(__file__).resolve().parent.parent
TEXT = "Started metformin; has nausea and nausea at night. No rash. Mother had gout. CT done."
ENTITIES = [
    ("metformin", "DRUG", "present"),
    ("nausea", "ADVERSE_EVENT", "present"),
    ("nausea", "ADVERSE_EVENT", "present"),
    ("rash", "ADVERSE_EVENT", "negated"),
    ("gout", "DISEASE", "family"),
    ("CT", "PROCEDURE", "present"),
]


def make_doc(text: str = TEXT, entities=ENTITIES):
    found, pos = [], 0
    for mention, label, status in entities:
        start = text.index(mention, pos)
        pos = start + len(mention)
        found.append({"start": start, "end": pos, "label": label, "status": status})
    return next(
        docs_from_records(spacy.blank("en"), [{"id": "d1", "text": text, "entities": found}])
    )


# Drugs and events a checker knows: the Doc's and others it must not accept.
DETECTOR = lexicon_detector(
    [
        ("metformin", "DRUG"),
        ("warfarin", "DRUG"),
        ("nausea", "ADVERSE_EVENT"),
        ("rash", "ADVERSE_EVENT"),
        ("severe nausea", "ADVERSE_EVENT"),
        ("bleeding", "ADVERSE_EVENT"),
    ]
)


def test_the_structured_summary_groups_items_and_links_their_spans() -> None:
    structured = structured_summary(make_doc())
    assert list(structured) == ["medications", "adverse_events", "diseases", "procedures"]
    nausea = structured["adverse_events"]["present"][0]
    assert nausea["text"] == "nausea" and nausea["spans"] == [[23, 29], [34, 40]]
    assert summary_names(structured) == {
        "medications": {"present": ["metformin"]},
        "adverse_events": {"present": ["nausea"], "negated": ["rash"]},
        "diseases": {"family": ["gout"]},
        "procedures": {"present": ["CT"]},
    }
    assert template_summary(structured) == (
        "Medications: metformin. Adverse events: nausea. No rash. Family history: gout. "
        "Procedures: CT."
    )
    other = make_doc("Took 5 mg of aspirin.", [("5 mg", "DOSAGE", "present")])
    assert summary_names(structured_summary(other)) == {"other:DOSAGE": {"present": ["5 mg"]}}
    assert template_summary(structured_summary(other)) == "Dosage (present): 5 mg."
    assert template_summary({}).startswith("No medications, adverse events")


def test_names_are_grounded_by_the_docs_entities() -> None:
    doc = make_doc()
    # "severe nausea" contains the entity "nausea": grounded; warfarin and bleeding are not
    summary = "On metformin with severe nausea. Warfarin caused bleeding."
    assert [(n["text"], n["label"]) for n in ungrounded_names(summary, doc, DETECTOR)] == [
        ("Warfarin", "DRUG"),
        ("bleeding", "ADVERSE_EVENT"),
    ]
    removed = check_summary(f"Summary: {summary}", doc, DETECTOR)
    assert removed.text == "On metformin with severe nausea." and removed.source == "llm_edited"
    assert removed.removed == ["Warfarin caused bleeding."] and len(removed.ungrounded) == 2
    rejected = check_summary(summary, doc, DETECTOR, on_ungrounded="reject")
    assert rejected.source == "template_fallback" and rejected.text.startswith("Medications:")
    assert check_summary("Warfarin caused bleeding.", doc, DETECTOR).source == "template_fallback"
    clean = check_summary("<think>hm</think> Nausea on metformin; no rash.", doc, DETECTOR)
    assert (clean.text, clean.source, clean.ungrounded) == (
        "Nausea on metformin; no rash.",
        "llm",
        [],
    )
    # a spaCy pipeline is a detector too
    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "DRUG", "pattern": "warfarin"}])
    assert ungrounded_names("warfarin", doc, nlp)[0]["text"] == "warfarin"


def test_llm_summaries_prompt_with_the_items_and_check_the_answers() -> None:
    docs = [make_doc(), make_doc()]
    prompts = []

    def generator(batch):
        prompts.extend(batch)
        return ["Metformin gave nausea. Also warfarin.", "Nausea on metformin."]

    results = llm_summaries(docs, generator, DETECTOR)
    assert [r.source for r in results] == ["llm_edited", "llm"]
    assert results[0].text == "Metformin gave nausea." and results[0].response.endswith("warfarin.")
    assert prompts[0] == summary_prompt(docs[0])
    assert (
        "Medications: metformin." in prompts[0][1]["content"] and TEXT in prompts[0][1]["content"]
    )
    assert summarize(docs[0])["summary"]["source"] == "template"
    with pytest.raises(ValueError, match="pass a detector"):
        summarize(docs[0], generator=generator)


def test_the_cli_summarizes_records_and_writes_a_page(tmp_path, capsys) -> None:
    source = ROOT / "corpus" / "summaries" / "summaries.jsonl"
    records = tmp_path / "three.jsonl"
    records.write_text("".join(source.read_text().splitlines(keepends=True)[:3]))
    output, page = tmp_path / "summaries.jsonl", tmp_path / "summaries.html"
    args = ["summarize", "-i", str(records), "-o", str(output), "--html", str(page)]
    assert main([*args, "--no-context"]) == 0
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["sum-001", "sum-002", "sum-003"]
    assert lines[0]["summary"] == {
        "text": "Medications: metformin and ramipril. Adverse events: diarrhoea and bloating. "
        "No hypoglycaemia. Conditions: type 2 diabetes and hypertension. Procedures: HbA1c.",
        "source": "template",
        "ungrounded": [],
        "removed": [],
        "response": None,
    }
    assert lines[0]["structured"]["medications"]["present"][0]["spans"] == [[98, 107], [132, 141]]
    assert "ADVERSE_EVENT (negated)" in page.read_text()
    assert main(["summarize", "-i", str(records), "--model", "x"]) == 2
    assert "--model needs --checker or --pipeline" in capsys.readouterr().err


@pytest.mark.slow
def test_llm_summaries_from_a_real_llama_server_are_checked(llama_server) -> None:
    """SmolLM2-135M-Instruct on llama.cpp's server writes the summaries; whatever it names that
    is not an entity of the document does not survive the check."""
    from spacy_medllm.generators.registry import make_openai_generator
    from tests.servers import LLAMA_SERVER_MODEL

    rows = [json.loads(line) for line in (ROOT / "corpus/summaries/summaries.jsonl").open()][:3]
    nlp = spacy.blank("en")
    docs = list(docs_from_records(nlp, rows))
    names = {(e["text"], e["label"]) for r in rows for e in r["entities"]}
    detector = lexicon_detector([*names, ("warfarin", "DRUG"), ("headache", "ADVERSE_EVENT")])
    # generous time: the server shares two cores with whatever else runs
    generator = make_openai_generator(
        model=LLAMA_SERVER_MODEL, base_url=llama_server, max_new_tokens=96, timeout=300.0
    )
    results = llm_summaries(docs, generator, detector)
    for doc, result in zip(docs, results, strict=True):
        assert result.response is not None and result.text.strip()
        assert result.source in ("llm", "llm_edited", "template_fallback")
        assert ungrounded_names(result.text, doc, detector) == []
