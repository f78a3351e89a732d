"""The hand-written Estonian clinical-style test set: well-formed, as its guide says, and kept
apart from everything the Estonian teacher and its students learn from."""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise
from pathlib import Path

from spacy_medllm.corpora.registry import load_corpus
from spacy_medllm.corpora.splits import shared_word_runs

ROOT = Path(__file__).resolve().parent.parent
FILE = ROOT / "corpus" / "et_clinical" / "et-clinical.jsonl"
LABELS = {"DRUG", "ADVERSE_EVENT", "DISEASE", "PROCEDURE"}


def test_the_set_is_well_formed_and_as_the_guide_says() -> None:
    lines = [json.loads(line) for line in FILE.read_text(encoding="utf8").splitlines()]
    assert len(lines) >= 60
    assert len({line["text"] for line in lines}) == len(lines)
    assert len({line["id"] for line in lines}) == len(lines)
    assert len(Counter(line["style"] for line in lines)) >= 8
    labels = Counter(e["label"] for line in lines for e in line["entities"])
    assert set(labels) == LABELS and min(labels.values()) >= 15
    guide = (FILE.parent / "GUIDE.md").read_text(encoding="utf8")
    counts = f"{labels['DRUG']} DRUG, {labels['ADVERSE_EVENT']} ADVERSE_EVENT, "
    assert counts in guide.replace("\n", " ")
    for line in lines:
        spans = []
        for mention in line["entities"]:
            assert line["text"][mention["start"] : mention["end"]] == mention["text"]
            spans.append((mention["start"], mention["end"]))
        # spans do not overlap and start and end at word boundaries
        spans.sort()
        assert all(a[1] <= b[0] for a, b in pairwise(spans))
        for start, end in spans:
            assert start == 0 or not line["text"][start - 1].isalnum()
            assert end == len(line["text"]) or not line["text"][end].isalnum()
        for mention in line["negated"] + line["hypothetical"]:
            assert line["text"][mention["start"] : mention["end"]] == mention["text"]
            assert not any(s < mention["end"] and mention["start"] < e for s, e in spans)
    examples = load_corpus("et-clinical", "test")
    assert len(examples) == len(lines)
    assert sum(len(e["negated"]) for e in examples) == sum(len(x["negated"]) for x in lines)
    assert {label for e in examples for *_, label in e["spans"]} == LABELS


def test_no_estonian_training_source_shares_eight_words_with_it(tmp_path) -> None:
    """The synthetic Estonian texts (the teacher's gold and the texts it labels for the students)
    and et-dev never repeat a run of eight words of the set."""
    from spacy_medllm.data.scrape import scrape
    from spacy_medllm.data.synth.offline import compose_offline

    protected = [e["text"] for e in load_corpus("et-clinical", "test")]
    facts = scrape([ROOT / "corpus" / "drug_pages"]).facts
    output = tmp_path / "synthetic.jsonl"
    compose_offline(facts, output, {"et": 400}, seed=0)
    synthetic = [json.loads(line)["text"] for line in output.read_text().splitlines()]
    assert len(synthetic) == 400
    assert shared_word_runs(synthetic, protected) == []
    assert shared_word_runs([e["text"] for e in load_corpus("et-dev", "dev")], protected) == []
    # the guard itself finds a copied run
    copied = ["Märkus: Psoriaas, metotreksaat 15 mg nädalas; analüüsides maksaensüümide tõus."]
    assert shared_word_runs(copied, protected)
