"""A generator that answers from a script: for testing the component's logic apart from any model.

It implements the whole Generator protocol, records every prompt it receives, and can be told to
fail, so tests can check batching, chunking and error handling exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spacy.util import registry

Prompt = list[dict[str, str]]


class ScriptedGenerator:
    def __init__(
        self,
        answer: Callable[[str], str],
        batch_size: int = 4,
        budget: int | None = None,
        fail_on: str | None = None,
    ) -> None:
        self.answer = answer
        self.batch_size = batch_size
        self.budget = budget
        self.fail_on = fail_on
        self.calls: list[list[str]] = []
        self.initialized = False
        self.saved_state: dict[str, Any] = {"note": "scripted"}

    def __call__(self, prompts: Sequence[Prompt]) -> list[str]:
        texts = [prompt[-1]["content"] for prompt in prompts]
        self.calls.append(texts)
        if self.fail_on is not None and any(self.fail_on in t for t in texts):
            raise RuntimeError(f"scripted failure on {self.fail_on!r}")
        return [self.answer(text) for text in texts]

    def describe(self) -> dict[str, Any]:
        return {"model": "scripted"}

    def prompt_token_budget(self) -> int | None:
        return self.budget

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        # One token per word of the user text, plus a fixed overhead for the instruction.
        return 10 + len(prompt[-1]["content"].split())

    def initialize(self) -> None:
        self.initialized = True

    def to_disk(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "scripted.json").write_text(json.dumps(self.saved_state))

    def from_disk(self, path: Path) -> None:
        self.saved_state = json.loads((path / "scripted.json").read_text())


def lexicon_answer(lexicon: dict[str, str]) -> Callable[[str], str]:
    """Answer with every lexicon entry that occurs in the text, as the canonical JSON list."""

    def answer(text: str) -> str:
        found = sorted(
            ((text.find(term), term, label) for term, label in lexicon.items() if term in text)
        )
        return json.dumps([{"text": term, "label": label} for _, term, label in found])

    return answer


@registry.misc("test.ScriptedLexiconGenerator.v1")
def make_scripted_lexicon_generator(
    lexicon: dict[str, str], batch_size: int = 4, budget: int | None = None
) -> ScriptedGenerator:
    return ScriptedGenerator(lexicon_answer(lexicon), batch_size=batch_size, budget=budget)
