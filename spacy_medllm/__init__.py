"""spacy-medllm: fine-tuned generative LLMs as a spaCy component for medical entity extraction.

`import spacy_medllm` registers the `medllm_ner` factory and the `medllm.*` functions with spaCy
without importing torch, transformers, peft or openai.
"""

from spacy_medllm.core.labels import DEFAULT_LABEL_DEFINITIONS, DEFAULT_LABELS, LabelSet
from spacy_medllm.core.prompts import PromptBuilder, PromptTemplate
from spacy_medllm.pipeline.component import MedLLMNER, get_record
from spacy_medllm.pipeline.factory import make_medllm_ner
from spacy_medllm.pipeline.scoring import score_entities

from .about import __version__

__all__ = [
    "DEFAULT_LABELS",
    "DEFAULT_LABEL_DEFINITIONS",
    "LabelSet",
    "MedLLMNER",
    "PromptBuilder",
    "PromptTemplate",
    "__version__",
    "get_record",
    "make_medllm_ner",
    "score_entities",
]
