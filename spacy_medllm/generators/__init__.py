"""Generators: the backends that answer prompts (transformers, OpenAI-compatible servers).

Importing this package registers the generator factories with spaCy; it imports neither torch nor
openai: the modules load those on first use.
"""

from .base import GenerationError, Generator, Message, Prompt
from .hf import HFGenerator, make_hf_generator
from .openai_compat import OpenAIGenerator, make_openai_generator

__all__ = [
    "GenerationError",
    "Generator",
    "HFGenerator",
    "Message",
    "OpenAIGenerator",
    "Prompt",
    "make_hf_generator",
    "make_openai_generator",
]
