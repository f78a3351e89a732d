"""ConText after medllm_ner (real medspaCy), the "medllm" rules, statuses, and medllm_assertion."""

from __future__ import annotations

import json

import pytest
import spacy
from spacy.tokens import DocBin

import spacy_medllm.clinical  # noqa: F401  (registers medllm_context and medllm_assertion)
from spacy_medllm.clinical import add_context, set_status, status_of
from spacy_medllm.clinical.assertion import (
    ASSERTION_INSTRUCTION,
    read_statuses,
    status_answer,
)
from spacy_medllm.clinical.entities import drop_context_graph, entity_records, normalise
from spacy_medllm.core.labels import LabelSet
from spacy_medllm.core.parsing import parse_response
from tests.scripted import ScriptedGenerator, lexicon_answer

pytest.importorskip("medspacy")

LEXICON = {
    "Lexapro": "DRUG",
    "amoxicillin": "DRUG",
    "chest pain": "ADVERSE_EVENT",
    "nausea": "ADVERSE_EVENT",
    "rash": "ADVERSE_EVENT",
    "fever": "ADVERSE_EVENT",
    "diabetes": "DISEASE",
}


def medllm_nlp(answer=None, **config):
    """A blank English pipeline with medllm_ner answering from a script (no model)."""
    nlp = spacy.blank("en")
    config.setdefault("generator", {"@misc": "test.ScriptedLexiconGenerator.v1", "lexicon": {}})
    component = nlp.add_pipe("medllm_ner", config=config)
    component.generator = ScriptedGenerator(answer or lexicon_answer(LEXICON))
    return nlp


def statuses(doc):
    return [(e.text, status_of(e)) for e in doc.ents]


@pytest.mark.parametrize("rules", ["medspacy", "medllm"])
def test_context_composes_with_medllm_ner(rules) -> None:
    nlp = medllm_nlp()
    add_context(nlp, rules=rules)
    # ConText's scope is the sentence: a sentencizer comes first when nothing sets sentences
    assert nlp.pipe_names == ["medllm_ner", "context_sentencizer", "context"]
    doc = nlp("Patient denies chest pain. Her mother had diabetes. She has nausea on Lexapro.")
    assert statuses(doc) == [
        ("chest pain", "negated"),
        ("diabetes", "family"),
        ("nausea", "present"),
        ("Lexapro", "present"),
    ]
    assert doc.ents[0]._.is_negated and not doc.ents[2]._.is_negated
    assert doc.ents[1]._.is_family


def test_medspacy_rules_negate_the_drug_and_medllm_rules_do_not() -> None:
    text = "No rash or fever after the second course of amoxicillin."
    plain, ours = medllm_nlp(), medllm_nlp()
    add_context(plain, rules="medspacy")
    add_context(ours)
    assert statuses(plain(text))[-1] == ("amoxicillin", "negated")
    assert statuses(ours(text)) == [
        ("rash", "negated"),
        ("fever", "negated"),
        ("amoxicillin", "present"),
    ]
    # ... but a cue about taking the drug still reaches it, across "taking any"
    assert statuses(ours("She denies taking any Lexapro."))[0] == ("Lexapro", "negated")
    assert statuses(ours("She has never taken amoxicillin."))[0] == ("amoxicillin", "negated")


def test_medllm_rules_read_past_and_hypothetical_cues() -> None:
    nlp = medllm_nlp()
    add_context(nlp)
    assert statuses(nlp("Previously treated with amoxicillin, which caused a rash.")) == [
        ("amoxicillin", "historical"),
        ("rash", "historical"),
    ]
    assert statuses(nlp("In 2019 she took Lexapro.")) == [("Lexapro", "historical")]
    assert statuses(nlp("Lexapro may cause nausea.")) == [
        ("Lexapro", "present"),
        ("nausea", "hypothetical"),
    ]
    # "because" ends the negation, not the history
    doc = nlp("She was previously on Lexapro and stopped it because of nausea.")
    assert statuses(doc) == [("Lexapro", "historical"), ("nausea", "historical")]
    doc = nlp("He did not take Lexapro because of nausea.")
    assert statuses(doc) == [("Lexapro", "negated"), ("nausea", "present")]


def test_context_reads_a_span_group_and_an_existing_sentencizer() -> None:
    nlp = medllm_nlp(output="spans", spans_key="found")
    nlp.add_pipe("sentencizer", first=True)
    add_context(nlp, spans_key="found")
    assert nlp.pipe_names == ["sentencizer", "medllm_ner", "context"]
    doc = nlp("No fever today. A rash since Lexapro.")
    assert [(s.text, status_of(s)) for s in doc.spans["found"]] == [
        ("fever", "negated"),
        ("rash", "present"),
        ("Lexapro", "present"),
    ]
    assert entity_records(doc, "found")[0] == {
        "start": 3,
        "end": 8,
        "label": "ADVERSE_EVENT",
        "text": "fever",
        "norm": "fever",
        "status": "negated",
        "attributes": {"is_negated": True},
    }


def test_a_saved_pipeline_rebuilds_the_rules_and_docs_go_into_a_docbin(tmp_path) -> None:
    nlp = medllm_nlp()
    add_context(nlp)
    nlp.to_disk(tmp_path / "pipeline")
    config = (tmp_path / "pipeline" / "config.cfg").read_text()
    assert 'factory = "medllm_context"' in config and 'rules = "medllm"' in config
    loaded = spacy.load(tmp_path / "pipeline")
    loaded.get_pipe("medllm_ner").generator = ScriptedGenerator(lexicon_answer(LEXICON))
    doc = loaded("No rash after amoxicillin.")
    assert statuses(doc) == [("rash", "negated"), ("amoxicillin", "present")]
    # medspaCy's graph objects cannot be written by msgpack; the attributes can
    with pytest.raises(TypeError):
        DocBin(store_user_data=True, docs=[doc]).to_bytes()
    data = DocBin(store_user_data=True, docs=[drop_context_graph(doc)]).to_bytes()
    again = next(DocBin().from_bytes(data).get_docs(loaded.vocab))
    assert statuses(again) == [("rash", "negated"), ("amoxicillin", "present")]


def test_status_precedence_and_set_status() -> None:
    nlp = spacy.blank("en")
    doc = nlp("no family history of diabetes")
    span = doc.char_span(21, 29, "DISEASE")
    assert status_of(span) == "present"
    span._.is_family = True
    span._.is_negated = True
    assert status_of(span) == "negated"  # negated before family
    set_status(span, "historical")
    assert status_of(span) == "historical" and not span._.is_negated and not span._.is_family
    set_status(span, "family", combine="union")
    assert status_of(span) == "family" and span._.is_historical
    set_status(span, "present")
    assert not any(span._.get(a) for a in ("is_family", "is_historical"))
    with pytest.raises(ValueError, match="unknown status"):
        set_status(span, "maybe")
    assert normalise("  LEXAPRO, ") == "lexapro" and normalise("Chest\n pain.") == "chest pain"


# -- medllm_assertion -------------------------------------------------------------------------


def status_answer_for(statuses_by_text):
    """A scripted model that writes the status of each lexicon entity it finds."""

    def answer(text: str) -> str:
        found = sorted((text.find(t), t, label) for t, label in LEXICON.items() if t in text)
        return json.dumps(
            [
                {"text": t, "label": label, "status": statuses_by_text.get(t, "present")}
                for _, t, label in found
            ]
        )

    return answer


def test_the_assertion_answer_reads_back_and_medllm_ner_still_parses_it() -> None:
    answer = status_answer(
        [
            {"text": "rash", "label": "ADVERSE_EVENT", "status": "negated"},
            {"text": "Lexapro", "label": "DRUG", "status": "present"},
            {"text": "rash", "label": "ADVERSE_EVENT", "status": "negated"},
        ]
    )
    assert json.loads(answer) == [
        {"text": "rash", "label": "ADVERSE_EVENT", "status": "negated"},
        {"text": "Lexapro", "label": "DRUG", "status": "present"},
    ]
    parsed = parse_response(answer, LabelSet(["DRUG", "ADVERSE_EVENT"]))
    assert [(e.text, e.label) for e in parsed.entities] == [
        ("rash", "ADVERSE_EVENT"),
        ("Lexapro", "DRUG"),
    ]
    assert [(s.text, s.status) for s in read_statuses(answer)] == [
        ("rash", "negated"),
        ("Lexapro", "present"),
    ]
    # sloppy answers: prose, single quotes, aliases, a truncated tail, no status, a bad status
    sloppy = (
        "Here you go: [{'entity': 'fever', 'type': 'ADE', 'assertion': 'Absent'}, "
        '{"text": "nausea", "status": "maybe"}, {"text": "rash"}, '
        '{"text": "diabetes", "label": "DISEASE", "status": "family hist'
    )
    assert [(s.text, s.label, s.status) for s in read_statuses(sloppy)] == [
        ("fever", "ADE", "negated")
    ]
    assert read_statuses("no JSON at all") == [] and read_statuses(None) == []
    assert '"status": ...' in ASSERTION_INSTRUCTION and "{label_lines}" in ASSERTION_INSTRUCTION


def test_medllm_assertion_sets_the_attributes_from_the_model_answer() -> None:
    nlp = medllm_nlp(
        status_answer_for({"chest pain": "negated", "diabetes": "family", "Lexapro": "present"}),
        save_io=True,
    )
    nlp.add_pipe("medllm_assertion")
    doc = nlp("Denies chest pain. Mother had diabetes. Then nausea and chest pain on Lexapro.")
    # the second "chest pain" was not stated again: it takes the string's last status
    assert statuses(doc) == [
        ("chest pain", "negated"),
        ("diabetes", "family"),
        ("nausea", "present"),
        ("chest pain", "negated"),
        ("Lexapro", "present"),
    ]
    record = doc._.medllm["medllm_assertion"]
    assert record["n_statuses"] == 4 and record["n_set"] == 5 and record["unmatched"] == []


def test_medllm_assertion_after_context_replaces_or_adds() -> None:
    model = status_answer_for({"rash": "historical"})
    text = "No rash after amoxicillin."
    for combine, expected in (("replace", "historical"), ("union", "negated")):
        nlp = medllm_nlp(model, save_io=True)
        add_context(nlp)
        nlp.add_pipe("medllm_assertion", config={"combine": combine})
        doc = nlp(text)
        assert status_of(doc.ents[0]) == expected, combine
        assert doc.ents[0]._.is_historical
    # without save_io there is nothing to read: ConText's statuses stay, and the record says why
    nlp = medllm_nlp(model)
    add_context(nlp)
    nlp.add_pipe("medllm_assertion")
    doc = nlp(text)
    assert status_of(doc.ents[0]) == "negated"
    assert doc._.medllm["medllm_assertion"]["missing_io"] is True
    with pytest.raises(ValueError, match="combine"):
        nlp.add_pipe("medllm_assertion", name="bad", config={"combine": "vote"})


def test_medllm_assertion_records_what_it_could_not_place() -> None:
    def answer(text: str) -> str:
        return json.dumps(
            [
                {"text": "rash", "label": "ADVERSE_EVENT", "status": "negated"},
                {"text": "headache", "label": "ADVERSE_EVENT", "status": "negated"},
                {"text": "rash", "label": "DRUG", "status": "family"},
            ]
        )

    nlp = medllm_nlp(answer, save_io=True)
    nlp.add_pipe("medllm_assertion")
    doc = nlp("A rash today.")
    assert statuses(doc) == [("rash", "negated")]
    record = doc._.medllm["medllm_assertion"]
    # "headache" is not in the text (medllm_ner rejected it); a DRUG "rash" is not an entity
    assert [u["text"] for u in record["unmatched"]] == ["headache", "rash"]
    assert record["n_set"] == 1
