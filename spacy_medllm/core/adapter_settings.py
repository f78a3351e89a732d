"""The prompt settings saved beside an adapter (`prompt_template.json`): labels, their definitions,
the prompt template and the piece size it was trained on, so that a pipeline prompts the model
exactly as it was trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spacy_medllm.core.prompts import PromptTemplate

PROMPT_TEMPLATE_FILE = "prompt_template.json"


def load_prompt_settings(adapter_dir: str | Path) -> dict[str, Any]:
    """The labels, label definitions and PromptTemplate an adapter was trained with.

    Returns {"labels": [...], "label_definitions": {...}, "template": PromptTemplate,
    "max_chunk_tokens": int | None}: what medllm_ner needs to prompt the model exactly as it was
    trained (max_chunk_tokens: the size of the pieces it was trained on; None: whole texts).
    """
    data = json.loads((Path(adapter_dir) / PROMPT_TEMPLATE_FILE).read_text(encoding="utf8"))
    return {
        "labels": list(data["labels"]),
        "label_definitions": dict(data.get("label_definitions", {})),
        "template": PromptTemplate.from_dict(data["template"]),
        "max_chunk_tokens": data.get("max_chunk_tokens"),
    }
