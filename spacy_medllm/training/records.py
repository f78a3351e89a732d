"""Prompt/completion token records for fine-tuning, built from gold examples.

`build_records` turns examples into training records with the SAME prompt builder and the SAME
prompt tokenisation that inference uses (`spacy_medllm.generators.hf.loading.encode_prompt_text`),
so the prompt ids of a record equal, token for token, what the generator feeds the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from spacy_medllm.core.examples import Example, answer_text
from spacy_medllm.core.prompts import PromptBuilder
from spacy_medllm.generators.chat import render_training_pair
from spacy_medllm.generators.hf.loading import encode_prompt_text

IGNORE_INDEX = -100  # label id that the loss ignores (transformers' convention)


def encode_prompt(tokenizer: Any, prompt_text: str) -> list[int]:
    """Token ids of a rendered prompt, exactly as inference computes them (one shared function)."""
    return encode_prompt_text(tokenizer, prompt_text)


def encode_completion(tokenizer: Any, completion_text: str) -> list[int]:
    """Token ids of a completion: what the model must generate after the prompt, with no BOS."""
    return list(tokenizer(completion_text, add_special_tokens=False)["input_ids"])


def build_records(
    examples: Iterable[Example], builder: PromptBuilder, tokenizer: Any
) -> list[dict[str, Any]]:
    """Training records: prompt and completion text, input ids, and labels with -100 on the prompt.

    Each record holds `id`, `prompt` (the rendered text inference sees), `completion` (the answer
    and the end-of-turn marker), `input_ids` (prompt ids + completion ids), `labels` (-100 for
    the prompt, the completion ids after it: the loss is on the answer only) and
    `n_prompt_tokens`. Entities whose label is not in the builder's label set are an error (use
    `filter_labels` first to train a subset of labels).
    """
    records: list[dict[str, Any]] = []
    allowed = set(builder.labels.labels)
    for example in examples:
        used = {s[2] for s in example["spans"]} | {
            a[1] for a in example.get("answer_entities") or ()
        }
        unknown = used - allowed
        if unknown:
            raise ValueError(
                f"Example {example.get('id')!r} has labels {sorted(unknown)} that are not in the "
                f"label set {builder.labels.labels}; filter them out first (filter_labels)."
            )
        prompt, completion = render_training_pair(
            tokenizer, builder.messages(example["text"]), answer_text(builder, example)
        )
        prompt_ids = encode_prompt(tokenizer, prompt)
        completion_ids = encode_completion(tokenizer, completion)
        records.append(
            {
                "id": example.get("id", ""),
                "prompt": prompt,
                "completion": completion,
                "input_ids": prompt_ids + completion_ids,
                "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
                "n_prompt_tokens": len(prompt_ids),
            }
        )
    return records


def boundary_is_stable(tokenizer: Any, record: Mapping[str, Any]) -> bool:
    """Whether tokenising prompt + completion as one text gives the record's ids.

    False means the tokenizer merges across the prompt/completion boundary; the record (prompt
    ids, then completion ids) is still what inference sees followed by what it should generate.
    """
    return encode_prompt(tokenizer, record["prompt"] + record["completion"]) == list(
        record["input_ids"]
    )


def records_sha256(records: Iterable[Mapping[str, Any]]) -> str:
    """A sha256 over the records' texts and token ids: changes if the training data changes."""
    digest = hashlib.sha256()
    for record in records:
        payload = [record["prompt"], record["completion"], record["input_ids"], record["labels"]]
        digest.update(json.dumps(payload, ensure_ascii=False).encode("utf8"))
        digest.update(b"\n")
    return digest.hexdigest()


def record_stats(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Counts and average token lengths of records."""
    n = len(records)
    prompt = sum(r["n_prompt_tokens"] for r in records)
    total = sum(len(r["input_ids"]) for r in records)
    return {
        "n_records": n,
        "prompt_tokens": prompt,
        "completion_tokens": total - prompt,
        "mean_prompt_tokens": prompt / n if n else 0.0,
        "mean_completion_tokens": (total - prompt) / n if n else 0.0,
        "max_tokens": max((len(r["input_ids"]) for r in records), default=0),
    }
