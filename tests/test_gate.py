"""The quality gate for LLM labels: what is kept, what is dropped and why, through the CLI too."""

from __future__ import annotations

import json
from pathlib import Path

from spacy_medllm.cli import main as cli
from spacy_medllm.data.gate import gate_labels, gold_of, span_f1

TEXT = "Since Zoloft I have headaches."


def line(i, ents, record=None, text=TEXT, lang="en"):
    return {"id": f"t{i}", "lang": lang, "text": text, "ents": ents, "record": record}


GOLD_SPANS = [(6, 12, "DRUG"), (20, 29, "ADVERSE_EVENT")]


def test_span_f1():
    assert span_f1([], []) == 1.0
    assert span_f1(GOLD_SPANS, GOLD_SPANS) == 1.0
    assert span_f1(GOLD_SPANS[:1], GOLD_SPANS) == 2 / 3
    assert span_f1([(0, 5, "DRUG")], GOLD_SPANS) == 0.0


def test_each_reason_to_drop_and_the_kept_texts():
    log = [
        line(0, [[6, 12, "DRUG"], [20, 29, "ADVERSE_EVENT"]]),  # agrees with gold: kept
        line(1, [[6, 12, "DRUG"]]),  # half the gold: F1 0.67 < 0.8
        line(2, [[6, 12, "DRUG"], [20, 80, "ADVERSE_EVENT"]]),  # outside the text
        line(3, [[6, 12, "MEDICINE"]]),  # a label the gate does not know
        line(4, [], {"parse_errors": [{"start": 0}], "rejected": []}),  # unreadable answer
        line(5, [[6, 12, "DRUG"]], {"rejected": [{"reason": "not_in_text"}]}),
        line(6, [[6, 12, "DRUG"]]),  # no gold: the second annotator agrees
        line(7, [[20, 29, "ADVERSE_EVENT"]]),  # no gold: the second annotator disagrees
        line(8, []),  # no reference at all
    ]
    gold = {f"t{i}": GOLD_SPANS for i in range(6)}
    second = {"t6": [(6, 12, "DRUG")], "t7": [(6, 12, "DRUG")]}
    kept, report = gate_labels(
        log, labels=["DRUG", "ADVERSE_EVENT"], gold=gold, second=second, min_agreement=0.8
    )
    assert [k["id"] for k in kept] == ["t0", "t6"]
    assert kept[0]["entities"][1] == {
        "start": 20,
        "end": 29,
        "label": "ADVERSE_EVENT",
        "text": "headaches",
    }
    assert report["dropped"] == {
        "outside_text": 1,
        "unknown_label": 1,
        "answer_problem": 2,
        "disagrees_with_gold": 1,
        "annotators_disagree": 1,
        "unchecked": 1,
    }
    assert report["n_compared"] == 4 and report["kept_entities_per_label"] == {
        "DRUG": 2,
        "ADVERSE_EVENT": 1,
    }
    kept, report = gate_labels([line(8, [])], allow_unchecked=True)
    assert len(kept) == 1 and report["dropped"] == {}


def test_gate_command_on_a_label_folder(tmp_path: Path, capsys) -> None:
    silver = tmp_path / "silver"
    silver.mkdir()
    logged = [line(0, [[6, 12, "DRUG"], [20, 29, "ADVERSE_EVENT"]]), line(1, [[6, 12, "DRUG"]])]
    (silver / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in logged))
    texts = tmp_path / "texts.jsonl"
    records = [
        {
            "id": f"t{i}",
            "lang": "en",
            "text": TEXT,
            "spans": [{"start": s, "end": e, "label": label} for s, e, label in GOLD_SPANS],
        }
        for i in range(2)
    ]
    texts.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert gold_of(records)["t1"] == GOLD_SPANS
    out = tmp_path / "gated"
    assert cli(["gate", "--silver", str(silver), "--texts", str(texts), "--output", str(out)]) == 0
    assert "1 of 2 labelled texts kept" in capsys.readouterr().out
    gated = [json.loads(x) for x in (out / "gated.jsonl").read_text().splitlines()]
    assert [g["id"] for g in gated] == ["t0"]
    from spacy_medllm.core.examples import read_jsonl

    assert read_jsonl(out / "gated.jsonl")[0]["spans"] == GOLD_SPANS


def test_compare_only_the_labels_the_second_annotator_knows():
    """A drug dictionary as the second opinion: the drugs must agree, the effects pass along."""
    log = [
        line(0, [[6, 12, "DRUG"], [20, 29, "ADVERSE_EVENT"]]),
        line(1, [[20, 29, "ADVERSE_EVENT"]]),
    ]
    dictionary = {"t0": [(6, 12, "DRUG")], "t1": [(6, 12, "DRUG")]}
    kept, report = gate_labels(
        log,
        labels=["DRUG", "ADVERSE_EVENT"],
        second=dictionary,
        compare=["DRUG"],
        min_agreement=1.0,
    )
    assert [k["id"] for k in kept] == ["t0"] and len(kept[0]["entities"]) == 2
    assert report["dropped"] == {"annotators_disagree": 1}
    assert report["compared_labels"] == ["DRUG"]
