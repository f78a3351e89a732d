"""The generator protocol: chat prompts in, response strings out. Standard library only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]
Prompt = list[Message]

# The registered names of the generator factories (`registry.py`); the generator classes name
# their own factory in the configs they write.
HF_GENERATOR = "medllm.HFGenerator.v1"
DEFAULT_GENERATOR = "medllm.DefaultGenerator.v1"
OPENAI_GENERATOR = "medllm.OpenAIGenerator.v1"

# Answers sized to the text (`sized_answers` of both backends): at most this many tokens plus so
# many per token of the text, so that a short text cannot ramble to max_new_tokens.
ANSWER_BASE_TOKENS = 24
ANSWER_TOKENS_PER_TEXT_TOKEN = 3


class GenerationError(RuntimeError):
    """A generator could not produce responses (server down, model missing, out of memory...)."""


@runtime_checkable
class Generator(Protocol):
    """What `medllm_ner` needs from a backend.

    `__call__` returns one response string per prompt, in the prompts' order. The component cuts its
    stream into batches of `batch_size` prompts. Generators load their model lazily, on the first
    call or in `initialize()`, so that building a pipeline stays cheap.
    """

    batch_size: int

    def __call__(self, prompts: Sequence[Prompt]) -> list[str]: ...

    def describe(self) -> dict[str, Any]:
        """All that determines the output: model reference, adapter hash, generation settings."""
        ...

    def prompt_token_budget(self) -> int | None:
        """How many prompt tokens fit the model's context next to the answer, or None if unknown."""
        ...

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        """The number of tokens `prompt` takes once rendered for the model."""
        ...

    def initialize(self) -> None:
        """Load the model now rather than on the first call."""
        ...

    def to_disk(self, path: Path) -> None:
        """Save what belongs to the pipeline (adapter weights, settings), never the base model."""
        ...

    def from_disk(self, path: Path) -> None:
        """Restore what `to_disk` saved; the base model is found again by its reference."""
        ...
