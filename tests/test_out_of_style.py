"""The hand-written out-of-style test set: well-formed, kept apart from every training source, and
its negated / hypothetical mentions reported per system."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import spacy

from spacy_medllm.corpora.registry import load_corpus
from spacy_medllm.corpora.splits import shared_word_runs
from spacy_medllm.evaluation.evaluate import evaluate_pipeline

ROOT = Path(__file__).resolve().parent.parent
FILE = ROOT / "corpus" / "out_of_style" / "out-of-style.jsonl"


def test_the_set_is_well_formed_and_as_the_guide_says() -> None:
    lines = [json.loads(line) for line in FILE.read_text(encoding="utf8").splitlines()]
    assert len(lines) >= 60
    assert len({line["text"] for line in lines}) == len(lines)
    assert len(Counter(line["style"] for line in lines)) >= 8
    labels = Counter(e["label"] for line in lines for e in line["entities"])
    assert labels == {"DRUG": 82, "ADVERSE_EVENT": 86}
    for line in lines:
        for kind in ("entities", "negated", "hypothetical"):
            for mention in line[kind]:
                assert line["text"][mention["start"] : mention["end"]] == mention["text"]
        # an unannotated mention is never also an annotated span
        spans = [(e["start"], e["end"]) for e in line["entities"]]
        for mention in line["negated"] + line["hypothetical"]:
            assert not any(s < mention["end"] and mention["start"] < e for s, e in spans)
    assert sum(len(line["negated"]) for line in lines) >= 10
    examples = load_corpus("out-of-style", "test")
    assert len(examples) == len(lines) and examples[1]["negated"] == [(99, 110)]


def test_no_training_source_shares_eight_words_with_it(tmp_path) -> None:
    """Nothing the project trains on repeats the hand-written texts: seed e-mails, synthetic
    texts of every kind and language, the drug pages' facts."""
    from spacy_medllm.data.scrape import scrape
    from spacy_medllm.data.synth.offline import compose_offline

    protected = [line["text"] for line in load_corpus("out-of-style", "test")]
    seed = [e["text"] for e in load_corpus("seed-ae-emails", "train")]
    seed += [e["text"] for e in load_corpus("seed-ae-emails", "test")]
    assert shared_word_runs(seed, protected) == []
    facts = scrape([ROOT / "corpus" / "drug_pages"]).facts
    output = tmp_path / "synthetic.jsonl"
    compose_offline(facts, output, {"en": 400}, seed=0)
    synthetic = [json.loads(line)["text"] for line in output.read_text().splitlines()]
    assert len(synthetic) == 400
    assert shared_word_runs(synthetic, protected) == []
    # the guard itself finds a copied run
    assert shared_word_runs(["so, I can't stop yawning. Like 40 times a day!"], protected, n=6)


def test_reports_say_how_a_system_treats_negated_and_hypothetical_mentions() -> None:
    examples = load_corpus("out-of-style", "test")
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    words = ["rash", "fever", "diarrhoea", "dizziness", "nausea"]
    ruler.add_patterns([{"label": "ADVERSE_EVENT", "pattern": word} for word in words])
    result = evaluate_pipeline(nlp, examples, progress=False, include_docs=False)
    negated = result["unannotated"]["negated"]
    assert negated["n"] == sum(len(e["negated"]) for e in examples)
    # "No fever, no rash", "No diarrhoea, no rash", "no dizziness": labelled by the word list
    assert negated["n_labelled"] == 5 and negated["labels"] == {"ADVERSE_EVENT": 5}
    hypothetical = result["unannotated"]["hypothetical"]
    assert hypothetical["n_labelled"] == 1  # "may cause taste disturbance and diarrhoea"
