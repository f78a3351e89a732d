"""The SQLite FTS5 search index: queries against answers counted by hand on a small fixture."""

from __future__ import annotations

import json
import sqlite3

import pytest
import spacy
from spacy.tokens import DocBin

from spacy_medllm.cli import main
from spacy_medllm.clinical.entities import docs_from_records
from spacy_medllm.clinical.query import QueryError, parse_query
from spacy_medllm.clinical.search import ClinicalIndex, build_index

D, A, X = "DRUG", "ADVERSE_EVENT", "DISEASE"

# (key, text, [(mention, label, status)]): every mention is found in the text, left to right.
FIXTURE = [
    ("n1", "Started Lexapro in May; now has nausea and insomnia.", [
        ("Lexapro", D, "present"), ("nausea", A, "present"), ("insomnia", A, "present")]),
    ("n2", "No nausea on lexapro.", [("nausea", A, "negated"), ("lexapro", D, "present")]),
    ("n3", "Sertraline caused chest pain. No rash.", [
        ("Sertraline", D, "present"), ("chest pain", A, "present"), ("rash", A, "negated")]),
    ("n4", "Her mother took Lexapro and had a rash.", [
        ("Lexapro", D, "family"), ("rash", A, "family")]),
    ("n5", "LEXAPRO, then dizziness. Chest pain denied.", [
        ("LEXAPRO", D, "present"), ("dizziness", A, "present"), ("Chest pain", A, "negated")]),
    ("n6", "Diabetes and hypertension; metformin since 2019.", [
        ("Diabetes", X, "present"), ("hypertension", X, "present"), ("metformin", D, "present")]),
    ("n7", "Metformin may cause diarrhoea.", [
        ("Metformin", D, "present"), ("diarrhoea", A, "hypothetical")]),
    ("n8", "Follow-up visit, nothing to report.", []),
]  # fmt: skip

# Hand-counted answers.
ANSWERS = {
    'label=ADVERSE_EVENT drug="Lexapro" status=present': ["n1", "n5"],
    "label=ADVERSE_EVENT status!=negated drug=lexapro": ["n1", "n4", "n5"],
    "label=ADVERSE_EVENT status=negated": ["n2", "n3", "n5"],
    "label=adverse_event status=negated,family": ["n2", "n3", "n4", "n5"],
    "text~pain": ["n3", "n5"],
    'text="chest pain" status=present': ["n3"],
    'text="CHEST PAIN."': ["n3", "n5"],
    "drug=metformin": ["n6", "n7"],
    "drug=metformin adverse_event~diarrhoea": ["n7"],
    "label=DRUG drug!=lexapro": ["n3", "n6", "n7"],
    "label=drug": ["n1", "n2", "n3", "n4", "n5", "n6", "n7"],
    "insomnia": ["n1"],
    '"chest pain"': ["n3", "n5"],
    '"chest pain" status=negated': ["n3", "n5"],
    "nothing report": ["n8"],
    "label=DISEASE,DRUG status=historical": [],
    "Disease=diabetes label=DRUG status=present": ["n6"],
}


def fixture_records() -> list[dict]:
    records = []
    for key, text, mentions in FIXTURE:
        entities, pos = [], 0
        for mention, label, status in mentions:
            start = text.index(mention, pos)
            pos = start + len(mention)
            entities.append({"start": start, "end": pos, "label": label, "status": status})
        records.append({"id": key, "text": text, "entities": entities})
    return records


@pytest.fixture()
def index(tmp_path):
    nlp = spacy.blank("en")
    path = tmp_path / "notes.sqlite"
    stats = build_index(path, docs_from_records(nlp, fixture_records()))
    assert stats["documents"] == 8 and stats["entities"] == 18
    store = ClinicalIndex(path)
    yield store
    store.close()


@pytest.mark.parametrize("query", list(ANSWERS))
def test_queries_find_the_hand_counted_documents(index, query) -> None:
    results = index.search(query)
    assert [hit.key for hit in results.hits] == ANSWERS[query]
    assert results.total == len(ANSWERS[query]) == index.count(query)


def test_a_hit_says_what_matched(index) -> None:
    results = index.search('label=ADVERSE_EVENT drug="Lexapro" status=present')
    first = results.hits[0]
    assert [(m["text"], m["role"], m["status"]) for m in first.matches] == [
        ("Lexapro", "also", "present"),
        ("nausea", "focus", "present"),
        ("insomnia", "focus", "present"),
    ]
    assert len(first.entities) == 3 and first.data == {}
    phrase = index.search('"chest pain" status=negated').hits[1]
    assert [(m["text"], m["role"]) for m in phrase.matches] == [
        ("Chest pain", "focus"),
        ("Chest pain", "phrase"),
    ]
    page = index.search("label=DRUG status=family").to_html(all_entities=True)
    assert page.startswith("<!DOCTYPE html>") and "n4" in page
    assert "DRUG (family)" in page and "ADVERSE_EVENT (family)" in page and "<mark" in page
    assert index.search("label=DRUG", limit=2, offset=6).total == 7
    assert [h.key for h in index.search("label=DRUG", limit=2, offset=5).hits] == ["n6", "n7"]


@pytest.mark.parametrize(
    "query, message",
    [
        ("dose=5", "unknown field 'dose'"),
        ("status=maybe", "unknown status 'maybe'"),
        ("label~DRUG", "takes = or !=, not ~"),
        ('drug="Lex', "unclosed quote"),
        ("drug=", "drug= has no value"),
    ],
)
def test_bad_queries_say_what_is_wrong(index, query, message) -> None:
    with pytest.raises(QueryError, match=message):
        index.search(query)


def test_parse_query_splits_focus_other_and_phrases() -> None:
    query = parse_query('label=ADVERSE_EVENT drug="St John\'s wort" status!=negated "dry mouth"')
    assert [(c.field, c.op, c.values) for c in query.focus] == [
        ("label", "=", ("ADVERSE_EVENT",)),
        ("status", "!=", ("negated",)),
    ]
    assert [(c.field, c.values) for c in query.others] == [("drug", ("St John's wort",))]
    assert query.phrases == ["dry mouth"] and parse_query("  ").empty


def test_adding_a_key_again_replaces_the_document_and_its_full_text(index) -> None:
    nlp = spacy.blank("en")
    record = {"id": "n2", "text": "Rash on amoxicillin.", "entities": [
        {"start": 0, "end": 4, "label": A, "status": "present"},
        {"start": 8, "end": 19, "label": D, "status": "present"}]}  # fmt: skip
    assert index.add(docs_from_records(nlp, [record])) == 1
    assert index.stats()["documents"] == 8 and index.stats()["entities"] == 18
    assert index.count('"no nausea"') == 0 and index.count("amoxicillin") == 1
    assert [h.key for h in index.search("drug=amoxicillin label=ADVERSE_EVENT").hits] == ["n2"]
    # the FTS tables agree with their content tables (SQLite's own check)
    index.connection.execute("INSERT INTO documents_fts(documents_fts) VALUES('integrity-check')")
    index.connection.execute("INSERT INTO entities_fts(entities_fts) VALUES('integrity-check')")


def test_an_index_from_a_docbin_and_from_a_contextualised_pipeline(tmp_path) -> None:
    pytest.importorskip("medspacy")
    from spacy_medllm.clinical import add_context
    from spacy_medllm.clinical.entities import drop_context_graph

    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns(
        [{"label": A, "pattern": [{"LOWER": w}]} for w in ("nausea", "rash", "dizziness")]
        + [{"label": D, "pattern": [{"LOWER": "lexapro"}]}]
    )
    add_context(nlp)
    texts = [
        ("a", "Denies nausea on Lexapro."),
        ("b", "Rash since starting Lexapro."),
        ("c", "History of dizziness."),
    ]
    docs = [drop_context_graph(d) for d in nlp.pipe(t for _, t in texts)]
    for doc, (key, _) in zip(docs, texts, strict=True):
        doc.user_data["id"] = key
    DocBin(store_user_data=True, docs=docs).to_disk(tmp_path / "docs.spacy")
    with ClinicalIndex(tmp_path / "from_docbin.sqlite") as store:
        assert store.add_docbin(tmp_path / "docs.spacy", nlp) == 3
        assert [h.key for h in store.search("label=ADVERSE_EVENT status=present").hits] == ["b"]
        assert store.stats()["by_label"][A] == {"historical": 1, "negated": 1, "present": 1}
    # nlp.pipe output straight in, keys from the context dicts
    with ClinicalIndex(tmp_path / "from_pipe.sqlite") as store:
        pairs = nlp.pipe([(t, {"id": k, "ward": 7}) for k, t in texts], as_tuples=True)
        store.add(pairs)
        hit = store.search("drug=lexapro status=negated").hits[0]
        assert hit.key == "a" and hit.data == {"id": "a", "ward": 7}


def test_the_cli_indexes_and_searches(tmp_path, capsys) -> None:
    records = tmp_path / "notes.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in fixture_records()))
    database = tmp_path / "cli.sqlite"
    assert main(["index", str(database), "-i", str(records), "--no-context"]) == 0
    assert "Indexed 8 documents" in capsys.readouterr().out
    page = tmp_path / "hits.html"
    query = 'label=ADVERSE_EVENT drug="Lexapro" status=present'
    assert main(["search", str(database), query, "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 documents") and "n1\tLexapro [DRUG]; nausea [ADVERSE_EVENT]" in out
    assert "<mark" in page.read_text()
    assert main(["search", str(database), "label=ADVERSE_EVENT status=family", "--json"]) == 0
    assert [h["key"] for h in json.loads(capsys.readouterr().out)["hits"]] == ["n4"]
    # one-line errors
    assert main(["search", str(database), "dose=5"]) == 1
    assert "error: unknown field 'dose'" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "missing.sqlite"), "label=DRUG"]) == 1
    assert "no search index at" in capsys.readouterr().err
    # the file is a plain SQLite database with FTS5 tables
    tables = {
        row[0]
        for row in sqlite3.connect(database).execute("SELECT name FROM sqlite_master")
        if not row[0].startswith("sqlite_")
    }
    assert {"documents", "entities", "documents_fts", "entities_fts"} <= tables


def test_the_readme_example_runs(tmp_path, monkeypatch) -> None:
    """docs/clinical.md's example, with a scripted model in place of the packaged one."""
    pytest.importorskip("medspacy")
    from spacy_medllm.clinical import add_context
    from tests.scripted import ScriptedGenerator, lexicon_answer

    monkeypatch.chdir(tmp_path)
    nlp = spacy.blank("en")
    config = {"generator": {"@misc": "test.ScriptedLexiconGenerator.v1", "lexicon": {}}}
    ner = nlp.add_pipe("medllm_ner", config=config)
    ner.generator = ScriptedGenerator(lexicon_answer({"Lexapro": D, "nausea": A}))
    add_context(nlp)
    notes = {"n1": "Started Lexapro; now has nausea.", "n2": "No nausea on Lexapro."}
    with ClinicalIndex("notes.sqlite") as index:
        index.add(nlp.pipe([(text, {"id": key}) for key, text in notes.items()], as_tuples=True))
        results = index.search('label=ADVERSE_EVENT drug="Lexapro" status=present')
    assert [hit.key for hit in results.hits] == ["n1"]
    assert "<mark" in results.to_html() and (tmp_path / "notes.sqlite").is_file()
