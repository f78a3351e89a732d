"""Labelling through spacy-llm with our registered model (a tiny LoRA trained here), the raw log,
the silver DocBins, resuming after a kill, and the annotator report."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin

from spacy_medllm.core.prompts import PromptBuilder
from spacy_medllm.data.labelling import (
    LLM_PIPE,
    annotator_report,
    dictionary_labeller,
    label_records,
    llm_labeller,
    read_log,
)
from spacy_medllm.data.scrape import scrape
from spacy_medllm.data.synth.offline import compose_offline
from spacy_medllm.data.synth.records import read_records
from spacy_medllm.pipeline.spacy_llm import (
    CHAT_PREFIX,
    GeneratorModel,
    decode_prompt,
    encode_chat,
    make_json_ner_task,
)
from tests.gold_examples import GOLD, LABELS
from tests.test_component_hf import trained  # noqa: F401 - the tiny LoRA fixture

pytest.importorskip("spacy_llm")
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")

REPO = Path(__file__).resolve().parents[1]
UNSEEN = "No drug was taken today."


def gold_records() -> list[dict]:
    texts = [text for text, _ in GOLD] + [UNSEEN]
    return [
        {"id": f"doc-{i}", "lang": "en", "kind": "test", "text": t} for i, t in enumerate(texts)
    ]


def labeller(trained_run: dict, batch_size: int = 4):
    return llm_labeller(
        "en",
        model=str(trained_run["base"]),
        adapter=str(trained_run["adapter"]),
        batch_size=batch_size,
        max_new_tokens=64,
    )


# -- the spacy-llm registrations -------------------------------------------------------------------


def test_registered_models_and_task_pass_spacy_llm_type_checks():
    from spacy_llm.registry import registry

    for name in ("medllm.HF.v1", "medllm.OpenAICompatible.v1"):
        assert callable(registry.llm_models.get(name))
    assert callable(registry.llm_tasks.get("medllm.JSONNER.v1"))
    nlp = spacy.blank("en")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # spacy-llm warns when the types do not fit
        for task in (
            {"@llm_tasks": "medllm.JSONNER.v1", "labels": ["DRUG"]},
            {"@llm_tasks": "spacy.NER.v3", "labels": ["DRUG"]},
        ):
            nlp.add_pipe(
                "llm",
                name=task["@llm_tasks"],
                config={"task": task, "model": {"@llm_models": "medllm.HF.v1", "model": "x"}},
            )
    model = nlp.get_pipe("medllm.JSONNER.v1")._model
    assert isinstance(model, GeneratorModel) and model.context_length > 0
    assert model.generator.model == "x"  # built lazily: no model was loaded


def test_chat_prompts_survive_the_string_interface():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    encoded = encode_chat(messages)
    assert encoded.startswith(CHAT_PREFIX) and decode_prompt(encoded) == messages
    # spacy-llm's own tasks send plain text: one user turn.
    assert decode_prompt("Find the drugs.") == [{"role": "user", "content": "Find the drugs."}]
    with pytest.raises(ValueError, match="role"):
        decode_prompt(CHAT_PREFIX + '[{"text": "no role"}]')


def test_task_alignment_records_what_did_not_become_a_span():
    task = make_json_ner_task(labels="DRUG,ADVERSE_EVENT")
    nlp = spacy.blank("en")
    doc = nlp("Metformin gave me nausea, then more nausea and a rash after METFORMIN.")
    response = json.dumps(
        [
            {"text": "metformin", "label": "drug"},  # case differs, label alias
            {"text": "nausea", "label": "ADVERSE_EVENT"},  # repeated: every occurrence
            {"text": "a rash", "label": "ADVERSE_EVENT"},
            {"text": "rash", "label": "ADVERSE_EVENT"},  # overlaps the longer span
            {"text": "headache", "label": "ADVERSE_EVENT"},  # not in the text
            {"text": "aspirin", "label": "DOSAGE"},  # unknown label
        ]
    )
    task.assign(doc, response)
    assert [(e.text, e.label_) for e in doc.ents] == [
        ("Metformin", "DRUG"),
        ("nausea", "ADVERSE_EVENT"),
        ("nausea", "ADVERSE_EVENT"),
        ("a rash", "ADVERSE_EVENT"),
        ("METFORMIN", "DRUG"),
    ]
    record = doc._.medllm["llm"]
    reasons = sorted((r["text"], r["reason"]) for r in record["rejected"])
    assert reasons == [
        ("aspirin", "unknown_label"),
        ("headache", "not_in_text"),
        ("rash", "overlap"),
    ]
    assert record["n_emitted"] == 6 and record["n_spans"] == 5

    task.assign(doc, '[{"text": "nausea", "label": "ADVERSE_EVENT"')  # a cut answer
    assert [e.text for e in doc.ents] == ["nausea", "nausea"]
    assert "truncated" in doc._.medllm["llm"]["repairs"]


def test_task_from_an_adapter_folder_prompts_as_trained(trained):  # noqa: F811
    from spacy_medllm.core.adapter_settings import load_prompt_settings

    settings = load_prompt_settings(trained["adapter"])
    task = make_json_ner_task(adapter=str(trained["adapter"]))
    assert list(task.labels) == settings["labels"] == LABELS
    from spacy_medllm.core.labels import LabelSet

    builder = PromptBuilder(
        LabelSet(settings["labels"], settings["label_definitions"]), settings["template"]
    )
    assert task.messages("Aspirin.") == builder.messages("Aspirin.")
    with pytest.raises(FileNotFoundError, match=r"prompt_template\.json"):
        make_json_ner_task(adapter=str(REPO / "tests"))


def test_task_warns_that_an_adapter_trained_on_pieces_reads_whole_texts_here(
    trained,  # noqa: F811
    tmp_path,
    caplog,
):
    import shutil

    folder = tmp_path / "adapter"
    shutil.copytree(trained["adapter"], folder)
    make_json_ner_task(adapter=str(folder))
    assert "trained on pieces" not in caplog.text
    settings = json.loads((folder / "prompt_template.json").read_text())
    (folder / "prompt_template.json").write_text(json.dumps({**settings, "max_chunk_tokens": 32}))
    with caplog.at_level("WARNING", logger="spacy_medllm"):
        task = make_json_ner_task(adapter=str(folder))
    assert "trained on pieces of at most 32 text tokens" in caplog.text
    assert list(task.labels) == LABELS  # still usable


# -- labelling with the tiny trained LoRA ----------------------------------------------------------


def test_labelling_writes_silver_docbin_and_raw_log(trained, tmp_path):  # noqa: F811
    records = gold_records()
    summary = label_records(records, {"en": labeller(trained)}, tmp_path, "llm", progress=False)
    assert summary["n_labelled_now"] == len(records)

    log = read_log(tmp_path / "log.jsonl")
    assert [line["id"] for line in log] == [r["id"] for r in records]
    task = make_json_ner_task(adapter=str(trained["adapter"]))
    for line, (text, pairs) in zip(log, GOLD, strict=False):
        assert line["prompt"] == task.messages(text)  # the prompt the adapter was trained on
        assert json.loads(line["response"])  # the raw answer, kept verbatim
        got = [(text[s:e], label) for s, e, label in line["ents"]]
        assert sorted(got) == sorted(pairs), (text, line["response"])
        assert line["record"]["n_spans"] == len(line["ents"])

    docs = list(DocBin().from_disk(tmp_path / "en.spacy").get_docs(spacy.blank("en").vocab))
    assert [d.text for d in docs] == [r["text"] for r in records]
    assert [d.user_data["id"] for d in docs] == [r["id"] for r in records]
    for doc, line in zip(docs, log, strict=True):
        assert [[e.start_char, e.end_char, e.label_] for e in doc.ents] == line["ents"]

    # A rerun finds everything done: nothing is asked, nothing is added.
    again = label_records(records, {"en": labeller(trained)}, tmp_path, "llm", progress=False)
    assert again["n_labelled_now"] == 0 and again["n_already_done"] == len(records)
    assert len(read_log(tmp_path / "log.jsonl")) == len(records)


def test_llm_pipeline_keeps_the_prompt_and_response_on_the_doc(trained):  # noqa: F811
    nlp = labeller(trained)
    doc = nlp(GOLD[0][0])
    io = doc.user_data["llm_io"][LLM_PIPE]
    assert decode_prompt(io["prompt"][0])[-1]["content"] == GOLD[0][0]
    assert [(e.text, e.label_) for e in doc.ents] == GOLD[0][1]


def test_a_killed_run_resumes_without_loss_or_duplicates(trained, tmp_path):  # noqa: F811
    texts = [f"{text} (note {i})" for i in range(6) for text, _ in GOLD]
    records = [
        {"id": f"k{i:03d}", "lang": "en", "kind": "t", "text": t} for i, t in enumerate(texts)
    ]
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf8")
    out = tmp_path / "silver"
    command = [
        sys.executable,
        "-m",
        "spacy_medllm",
        "label",
        "--input",
        str(source),
        "--output",
        str(out),
        "--annotator",
        "llm",
        "--langs",
        "en",
        "--model",
        str(trained["base"]),
        "--adapter",
        str(trained["adapter"]),
        "--batch-size",
        "1",
        "--max-new-tokens",
        "48",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    log_path = out / "log.jsonl"
    deadline = time.monotonic() + 300  # generous: loading torch is slow on a busy machine
    while time.monotonic() < deadline and process.poll() is None:
        if log_path.is_file() and log_path.read_text(encoding="utf8").count("\n") >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = read_log(log_path)
    assert 3 <= len(before) < len(records), "the run was not interrupted mid-way"

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_already_done"] == len(before)
    assert summary["n_labelled_now"] == len(records) - len(before)
    after = read_log(log_path)
    assert sorted(line["id"] for line in after) == [r["id"] for r in records]
    assert after[: len(before)] == before  # finished work was kept as it was
    docs = list(DocBin().from_disk(out / "en.spacy").get_docs(spacy.blank("en").vocab))
    assert sorted(d.user_data["id"] for d in docs) == [r["id"] for r in records]


# -- the dictionary annotator and the report -------------------------------------------------------


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    pytest.importorskip("estnltk")
    root = tmp_path_factory.mktemp("annot")
    facts = scrape([REPO / "corpus" / "drug_pages"], progress=False).facts
    compose_offline(facts, root / "texts.jsonl", {"en": 60, "et": 60}, seed=0, progress=False)
    return facts, read_records(root / "texts.jsonl")


def test_annotator_report_scores_per_label_strict_and_partial(composed, tmp_path):
    facts, records = composed
    dictionary = {lang: dictionary_labeller(lang, facts) for lang in ("en", "et")}
    report = annotator_report(records, {"dictionary": dictionary}, tmp_path, limit=30)
    assert {p.name for p in tmp_path.iterdir()} == {
        "annotators.json",
        "annotators.md",
        "annotators.png",
    }
    assert report["n_docs_per_lang"] == {"en": 30, "et": 30}
    by_lang = {s["lang"]: s for s in report["systems"]}
    for system in by_lang.values():
        for label in ("DRUG", "ADVERSE_EVENT", "DISEASE", "PROCEDURE"):
            assert label in system["strict"]["per_label"]
            assert label in system["overlap"]["per_label"]
        assert system["overlap"]["micro"]["f1"] >= system["strict"]["micro"]["f1"]
    # English mentions are mostly the pages' names (the rest brand names and misspellings the
    # synthesiser writes and the pages do not give); Estonian ones are inflected, which a
    # dictionary of lemmas mostly misses: the report shows it.
    en_drug = by_lang["en"]["strict"]["per_label"]["DRUG"]["recall"]
    et_drug = by_lang["et"]["strict"]["per_label"]["DRUG"]["recall"]
    assert 0.5 <= en_drug < 1.0 and et_drug < en_drug, (en_drug, et_drug)
    markdown = (tmp_path / "annotators.md").read_text()
    assert "dictionary (en)" in markdown and "dictionary (et)" in markdown


def test_a_labelling_log_is_scored_like_the_live_annotator(composed, tmp_path):
    from spacy_medllm.data.labelling import replay_labeller

    facts, records = composed
    live = {lang: dictionary_labeller(lang, facts) for lang in ("en", "et")}
    en_only = [r for r in records if r["lang"] == "en"][:10]
    label_records(en_only, {"en": live["en"]}, tmp_path / "silver", "dictionary", progress=False)
    replayed, ids = replay_labeller("en", tmp_path / "silver" / "log.jsonl")
    assert ids == {r["id"] for r in en_only}
    report = annotator_report(
        records,
        {"live": {"en": live["en"]}, "logged": {"en": replayed}},
        tmp_path / "report",
        limit=30,
    )
    live_scores, logged_scores = report["systems"]
    # The log covers 10 of the 30 sampled texts: it is scored on those, and says so.
    assert logged_scores["name"] == "logged (en, n=10)" and logged_scores["n_docs"] == 10
    assert live_scores["n_docs"] == 30
    first_ten = annotator_report(records, {"live": {"en": live["en"]}}, tmp_path / "r2", limit=10)
    assert logged_scores["strict"] == first_ten["systems"][0]["strict"]
    assert logged_scores["overlap"] == first_ten["systems"][0]["overlap"]
    with pytest.raises(ValueError, match="holds no labels"):
        replayed("A text that was never labelled.")


def test_data_commands_of_the_project_run_offline_and_a_rerun_skips(tmp_path):
    """scrape -> synthesize -> label-dictionary through `spacy project run`, on small sizes."""
    pytest.importorskip("estnltk")
    import shutil

    project = tmp_path / "project"
    (project / "corpus").mkdir(parents=True)
    shutil.copy(REPO / "project.yml", project / "project.yml")
    shutil.copytree(REPO / "corpus" / "drug_pages", project / "corpus" / "drug_pages")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    steps = ["scrape", "synthesize", "label-dictionary"]

    def run(step: str) -> str:
        command = [
            sys.executable,
            "-m",
            "spacy",
            "project",
            "run",
            step,
            str(project),
            "--vars.synth_n_en",
            "30",
            "--vars.synth_n_et",
            "20",
        ]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    for step in steps:
        run(step)
    generated = project / "corpus" / "generated"
    texts = read_records(generated / "synthetic.jsonl")
    assert Counter(r["lang"] for r in texts) == {"en": 30, "et": 20}
    nlp = spacy.blank("xx")
    for lang, n in (("en", 30), ("et", 20)):
        docs = list(
            DocBin()
            .from_disk(generated / "silver/dictionary" / f"{lang}.spacy")
            .get_docs(nlp.vocab)
        )
        assert len(docs) == n and sum(len(d.ents) for d in docs) > n
    for step in steps:
        assert f"Skipping '{step}': nothing changed" in run(step)


def test_report_silver_takes_name_equals_a_finished_label_folder(tmp_path, capsys) -> None:
    """`report --silver` stops before any scoring: a value without NAME= or a folder without
    the `label` run's log is named in the message."""
    from spacy_medllm.cli import main

    source = tmp_path / "texts.jsonl"
    record = {"id": "a", "lang": "en", "kind": "t", "text": GOLD[0][0]}
    source.write_text(json.dumps(record) + "\n", encoding="utf8")
    argv = ["annotator-report", "--input", str(source), "--output", str(tmp_path / "r")]
    argv += ["--langs", "en"]
    assert main([*argv, "--silver", "folder"]) == 2
    assert "--silver takes NAME=DIR, got 'folder'" in capsys.readouterr().err
    missing = tmp_path / "never_labelled"
    assert main([*argv, "--silver", f"llm={missing}"]) == 1
    error = capsys.readouterr().err
    assert re.search(f"llm={re.escape(str(missing))}: .* run `label`", error), error
    assert not (tmp_path / "r").exists()
