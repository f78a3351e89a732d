"""Pipelines saved by an earlier version (0.1.0, before the subpackages) still load and run.

The fixtures hold our files only (config.cfg, meta.json, the components' folders); spaCy's own
tokenizer and vocab are written by the test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import spacy

FIXTURES = Path(__file__).parent / "fixtures" / "pipelines_v0_1_0"
TEXT = "After starting aspirin I had a headache and nausea."


def _restore(name: str, target: Path, replace: dict[str, str] | None = None) -> Path:
    """Copy a saved pipeline, add a blank English tokenizer and vocab, replace placeholders."""
    folder = target / name
    shutil.copytree(FIXTURES / name, folder)
    blank = spacy.blank("en")
    blank.tokenizer.to_disk(folder / "tokenizer")
    blank.vocab.to_disk(folder / "vocab")
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".cfg", ".json"):
            text = path.read_text(encoding="utf8")
            for old, new in (replace or {}).items():
                text = text.replace(old, new)
            path.write_text(text, encoding="utf8")
    return folder


def test_an_hf_pipeline_saved_by_0_1_0_loads_and_answers_as_a_new_one(
    tmp_path: Path, tiny_model_dir: Path, tiny_adapter_dir: Path
) -> None:
    folder = _restore("hf", tmp_path, {"TINY_MODEL_DIR": str(tiny_model_dir)})
    # The adapter saved inside the pipeline (the format 0.1.0 wrote: generator/adapter/).
    shutil.copytree(tiny_adapter_dir, folder / "medllm_ner" / "generator" / "adapter")
    old = spacy.load(folder)
    component = old.get_pipe("medllm_ner")
    assert component.labels == ("DRUG", "ADVERSE_EVENT")
    assert component.label_set.definitions["DRUG"] == "a medicine"
    assert component.generator.adapter == str(folder / "medllm_ner" / "generator" / "adapter")
    assert component.generator.constrained == "grounded"

    new = spacy.blank("en")
    new.add_pipe(
        "medllm_ner",
        config={
            "labels": ["DRUG", "ADVERSE_EVENT"],
            "label_definitions": {"DRUG": "a medicine", "ADVERSE_EVENT": "a harm after a drug"},
            "generator": {
                "@misc": "medllm.HFGenerator.v1",
                "model": str(tiny_model_dir),
                "adapter": str(tiny_adapter_dir),
                "batch_size": 2,
                "max_new_tokens": 24,
                "constrained": "grounded",
            },
            "confidence": True,
        },
    )
    component.save_io = new.get_pipe("medllm_ner").save_io = True
    old_doc, new_doc = old(TEXT), new(TEXT)
    old_record = old_doc._.medllm["medllm_ner"]
    new_record = new_doc._.medllm["medllm_ner"]
    assert old_record["chunks"][0]["response"].startswith("[")  # grounded: a JSON list
    for key in ("chunks", "n_emitted", "rejected", "repairs"):
        assert old_record[key] == new_record[key], key
    assert [(e.start_char, e.end_char, e.label_) for e in old_doc.ents] == [
        (e.start_char, e.end_char, e.label_) for e in new_doc.ents
    ]
    # The same prompt: the response cache key and the prompt fingerprint agree.
    assert (
        component.prompt_builder.fingerprint
        == new.get_pipe("medllm_ner").prompt_builder.fingerprint
    )


def test_an_openai_pipeline_saved_by_0_1_0_loads_with_its_server_settings(tmp_path: Path) -> None:
    folder = _restore("openai", tmp_path)
    nlp = spacy.load(folder)
    component = nlp.get_pipe("medllm_ner")
    assert component.output == "spans" and component.spans_key == "llm"
    described = component.generator.describe()
    assert described["base_url"] == "http://127.0.0.1:9/v1"
    assert described["model"] == "smollm2"
    saved = json.loads((folder / "medllm_ner" / "generator" / "generator.json").read_text())
    assert saved["api_key_env"] == "MEDLLM_TEST_KEY"


def test_a_dictionary_baseline_saved_by_0_1_0_still_finds_its_entries(tmp_path: Path) -> None:
    nlp = spacy.load(_restore("dictionary", tmp_path))
    doc = nlp("Since the aspirin I wake up with a headache.")
    assert [(e.text, e.label_) for e in doc.ents] == [
        ("aspirin", "DRUG"),
        ("headache", "ADVERSE_EVENT"),
    ]


@pytest.mark.parametrize("name", ["hf", "openai", "dictionary"])
def test_the_saved_configs_name_only_registered_functions(name: str) -> None:
    """What a saved config names (factories, @misc, @scorers) is what the package registers."""
    config = spacy.util.load_config(FIXTURES / name / "config.cfg")
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    assert nlp.pipe_names == list(config["nlp"]["pipeline"])
