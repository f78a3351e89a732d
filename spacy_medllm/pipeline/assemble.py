"""Pipeline assembly: a blank pipeline with one `medllm_ner`, set up as its adapter was trained.

`build_pipeline` reads the prompt settings a fine-tuning run saved beside the adapter
(`core.adapter_settings`): labels, definitions, prompt template and the piece size, so the model
is prompted exactly as it was trained. `few_shot_examples` picks short examples for the prompt of
a base model without an adapter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spacy_medllm.core.adapter_settings import PROMPT_TEMPLATE_FILE, load_prompt_settings


def few_shot_examples(path: Path, n: int, labels: list[str] | None = None) -> list[dict[str, Any]]:
    """`n` few-shot examples from a training file: the shortest texts with an entity of each label.

    Deterministic (ties broken by text) and short, so that the prompt stays within a small model's
    context. Examples come in the PromptTemplate format `{"text", "entities": [{"text", "label"}]}`.
    """
    from spacy_medllm.core.examples import answer_text, deduplicate, read_examples
    from spacy_medllm.core.prompts import PromptBuilder

    examples = deduplicate(read_examples(path))
    candidates = []
    for example in examples:
        entities = json.loads(answer_text(PromptBuilder, example))
        if labels:
            entities = [e for e in entities if e["label"] in labels]
        if not entities or (labels and {e["label"] for e in entities} != set(labels)):
            continue
        candidates.append({"text": example["text"], "entities": entities})
    candidates.sort(key=lambda e: (len(e["text"]), e["text"]))
    if len(candidates) < n:
        raise ValueError(f"{path} has only {len(candidates)} usable few-shot examples")
    return candidates[:n]


def build_pipeline(
    model: str = "smollm2-135m-instruct",
    adapter: str | None = None,
    labels: list[str] | None = None,
    lang: str = "en",
    batch_size: int = 8,
    max_new_tokens: int = 256,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    few_shot: int = 0,
    few_shot_from: Path | None = None,
    constrained: str = "off",
    quantize: str = "none",
    jump_forward: bool = True,
    draft_tokens: int = 4,
    max_chunk_tokens: int | None = None,
    empty_answer_threshold: float | None = None,
    max_concurrency: int | None = None,
):
    """A blank pipeline with one `medllm_ner`; labels and prompt come from the adapter's folder.

    A fine-tuning run writes `prompt_template.json` inside `<output>/adapter/`; when `adapter`
    points to the run's output folder or to its `adapter/` folder, the component is configured
    exactly as the model was trained (labels, prompt, and the `max_chunk_tokens` of an adapter
    trained on pieces, unless `max_chunk_tokens` is given here). Otherwise the default prompt and
    the given labels are used.
    """
    import spacy

    config: dict[str, Any] = {}
    if base_url and constrained not in ("off", "schema"):
        raise ValueError(
            f"--constrained {constrained} needs the transformers backend (medllm.HFGenerator.v1); "
            'with --base-url use "schema" (the server constrains the answer to the JSON schema)'
        )
    if base_url and empty_answer_threshold is not None:
        raise ValueError(
            "--empty-answer-threshold needs the transformers backend (medllm.HFGenerator.v1): "
            "it reads the model's probabilities while decoding"
        )
    if base_url and quantize != "none":
        raise ValueError(
            "--quantize needs the transformers backend (medllm.HFGenerator.v1); with --base-url "
            "the serving engine chooses the weights (a quantized GGUF for llama.cpp's server)"
        )
    adapter_dir = None
    if adapter:
        adapter_path = Path(adapter)
        adapter_dir = (
            adapter_path / "adapter" if (adapter_path / "adapter").is_dir() else adapter_path
        )
        # An adapter's folder, or (with --base-url) an export-gguf folder: both carry the
        # prompt settings the model was trained with.
        if (adapter_dir / PROMPT_TEMPLATE_FILE).exists():
            trained = load_prompt_settings(adapter_dir)
            config["labels"] = trained["labels"]
            config["label_definitions"] = trained["label_definitions"]
            if trained["max_chunk_tokens"] is not None:
                # trained on pieces: read documents in the same pieces
                config["max_chunk_tokens"] = trained["max_chunk_tokens"]
            template = trained["template"].to_dict()
            config["prompt"] = {
                "@misc": "medllm.PromptTemplate.v1",
                "instruction": template["instruction"],
                "examples": list(template.get("examples", [])),
            }
        elif base_url:
            raise FileNotFoundError(
                f"{adapter_dir} has no {PROMPT_TEMPLATE_FILE}: with --base-url, --adapter names "
                "the folder whose prompt settings the served model was trained with (an "
                "export-gguf folder or the adapter's folder)"
            )
    if base_url:
        config["generator"] = {
            "@misc": "medllm.OpenAIGenerator.v1",
            "model": model,
            "base_url": base_url,
            "api_key_env": api_key_env,
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "constrained": constrained,
            # Served models answer within the same budget as in-process ones.
            "sized_answers": True,
        }
        if max_concurrency is not None:
            config["generator"]["max_concurrency"] = max_concurrency
    else:
        config["generator"] = {
            "@misc": "medllm.HFGenerator.v1",
            "model": model,
            "adapter": str(adapter_dir) if adapter_dir else None,
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "constrained": constrained,
            "quantize": quantize,
            "jump_forward": jump_forward,
            "draft_tokens": draft_tokens,
            "empty_answer_threshold": empty_answer_threshold,
        }
    if labels:
        config["labels"] = labels
    if max_chunk_tokens is not None:
        config["max_chunk_tokens"] = max_chunk_tokens
    if few_shot:
        if few_shot_from is None:
            raise ValueError("--few-shot needs --few-shot-from (a training data file)")
        shots = few_shot_examples(few_shot_from, few_shot, config.get("labels"))
        prompt = config.setdefault("prompt", {"@misc": "medllm.PromptTemplate.v1"})
        prompt["examples"] = list(prompt.get("examples", [])) + shots
    nlp = spacy.blank(lang)
    nlp.add_pipe("medllm_ner", config=config)
    return nlp
