"""Slow: the project's workflows end to end in a copy of the project, then again (all skipped).

- `spacy project run smoke`: a few LoRA steps on the packaged SmolLM2, the adapter wrapped as a
  `medllm_ner` pipeline, the seed benchmark on the test e-mails, the report.
- `spacy project run all --vars.profile smoke`: every step of the main workflow (drug pages ->
  synthetic texts -> labels -> LoRA -> benchmark -> baselines -> English and Estonian
  distillation -> report) on the tiny sizes of the `smoke` profile.
- `spacy project run own-corpus`: the walkthrough of docs/your-own-corpus.md on the BRAT fixture
  (convert -> LoRA with the defaults -> CNN -> evaluate -> distilled student), a few steps each.

A second run must skip every step, because each command's deps and outputs are unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SMOKE_STEPS = ["smoke-finetune", "smoke-assemble", "smoke-benchmark", "smoke-report"]


def run_smoke(
    project: Path, workflow: str = "smoke", *overrides: str
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "spacy", "project", "run", workflow, str(project), *overrides],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )


def copy_project(tmp_path: Path) -> Path:
    pytest.importorskip("peft")
    from spacy_medllm.generators.packaged import ModelNotAvailableError, resolve_base_model

    try:
        resolve_base_model("smollm2-135m-instruct")
    except ModelNotAvailableError as err:
        pytest.skip(str(err))
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "project.yml", project / "project.yml")
    shutil.copy(ROOT / "README.md", project / "README.md")
    # benchmarks/ runs as `python -m benchmarks.NAME` from the project folder; docs/ receives the
    # seed benchmark's tables.
    for folder in ("corpus", "configs", "scripts", "benchmarks", "docs"):
        shutil.copytree(
            ROOT / folder, project / folder, ignore=shutil.ignore_patterns("generated", "own")
        )
    return project


def test_smoke_workflow_runs_and_a_rerun_skips_everything(tmp_path: Path) -> None:
    project = copy_project(tmp_path)
    first = run_smoke(project)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = json.loads((project / "training/smoke/reports/seed_benchmark.json").read_text())
    names = [system["name"] for system in report["systems"]]
    assert names == ["llama2-adapter", "smoke"]
    smoke = report["systems"][1]
    assert smoke["speed"]["n_docs"] == 59
    assert smoke["training"]["global_step"] == 4
    adapter = project / "training/smoke/lora/adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    # Model files are safetensors (the Trainer's resumable checkpoints are its own format).
    pipeline_files = list((project / "training/smoke/pipeline/medllm_ner").rglob("*"))
    assert any(p.name == "adapter_model.safetensors" for p in pipeline_files)
    pickles = (".bin", ".pt", ".pth", ".pkl")
    assert not [p for p in [*pipeline_files, *adapter.iterdir()] if p.suffix in pickles]

    # The report gathers the benchmark: its table row for the smoke pipeline, and a plot.
    page = (project / "training/smoke/reports/report.html").read_text("utf8")
    assert "Seed adverse-event e-mail benchmark" in page
    assert "<td>smoke</td>" in page and "data:image/png;base64," in page

    second = run_smoke(project)
    assert second.returncode == 0, second.stdout[-3000:]
    for step in SMOKE_STEPS:
        assert f"Skipping '{step}': nothing changed" in second.stdout, second.stdout


# Sizes that the profile does not cover, made tiny as well (a smoke run's figures mean nothing).
TINY = [
    "--vars.profile", "smoke",
    "--vars.max_new_tokens", "64",
    "--vars.et_max_new_tokens", "64",
    # a teacher of a few LoRA steps may not close its JSON: keep those documents (their tokens
    # stay unannotated), so the students still get a training set
    "--vars.distil_keep", "unparseable,not_in_text,error",
    "--vars.synth_n_en", "40",
    "--vars.synth_n_et", "40",
    "--vars.cnn_max_epochs", "2",
    "--vars.few_shot", "1",
    "--vars.annotator_limit", "4",
]  # fmt: skip


def test_all_workflow_on_the_smoke_profile_runs_every_step_and_a_rerun_skips(
    tmp_path: Path,
) -> None:
    from spacy.cli.project.run import load_project_config

    project = copy_project(tmp_path)
    steps = load_project_config(project)["workflows"]["all"]
    first = run_smoke(project, "all", *TINY)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    # Each step's outputs exist: the workflow really went from drug pages to the report.
    commands = {c["name"]: c for c in load_project_config(project)["commands"]}
    for step in steps:
        for output in commands[step]["outputs"]:
            assert (project / output).exists(), (step, output)
    # The profile's sizes reached the commands.
    record = json.loads((project / "training/seed_lora/adapter/training_record.json").read_text())
    assert record["settings"]["num_train_epochs"] == 0.05
    labelled = json.loads((project / "training/distil/et/silver/labelling.json").read_text())
    assert labelled["n_docs"] == 12
    # The Estonian teacher is the multilingual Gemma-3-270M (vars.et_base_model).
    et_record = project / "training/et_lora/gemma-3-270m/adapter/training_record.json"
    assert json.loads(et_record.read_text())["settings"]["base_model"] == "gemma-3-270m"
    # English and Estonian distillation: teacher and both students scored on their gold sets.
    scored = [("seed-ae-emails", "seed-ae-emails"), ("et", "et-dev")]
    for stem, corpus in [*scored, ("et-clinical", "et-clinical")]:
        report = json.loads(
            (project / f"training/reports/distil/distillation-{stem}.json").read_text()
        )
        assert report["corpus"] == corpus
        assert [s["name"] for s in report["systems"]] == [
            "teacher",
            "cnn-student",
            "transformer-student",
        ]
    page = (project / "training/reports/report.html").read_text("utf8")
    assert "Distillation: teacher and students: et<" in page
    assert "Distillation: teacher and students: seed-ae-emails<" in page

    second = run_smoke(project, "all", *TINY)
    assert second.returncode == 0, second.stdout[-3000:]
    for step in steps:
        if not commands[step].get("no_skip"):
            assert f"Skipping '{step}': nothing changed" in second.stdout, (step, second.stdout)


def test_own_corpus_walkthrough_from_brat_files_to_scores(tmp_path: Path) -> None:
    """docs/your-own-corpus.md end to end on the BRAT fixture: every step, then all skipped."""
    project = copy_project(tmp_path)
    fixture = ROOT / "tests" / "fixtures" / "own_corpus" / "brat"
    sizes = [
        f"--vars.own_input={fixture}",
        "--vars.own_max_steps=6",
        "--vars.own_cnn_epochs=3",
        "--vars.own_student_epochs=3",
    ]
    first = run_smoke(project, "own-corpus", *sizes)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    converted = json.loads((project / "corpus/own/example/report.json").read_text())
    assert converted["counts"]["discontinuous_cover"] == 3
    n_test = converted["splits"]["test"]["n_texts"]
    summary = json.loads((project / "training/reports/own/example-test.summary.json").read_text())
    assert [s["name"] for s in summary["systems"]] == ["medllm", "medllm-calibrated", "cnn"]
    calibration = json.loads(
        (project / "training/reports/own/example-calibration.json").read_text()
    )
    threshold = calibration["best"]
    config = (project / "training/own/example/calibrated/config.cfg").read_text()
    assert f"empty_answer_threshold = {'null' if threshold is None else threshold}" in config
    assert calibration["verified"]["f1"] == pytest.approx(calibration["best_f1"], abs=0.05)
    for system in summary["systems"]:
        assert system["n_docs"] == n_test
        assert system["texts"]["n_with_gold"] + system["texts"]["n_without_gold"] == n_test
    record = json.loads(
        (project / "training/own/example/lora/adapter/training_record.json").read_text()
    )
    assert record["data"]["labels_without_definition"] == []
    assert record["training"]["global_step"] == 6
    distil = (project / "training/reports/own/distillation-example-distillation.md").read_text()
    assert "cnn-student" in distil and "speed-up" in distil
    second = run_smoke(project, "own-corpus", *sizes)
    assert second.returncode == 0
    assert second.stdout.count("Skipping") == 10, second.stdout[-3000:]
