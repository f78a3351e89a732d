"""The shipped spaCy configs build `medllm_ner` pipelines; project.yml's workflows hang together."""

from __future__ import annotations

from pathlib import Path

import pytest
from spacy.util import load_config, load_model_from_config

ROOT = Path(__file__).resolve().parent.parent


def test_the_hf_config_builds_the_component_without_loading_a_model(tmp_path: Path) -> None:
    config = load_config(
        ROOT / "configs" / "medllm_ner.cfg",
        overrides={"paths.adapter": None},
        interpolate=False,
    )
    nlp = load_model_from_config(config, auto_fill=True, validate=True)
    component = nlp.get_pipe("medllm_ner")
    assert component.labels == ("DRUG", "ADVERSE_EVENT")
    assert type(component.generator).__name__ == "HFGenerator"
    assert component.generator.describe()["model"] == "smollm2-135m-instruct"
    assert component.generator.max_new_tokens == 192
    # The config a pipeline saves is the config it was built from.
    nlp.to_disk(tmp_path / "p", exclude=["medllm_ner"])
    saved = load_config(tmp_path / "p" / "config.cfg")
    assert saved["components"]["medllm_ner"]["labels"] == ["DRUG", "ADVERSE_EVENT"]


def test_the_openai_config_reads_the_key_from_the_environment_only() -> None:
    text = (ROOT / "configs" / "medllm_ner_openai.cfg").read_text(encoding="utf8")
    assert "api_key =" not in text and 'api_key_env = "OPENAI_API_KEY"' in text
    config = load_config(ROOT / "configs" / "medllm_ner_openai.cfg", interpolate=False)
    nlp = load_model_from_config(config, auto_fill=True, validate=True)
    generator = nlp.get_pipe("medllm_ner").generator
    assert type(generator).__name__ == "OpenAIGenerator"
    assert generator.base_url == "http://127.0.0.1:8000/v1"


@pytest.mark.slow
def test_the_openai_config_against_the_real_server(llama_server: str) -> None:
    config = load_config(
        ROOT / "configs" / "medllm_ner_openai.cfg",
        overrides={"paths.base_url": llama_server},
        interpolate=False,
    )
    nlp = load_model_from_config(config, auto_fill=True, validate=True)
    nlp.get_pipe("medllm_ner").save_io = True
    texts = ["Abilify gave me nausea.", "", "Aspirin and a rash."]
    docs = list(nlp.pipe(texts))
    assert [d.text for d in docs] == texts
    records = [d._.medllm["medllm_ner"] for d in docs]
    assert records[1]["skipped"] == "empty document"
    for doc, record in zip(docs, records, strict=True):
        if doc.text:
            assert record["chunks"][0]["response"] is not None
            assert record["n_emitted"] == record["n_spans"] + len(record["rejected"])
            assert all(doc.text[e.start_char : e.end_char] == e.text for e in doc.ents)


def test_project_workflows_are_complete() -> None:
    """Every dependency of a workflow step exists in the repo or is made by an earlier step."""
    from spacy.cli.project.run import load_project_config

    project = load_project_config(ROOT)
    commands = {c["name"]: c for c in project["commands"]}
    # Workflows that build on others' results (README, "Fine-tuning and the workflow"): `medllm`
    # scores its ADE LoRA next to `all`'s seed pipeline and the `baselines`, and its systems
    # table also shows the rows of `medllm-ncbi-disease` and `medllm-bc5cdr` (and each of these
    # three the others' rows), `distil` takes the ADE pipeline as its default teacher, and
    # `data`'s LLM labelling uses `all`'s seed LoRA, and `serving`, `batch` and `clinical` serve,
    # run or read `all`'s seed model.
    builds_on = {
        "medllm": ["all", "baselines", "medllm-ncbi-disease", "medllm-bc5cdr"],
        "medllm-ncbi-disease": ["all", "baselines", "medllm", "medllm-bc5cdr"],
        "medllm-bc5cdr": ["all", "baselines", "medllm", "medllm-ncbi-disease"],
        "distil": ["medllm"],
        "data": ["all"],
        "serving": ["all"],
        "batch": ["all"],
        "clinical": ["all"],
    }

    def outputs_of(workflow: str) -> set[str]:
        return {o for step in project["workflows"][workflow] for o in commands[step]["outputs"]}

    for workflow, steps in project["workflows"].items():
        made: set[str] = set()
        for earlier in builds_on.get(workflow, []):
            made |= outputs_of(earlier)
        for step in steps:
            assert step in commands, (workflow, step)
            command = commands[step]
            for dep in command.get("deps", []):
                assert dep in made or (ROOT / dep).exists(), (workflow, step, dep)
            assert command.get("outputs"), f"{step} has no outputs: it would always rerun"
            made.update(command["outputs"])
            # Parent folders of outputs count as made too (a step may depend on a folder).
            made.update(str(Path(o).parent) for o in command["outputs"])
        assert made


def test_project_commands_name_real_cli_commands() -> None:
    from spacy.cli.project.run import load_project_config
    from typer.main import get_command

    from spacy_medllm.cli import app

    group = get_command(app)
    names = set(group.commands)
    for command in load_project_config(ROOT)["commands"]:
        for line in command["script"]:
            words = line.split()
            for i, word in enumerate(words):
                if word != "-m" or words[i - 1] != "python":
                    continue
                module = words[i + 1]
                # The package's steps go through its one CLI, spaCy's through spaCy's; benchmarks
                # live outside the library on purpose (python -m benchmarks.NAME).
                assert module in ("spacy_medllm", "spacy") or module.startswith("benchmarks."), line
                if module == "spacy_medllm":
                    assert words[i + 2] in names, line
                    sub = group.commands[words[i + 2]]
                    if hasattr(sub, "commands"):  # a command group: corpus, synth, distil, ...
                        assert words[i + 3] in sub.commands, line
