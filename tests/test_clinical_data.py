"""The hand-written assertion and summary sets: well-formed, as their guides say, and kept apart
from every training source."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from spacy_medllm.clinical.entities import STATUSES
from spacy_medllm.corpora.registry import load_corpus
from spacy_medllm.corpora.splits import shared_word_runs

ROOT = Path(__file__).resolve().parent.parent
ASSERTION = ROOT / "corpus" / "assertion" / "assertion.jsonl"
SUMMARIES = ROOT / "corpus" / "summaries" / "summaries.jsonl"
LABELS = {
    "medications": "DRUG",
    "adverse_events": "ADVERSE_EVENT",
    "diseases": "DISEASE",
    "procedures": "PROCEDURE",
}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf8").splitlines()]


def test_the_assertion_set_is_well_formed_and_as_the_guide_says() -> None:
    rows = read(ASSERTION)
    assert len(rows) == 152 and len({r["text"] for r in rows}) == len(rows)
    assert Counter(r["split"] for r in rows) == {"dev": 112, "test": 40}
    statuses = Counter(e["status"] for r in rows for e in r["entities"])
    # the five statuses of the guide, each with at least 20 mentions; "uncertain" is not gold
    assert set(statuses) == set(STATUSES) - {"uncertain"}
    assert min(statuses.values()) >= 20 and statuses["negated"] == 62
    assert sum(statuses.values()) == 306
    for row in rows:
        assert row["entities"], row["id"]
        ends = [0]
        for e in row["entities"]:
            assert row["text"][e["start"] : e["end"]] == e["text"], row["id"]
            assert e["label"] in ("DRUG", "ADVERSE_EVENT", "DISEASE")
            assert e["start"] >= ends[-1], f"{row['id']}: overlapping or unordered mentions"
            ends.append(e["end"])


def test_the_summary_set_is_well_formed_and_its_references_name_only_entities() -> None:
    rows = read(SUMMARIES)
    assert len(rows) >= 20 and len({r["text"] for r in rows}) == len(rows)
    for row in rows:
        for e in row["entities"]:
            assert row["text"][e["start"] : e["end"]] == e["text"], row["id"]
            assert e["status"] in STATUSES
        # the structured reference is the entities grouped by kind and status, each name once
        names = {(e["label"], e["text"].lower(), e["status"]) for e in row["entities"]}
        listed = {
            (LABELS[group], name.lower(), status)
            for group, by_status in row["structured"].items()
            for status, items in by_status.items()
            for name in items
        }
        assert listed == names, row["id"]
        # every drug named in the free-text reference is a drug of the text
        reference = row["reference"].lower()
        drugs = {e["text"].lower() for e in row["entities"] if e["label"] == "DRUG"}
        assert any(d in reference for d in drugs), row["id"]
        others = {e["text"].lower() for r in rows for e in r["entities"] if e["label"] == "DRUG"}
        for drug in others - drugs:
            assert f" {drug} " not in f" {reference} ", (row["id"], drug)


def test_no_training_source_shares_eight_words_with_them(tmp_path) -> None:
    """Seed e-mails, synthetic texts of every kind, the out-of-style set: no run of eight words
    in common with the assertion sentences or the summary texts and references."""
    from spacy_medllm.data.scrape import scrape
    from spacy_medllm.data.synth.offline import compose_offline

    protected = [r["text"] for r in read(ASSERTION)]
    protected += [r["text"] for r in read(SUMMARIES)] + [r["reference"] for r in read(SUMMARIES)]
    seed = [e["text"] for split in ("train", "test") for e in load_corpus("seed-ae-emails", split)]
    assert shared_word_runs(seed, protected) == []
    facts = scrape([ROOT / "corpus" / "drug_pages"]).facts
    output = tmp_path / "synthetic.jsonl"
    compose_offline(facts, output, {"en": 400}, seed=0, progress=False)
    synthetic = [json.loads(line)["text"] for line in output.read_text().splitlines()]
    assert len(synthetic) == 400
    assert shared_word_runs(synthetic, protected) == []
    out_of_style = [e["text"] for e in load_corpus("out-of-style", "test")]
    assert shared_word_runs(out_of_style, protected) == []
    # the guard finds a copied run
    assert shared_word_runs(["seen in March and denies nausea or insomnia since then."], protected)
