"""The `medllm_ner` factory: its default config (the packaged adapter, grounded decoding) and
the function spaCy's `spacy_factories` entry point names.

spaCy imports this module each time any pipeline is built, so it imports only spaCy and the
standard library; models load lazily in the generators.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spacy.language import Language

from spacy_medllm.core.prompts import PromptTemplate
from spacy_medllm.generators import Generator
from spacy_medllm.pipeline.component import RECORD_ATTR, MedLLMNER

DEFAULT_CONFIG = """
[medllm_ner]
labels = null
label_definitions = {}
label_aliases = {}
output = "ents"
spans_key = "medllm"
overwrite_ents = false
alignment_mode = "expand"
case_sensitive = false
fuzzy_match = true
repeated_mentions = "all"
long_documents = "split"
max_chunk_tokens = null
save_io = false
strict = false
confidence = false
confidence_threshold = null
cache_dir = null
prompt = null
untrained_labels = "error"

[medllm_ner.generator]
@misc = "medllm.DefaultGenerator.v1"

[medllm_ner.scorer]
@scorers = "medllm.ner_scorer.v1"
"""


def _default_config() -> dict[str, Any]:
    from thinc.api import Config

    return Config().from_str(DEFAULT_CONFIG)["medllm_ner"]


@Language.factory(
    "medllm_ner",
    default_config=_default_config(),
    assigns=["doc.ents", "doc.spans", f"doc._.{RECORD_ATTR}"],
    default_score_weights={
        "ents_f": 1.0,
        "ents_p": 0.0,
        "ents_r": 0.0,
        "ents_unlabeled_f": 0.0,
        "ents_per_type": None,
    },
)
def make_medllm_ner(
    nlp: Language,
    name: str,
    generator: Generator,
    labels: list[str] | None,
    label_definitions: dict[str, str],
    label_aliases: dict[str, str],
    prompt: PromptTemplate | None,
    output: str,
    spans_key: str,
    overwrite_ents: bool,
    alignment_mode: str,
    case_sensitive: bool,
    fuzzy_match: bool,
    repeated_mentions: str,
    long_documents: str,
    save_io: bool,
    strict: bool,
    scorer: Callable | None,
    confidence: bool = False,
    confidence_threshold: float | None = None,
    cache_dir: str | None = None,
    max_chunk_tokens: int | None = None,
    untrained_labels: str = "error",
) -> MedLLMNER:
    """Build a `medllm_ner` component; see MedLLMNER for what each setting does."""
    return MedLLMNER(
        nlp.vocab,
        name,
        generator=generator,
        labels=labels,
        label_definitions=label_definitions,
        label_aliases=label_aliases,
        prompt=prompt,
        output=output,
        spans_key=spans_key,
        overwrite_ents=overwrite_ents,
        alignment_mode=alignment_mode,
        case_sensitive=case_sensitive,
        fuzzy_match=fuzzy_match,
        repeated_mentions=repeated_mentions,
        long_documents=long_documents,
        save_io=save_io,
        strict=strict,
        scorer=scorer,
        confidence=confidence,
        confidence_threshold=confidence_threshold,
        cache_dir=cache_dir,
        max_chunk_tokens=max_chunk_tokens,
        untrained_labels=untrained_labels,
    )
