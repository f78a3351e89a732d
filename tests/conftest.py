"""Shared fixtures. Models are built lazily, once per session, and only by the tests that ask."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# The `llama_server` fixture (a real OpenAI-compatible server) lives in its own plugin module.
pytest_plugins = ["tests.conftest_openai"]

# Nothing in the test suite may reach the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Texts the tiny tokenizer is trained on: clinical sentences, the prompt's wording and labels, so
# that prompts stay short within the tiny model's 256-token context.
TINY_VOCAB_TEXTS = [
    "After starting aspirin I had a headache and nausea.",
    "Metformin 500 mg twice daily caused diarrhoea and stomach pain.",
    "The patient took ibuprofen for back pain and developed a rash on the arm.",
    "Abilify made me dizzy; vomiting and insomnia followed the dose increase.",
    "No side effects were reported after the knee surgery.",
    "Lisinopril 10 mg gave her a dry cough, so the doctor switched to losartan.",
    "Extract the medical entities from the user's text.",
    "Labels: DRUG, ADVERSE_EVENT, DISEASE, SYMPTOM, PROCEDURE, BODY_PART, DOSAGE",
    "Answer with a JSON list of objects in order of appearance, copying each entity's text "
    "exactly as it is written. Answer [] if there is none.",
]


@pytest.fixture(scope="session", autouse=True)
def _float32_generators_on_any_cpu() -> Iterator[None]:
    """HFGenerator's dtype "auto" is bfloat16 on a CPU with native bfloat16 and float32 on others.

    Tests compare decoding paths answer for answer (batched and one by one, drafts and `generate`,
    prefix cache on and off) on random tiny models, whose logits are close to ties; they run in
    float32 on every machine, so that they test the algorithms, not the CPU. (Session-wide, so
    that models loaded by module- and session-scoped fixtures are float32 too.) Tests of the
    "auto" choice itself patch `cpu_supports_bf16` again.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("spacy_medllm.generators.hf.generator.cpu_supports_bf16", lambda: False)
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama with a ChatML tokenizer (context 256), saved with safetensors."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from .tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm"), TINY_VOCAB_TEXTS, seed=0)


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LoRA adapter (r=4 on q_proj, v_proj) for `tiny_model_dir`."""
    pytest.importorskip("peft")
    from .tiny_models import build_random_lora_adapter

    return build_random_lora_adapter(
        tiny_model_dir, tmp_path_factory.mktemp("tiny_adapter") / "adapter", seed=0
    )
