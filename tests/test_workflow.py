"""Slow: `spacy project run smoke` end to end in a copy of the project, then again (all skipped).

The smoke workflow is the `all` path on tiny sizes: a few LoRA steps on the packaged SmolLM2,
the adapter wrapped as a `medllm_ner` pipeline, the seed benchmark on the test e-mails. A second
run must skip every step, because each command's deps and outputs are unchanged.
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


def run_smoke(project: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "spacy", "project", "run", "smoke", str(project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )


def test_smoke_workflow_runs_and_a_rerun_skips_everything(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from spacy_medllm.models import ModelNotAvailableError, resolve_base_model

    try:
        resolve_base_model("smollm2-135m-instruct")
    except ModelNotAvailableError as err:
        pytest.skip(str(err))
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "project.yml", project / "project.yml")
    shutil.copy(ROOT / "README.md", project / "README.md")
    for folder in ("corpus", "configs", "scripts"):
        shutil.copytree(ROOT / folder, project / folder)

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
