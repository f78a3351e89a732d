"""Users' annotated files: BRAT, token JSONL, IOB, CoNLL and DocBin in; training files and a report
out (`spacy_medllm.corpora.formats`, the `convert` command, `evaluate --gold`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin

from spacy_medllm.cli import main as cli
from spacy_medllm.corpora.formats import (
    ConversionReport,
    load_annotations,
    read_annotations,
    remove_leaks,
    tag_spans,
    to_examples,
)

FIXTURES = Path(__file__).parent / "fixtures" / "own_corpus"
BRAT = FIXTURES / "brat"


def spans_of(example):
    return [(example["text"][s:e], label) for s, e, label in example["spans"]]


def by_id(examples):
    return {e["id"]: e for e in examples}


@pytest.mark.parametrize(
    "policy, post06, post19",
    [
        # cover: the covering span; the nested "ankles swelled up" then overlaps and goes
        (
            "cover",
            [("legs and ankles swelled up", "ADR")],
            [("sex drive is basically zero", "ADR")],
        ),
        # fragments: one span per fragment; "swelled up" is shared, so kept once
        (
            "fragments",
            [("legs", "ADR"), ("ankles swelled up", "ADR")],
            [("sex drive", "ADR"), ("zero", "ADR")],
        ),
        ("drop", [("ankles swelled up", "ADR")], []),
    ],
)
def test_brat_discontinuous_policies(policy, post06, post19) -> None:
    report = ConversionReport()
    examples = by_id(
        to_examples(read_annotations(BRAT, report=report), discontinuous=policy, report=report)
    )
    assert len(examples) == 24
    drug = [m for m in spans_of(examples["post06"]) if m[1] == "DRUG"]
    assert drug == [("amlodipine", "DRUG")]
    assert [m for m in spans_of(examples["post06"]) if m[1] == "ADR"] == post06
    assert [m for m in spans_of(examples["post19"]) if m[1] == "ADR"] == post19
    assert report.counts[f"discontinuous_{policy}"] == 3
    assert report.counts["brat_R_lines_ignored"] == 1 and report.counts["brat_#_lines_ignored"] == 1
    assert report.counts["texts_without_entities"] == 7
    # post09's nested "muscle aches" overlaps the longer mention: the longer one stays
    assert spans_of(examples["post09"]) == [("muscle aches in both calves", "ADR")]
    assert any("muscle aches" in text for text in report.examples["overlaps_removed"])


def test_token_jsonl_with_token_spans_and_tags() -> None:
    examples = by_id(load_annotations(FIXTURES / "tokens.jsonl"))
    assert examples["t1"]["text"] == "Started fluoxetine and now I yawn constantly ."
    assert spans_of(examples["t1"]) == [("fluoxetine", "DRUG"), ("yawn constantly", "ADR")]
    # "spaces": the last two tokens are not followed by a space
    assert (
        examples["t2"]["text"] == "No problems with the new brand." and not examples["t2"]["spans"]
    )
    assert spans_of(examples["t3"]) == [("Atenolol", "DRUG"), ("fingers cold and white", "ADR")]
    assert spans_of(examples["t4"]) == [("lips", "ADR"), ("isotretinoin", "DRUG")]


def test_iob_and_conll_through_spacys_converters() -> None:
    iob = load_annotations(FIXTURES / "sentences.iob")
    assert [spans_of(e) for e in iob] == [
        [("Codeine", "DRUG"), ("badly constipated", "ADR")],
        [],
    ]
    # -DOCSTART- opens a document: its two sentences are one text, as spaCy's converter reads it
    (conll,) = load_annotations(FIXTURES / "sentences.conll")
    assert conll["text"].startswith("Tramadol made me sweat at night . The clinic was quiet .")
    assert spans_of(conll) == [("Tramadol", "DRUG"), ("sweat at night", "ADR")]


@pytest.mark.parametrize(
    "tags, spans",
    [
        (["B-X", "I-X", "O", "B-Y"], [(0, 2, "X"), (3, 4, "Y")]),
        (["I-X", "I-X", "B-X"], [(0, 2, "X"), (2, 3, "X")]),  # IOB1: a span may start with I
        (["U-X", "B-Y", "L-Y", "O"], [(0, 1, "X"), (1, 3, "Y")]),
        (["B-X", "I-Y"], [(0, 1, "X"), (1, 2, "Y")]),
    ],
)
def test_tag_spans(tags, spans) -> None:
    assert tag_spans(tags) == spans


def test_bad_input_is_named(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a b", "entities": [{"start": 0}]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: an entity needs"):
        load_annotations(bad)
    with pytest.raises(ValueError, match="is not IOB"):
        tag_spans(["B-X", "Q-Y"])
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"text": "short", "entities": [{"start": 2, "end": 40, "label": "X"}]}\n')
    report = ConversionReport()
    assert to_examples(read_annotations(outside, report=report), report=report)[0]["spans"] == []
    assert report.counts["mentions_outside_text"] == 1


def test_leaks_between_splits_leave_train() -> None:
    a = {"id": "a", "text": "Same text.", "spans": []}
    b = {"id": "b", "text": "same  text.", "spans": []}  # the same once normalised
    c = {"id": "c", "text": "Other.", "spans": []}
    report = ConversionReport()
    splits = remove_leaks({"train": [a, c], "dev": [], "test": [b]}, report)
    assert [e["id"] for e in splits["train"]] == ["c"] and [e["id"] for e in splits["test"]] == [
        "b"
    ]
    assert report.counts["leaks_removed_from_train"] == 1


def test_convert_command_writes_training_files_and_a_report(tmp_path, capsys) -> None:
    out = tmp_path / "converted"
    assert cli(["convert", str(BRAT), "--output", str(out), "--split", "0.5,0.25,0.25"]) == 0
    printed = capsys.readouterr().out
    assert "Conversion report" in printed and "discontinuous_cover" in printed
    report = json.loads((out / "report.json").read_text())
    assert sum(s["n_texts"] for s in report["splits"].values()) == 24
    assert report["mentions_per_label"]["DRUG"] == 12
    for split, info in report["splits"].items():
        lines = (out / f"{split}.jsonl").read_text().splitlines()
        assert len(lines) == info["n_texts"]
        docs = list(DocBin().from_disk(out / f"{split}.spacy").get_docs(spacy.blank("en").vocab))
        assert len(docs) == info["n_texts"]
        assert sum(len(d.ents) for d in docs) == info["n_mentions"]
    # the JSONL is what finetune reads
    from spacy_medllm.core.examples import read_jsonl

    assert len(read_jsonl(out / "train.jsonl")) == report["splits"]["train"]["n_texts"]


def test_convert_with_given_splits_and_a_usage_error(tmp_path, capsys) -> None:
    out = tmp_path / "given"
    argv = ["convert", "--train", str(BRAT), "--test", str(FIXTURES / "tokens.jsonl")]
    assert cli([*argv, "--output", str(out), "--labels", "ADR"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["splits"]) == {"train", "test"} and report["labels"] == ["ADR"]
    assert report["splits"]["test"]["n_mentions"] == 3
    assert cli(["convert", str(BRAT), "--train", str(BRAT), "--output", str(out)]) == 2
    assert "give one INPUT" in capsys.readouterr().err


def test_evaluate_any_gold_file(tmp_path) -> None:
    """`evaluate --gold` scores a pipeline on the user's own file, with the usual report."""
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns(
        [{"label": "DRUG", "pattern": [{"LOWER": {"IN": ["sertraline", "metformin", "warfarin"]}}]}]
    )
    pipeline = tmp_path / "ruler"
    nlp.to_disk(pipeline)
    out = tmp_path / "eval"
    argv = ["evaluate", "--pipeline", f"ruler={pipeline}", "--gold", str(BRAT)]
    assert cli([*argv, "--output", str(out), "--labels", "DRUG", "--no-plot"]) == 0
    report = json.loads((out / "brat.json").read_text())
    (system,) = report["systems"]
    assert report["corpus"] == "brat" and report["n_docs"] == 24
    assert system["strict"]["micro"]["tp"] == 3 and system["strict"]["micro"]["fn"] == 9
    # texts with a gold DRUG that got none (the ruler knows 3 of the 12 drugs)
    texts = system["texts"]
    assert texts["n_with_gold"] == 12 and texts["n_with_gold_answered_empty"] == 9
    assert "9 of 12" in (out / "brat.md").read_text()
    assert cli([*argv[:-2], "--corpus", "et-dev", "--gold", str(BRAT), "--output", str(out)]) == 2
