"""Generators: the backends that answer prompts (transformers, OpenAI-compatible servers).

This package exports the protocol only. The registered factories live in `generators.registry`
and import a backend's module when a generator is built; `generators.hf` (transformers + peft)
and `generators.openai_compat` (the `openai` client) import their libraries on first use.
"""

from spacy_medllm.generators.base import GenerationError, Generator, Message, Prompt

__all__ = ["GenerationError", "Generator", "Message", "Prompt"]
