"""Rendering chat messages to the exact text a causal LM sees, for inference and training alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Message = dict[str, str]

# Used for base models that ship no chat template (for example Gemma-3-270M base). It follows the
# seed project's "### Input / ### Response" format, with the instruction as a preamble.
PLAIN_TEMPLATE_NAME = "medllm-plain-v1"


def _render_plain(messages: Sequence[Message], add_generation_prompt: bool) -> str:
    parts: list[str] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "system":
            parts.append(f"{content}\n\n")
        elif role == "user":
            parts.append(f"### Input:\n{content}\n\n### Response:\n")
        elif role == "assistant":
            parts.append(f"{content}\n\n")
        else:
            raise ValueError(f"Unknown chat role {role!r}")
    if not add_generation_prompt and parts and messages[-1]["role"] == "user":
        parts[-1] = parts[-1][: -len("### Response:\n")]
    return "".join(parts)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, messages: Sequence[Message]) -> str:
    """The text that asks the model for the assistant's next answer."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
    return _render_plain(messages, add_generation_prompt=True)


def render_completion(tokenizer: Any, answer: str) -> str:
    """The text a model should generate after `render_prompt`: the answer and end-of-turn marker.

    The prompt + completion pair of a training record is exactly what inference sees followed by
    what it should produce, so the loss can be restricted to the completion.
    """
    eos = getattr(tokenizer, "eos_token", None) or ""
    if has_chat_template(tokenizer):
        # The chat template renders the assistant turn; take what follows the generation prompt.
        probe: list[Message] = [{"role": "user", "content": "x"}]
        prompt = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*probe, {"role": "assistant", "content": answer}], tokenize=False
        )
        if full.startswith(prompt):
            completion = full[len(prompt) :]
            # Keep the end-of-turn marker the template writes, drop trailing whitespace after it.
            return completion.rstrip("\n") if completion.rstrip("\n").endswith(eos) else completion
        return answer + eos
    return answer + eos


def render_training_pair(
    tokenizer: Any, messages: Sequence[Message], answer: str
) -> tuple[str, str]:
    """(prompt, completion) texts of one training record."""
    return render_prompt(tokenizer, messages), render_completion(tokenizer, answer)
