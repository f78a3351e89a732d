"""The one prompt builder: chat messages for a text, and the canonical JSON answer for its entities.

Training records and inference prompts are both made here, so a fine-tuned model is always
prompted exactly as it was trained.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spacy.util import registry

from spacy_medllm.core.labels import LabelSet

Message = dict[str, str]
Prompt = list[Message]

DEFAULT_INSTRUCTION = (
    "Extract the medical entities from the user's text.\n"
    "Labels:\n{label_lines}\n"
    'Answer with a JSON list of {{"text": ..., "label": ...}} objects in order of appearance, '
    "copying each entity's text exactly as it is written. Answer [] if there is none."
)


@dataclass(frozen=True)
class PromptTemplate:
    """What a prompt says: the instruction (`{label_lines}`, `{labels}` slots), few-shot examples.

    Each example is `{"text": str, "entities": [{"text": str, "label": str}, ...]}`.
    """

    instruction: str = DEFAULT_INSTRUCTION
    examples: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["examples"] = [dict(e) for e in self.examples]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptTemplate:
        return cls(instruction=data["instruction"], examples=tuple(data.get("examples", ())))

    @property
    def fingerprint(self) -> str:
        """A short hash that changes whenever the template's wording or examples change."""
        payload = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf8")).hexdigest()[:16]


@registry.misc("medllm.PromptTemplate.v1")
def make_prompt_template(
    instruction: str | None = None,
    examples: list[dict[str, Any]] | None = None,
    examples_path: str | None = None,
) -> PromptTemplate:
    """Build a prompt template from config; `examples_path` is a JSONL file of few-shot examples."""
    loaded: list[Mapping[str, Any]] = list(examples or [])
    if examples_path:
        with Path(examples_path).open(encoding="utf8") as file_:
            loaded.extend(json.loads(line) for line in file_ if line.strip())
    for example in loaded:
        if "text" not in example or "entities" not in example:
            raise ValueError(
                f"A few-shot example needs 'text' and 'entities' keys, got keys {sorted(example)}"
            )
    return PromptTemplate(instruction=instruction or DEFAULT_INSTRUCTION, examples=tuple(loaded))


EntityLike = tuple[str, str] | Mapping[str, str]


class PromptBuilder:
    """Turns a text into chat messages, and entities into the answer the model must give."""

    def __init__(self, labels: LabelSet, template: PromptTemplate | None = None) -> None:
        self.labels = labels
        self.template = template or PromptTemplate()
        self.system = self.template.instruction.format(
            label_lines="\n".join(
                f"- {label}: {definition}" if definition else f"- {label}"
                for label, definition in labels.definitions.items()
            ),
            labels=", ".join(labels.labels),
        )
        self._shots: list[Message] = []
        for example in self.template.examples:
            self._shots.append({"role": "user", "content": example["text"]})
            self._shots.append({"role": "assistant", "content": self.answer(example["entities"])})

    def messages(self, text: str) -> Prompt:
        """The chat messages that ask for the entities of `text`."""
        return [
            {"role": "system", "content": self.system},
            *self._shots,
            {"role": "user", "content": text},
        ]

    @staticmethod
    def answer(entities: Iterable[EntityLike]) -> str:
        """The canonical answer: a JSON list of {"text", "label"}, each pair once, in order."""
        seen = set()
        items = []
        for entity in entities:
            text, label = (
                (entity["text"], entity["label"]) if isinstance(entity, Mapping) else entity
            )
            if (text, label) in seen:
                continue
            seen.add((text, label))
            items.append({"text": text, "label": label})
        return json.dumps(items, ensure_ascii=False)

    @staticmethod
    def answer_for_spans(text: str, spans: Sequence[tuple[int, int, str]]) -> str:
        """The canonical answer for character spans (start, end, label) of `text`, by position."""
        ordered = sorted(spans, key=lambda s: (s[0], -s[1]))
        return PromptBuilder.answer((text[start:end], label) for start, end, label in ordered)

    @property
    def fingerprint(self) -> str:
        """Changes whenever the rendered system prompt or few-shot examples change."""
        payload = json.dumps([self.system, self._shots], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf8")).hexdigest()[:16]
