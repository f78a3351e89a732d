"""Our generators as spacy-llm models, and a spacy-llm NER task that prompts as we train.

Registered names (spacy-llm's registries, entry points in pyproject.toml):

- `medllm.HF.v1` (`llm_models`): a transformers model plus an optional LoRA adapter
  (`spacy_medllm.generators.hf.generator.HFGenerator`), greedy and batched.
- `medllm.OpenAICompatible.v1` (`llm_models`): any OpenAI-compatible server
  (`spacy_medllm.generators.openai_compat.OpenAIGenerator`).
- `medllm.JSONNER.v1` (`llm_tasks`): prompts with `spacy_medllm.core.prompts.PromptBuilder` (the
  builder the LoRA adapters are trained with), parses with `parsing.py` and aligns with
  `alignment.py`, so a fine-tuned model sees exactly its training prompt.

spacy-llm hands models strings. A prompt string is either plain text (sent as one user message,
which is what spacy-llm's own tasks such as `spacy.NER.v3` produce) or chat messages encoded by
`encode_chat` (what `medllm.JSONNER.v1` produces), so system prompt and few-shot turns survive.

spacy-llm checks the model's and the task's type hints at run time and only accepts `typing`'s
generics there, hence `typing.Iterable` below.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Tuple  # noqa: UP035 - spacy-llm checks typing's generics

from spacy.scorer import Scorer
from spacy.tokens import Doc
from spacy.training import Example
from spacy.util import filter_spans
from spacy_llm.registry import registry

from spacy_medllm.core.alignment import find_entities, snap_to_tokens
from spacy_medllm.core.labels import LabelSet
from spacy_medllm.core.parsing import parse_response
from spacy_medllm.core.prompts import PromptBuilder, PromptTemplate
from spacy_medllm.generators.base import Generator, Prompt
from spacy_medllm.generators.hf.generator import HFGenerator
from spacy_medllm.generators.openai_compat import OpenAIGenerator
from spacy_medllm.pipeline.component import RECORD_ATTR

logger = logging.getLogger("spacy_medllm")

HF_MODEL_NAME = "medllm.HF.v1"
OPENAI_MODEL_NAME = "medllm.OpenAICompatible.v1"
JSON_NER_TASK_NAME = "medllm.JSONNER.v1"
# Marks a prompt string that carries chat messages rather than one user text.
CHAT_PREFIX = "<medllm-chat>"
# spacy-llm estimates prompt length in words; SmolLM2 has an 8192-token context.
DEFAULT_CONTEXT_LENGTH = 2048


def encode_chat(messages: Prompt) -> str:
    """A chat prompt as one string that `decode_prompt` turns back into the same messages."""
    return CHAT_PREFIX + json.dumps(list(messages), ensure_ascii=False)


def decode_prompt(prompt: str) -> Prompt:
    """The chat messages of a prompt string: encoded messages, or the text as one user turn."""
    if prompt.startswith(CHAT_PREFIX):
        messages = json.loads(prompt[len(CHAT_PREFIX) :])
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages
        ):
            raise ValueError(
                f"A prompt starting with {CHAT_PREFIX!r} must hold a JSON list of "
                '{"role", "content"} messages'
            )
        return messages
    return [{"role": "user", "content": prompt}]


class GeneratorModel:
    """A spacy-llm model around one of our generators: prompt strings in, response strings out.

    spacy-llm passes one inner iterable of prompts per document (one per shard); all prompts of
    a call go to the generator together, so it batches (and sorts by length) across documents.
    """

    def __init__(self, generator: Generator, context_length: int = DEFAULT_CONTEXT_LENGTH) -> None:
        if context_length < 1:
            raise ValueError(f"context_length must be at least 1, got {context_length}")
        self.generator = generator
        self._context_length = int(context_length)

    @property
    def context_length(self) -> int:
        """What spacy-llm's sharding tasks (`spacy.NER.v3`) fit a prompt into; set in config.

        Not read from the model: that would load it when the pipeline is built. The generator
        still refuses a prompt longer than the model's real context, with a clear error.
        """
        return self._context_length

    def __call__(self, prompts: Iterable[Iterable[str]]) -> Iterable[Iterable[str]]:
        per_doc = [list(doc_prompts) for doc_prompts in prompts]
        flat = [decode_prompt(prompt) for doc_prompts in per_doc for prompt in doc_prompts]
        responses = self.generator(flat) if flat else []
        if len(responses) != len(flat):
            raise RuntimeError(
                f"{type(self.generator).__name__} returned {len(responses)} responses for "
                f"{len(flat)} prompts"
            )
        out: list[list[str]] = []
        position = 0
        for doc_prompts in per_doc:
            out.append(list(responses[position : position + len(doc_prompts)]))
            position += len(doc_prompts)
        return out

    def describe(self) -> dict[str, Any]:
        """What determines the responses (model, adapter hash, settings): for logs and caches."""
        return self.generator.describe()

    def __repr__(self) -> str:
        return f"GeneratorModel({self.generator!r})"


@registry.llm_models(HF_MODEL_NAME)
def make_hf_model(
    model: str = "smollm2-135m-instruct",
    adapter: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    device: str = "auto",
    dtype: str = "auto",
    load_in_4bit: bool = False,
    num_threads: int = 0,
    cache_dir: str | None = None,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    quantize: str = "none",
    jump_forward: bool = True,
    draft_tokens: int = 4,
    float32_logits: bool = True,
) -> GeneratorModel:
    """A spacy-llm model: a transformers causal LM (+ LoRA adapter); loads on the first call.
    `quantize = "int8"`: int8 Linear weights on the CPU; `jump_forward`, `draft_tokens`: draft
    tokens checked against the model (same answers, fewer steps; both off: `generate`, as
    spacy-llm's own Hugging Face models decode); `float32_logits`: the logits of lower-precision
    weights from a float32 output head. See HFGenerator."""
    return GeneratorModel(
        HFGenerator(
            model=model,
            adapter=adapter,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            device=device,
            dtype=dtype,
            load_in_4bit=load_in_4bit,
            num_threads=num_threads,
            cache_dir=cache_dir,
            quantize=quantize,
            jump_forward=jump_forward,
            draft_tokens=draft_tokens,
            float32_logits=float32_logits,
        ),
        context_length=context_length,
    )


@registry.llm_models(OPENAI_MODEL_NAME)
def make_openai_model(
    model: str,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    batch_size: int = 8,
    max_concurrency: int = 4,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    timeout: float = 60.0,
    max_retries: int = 3,
    response_format_json: bool = False,
    extra_body: dict[str, Any] | None = None,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
) -> GeneratorModel:
    """A spacy-llm model: any OpenAI-compatible server; the key is read from `api_key_env`."""
    return GeneratorModel(
        OpenAIGenerator(
            model=model,
            base_url=base_url,
            api_key_env=api_key_env,
            batch_size=batch_size,
            max_concurrency=max_concurrency,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            timeout=timeout,
            max_retries=max_retries,
            response_format_json=response_format_json,
            extra_body=extra_body,
        ),
        context_length=context_length,
    )


class JSONNERTask:
    """spacy-llm task: our prompt builder, our JSON parser, our aligner; writes `doc.ents`.

    Each document gets a record in `doc._.medllm[record_key]` as `medllm_ner` writes one: the
    parse error if any, the repairs made to the JSON and every emitted entity that did not become
    a span, with the reason. Existing entities are replaced.
    """

    def __init__(
        self,
        labels: list[str],
        label_definitions: dict[str, str] | None = None,
        template: PromptTemplate | None = None,
        alignment_mode: str = "expand",
        case_sensitive: bool = False,
        fuzzy_match: bool = True,
        repeated_mentions: str = "all",
        record_key: str = "llm",
    ) -> None:
        self._definitions = dict(label_definitions or {})
        self._template = template or PromptTemplate()
        self.alignment_mode = alignment_mode
        self.case_sensitive = case_sensitive
        self.fuzzy_match = fuzzy_match
        self.repeated_mentions = repeated_mentions
        self.record_key = record_key
        self._set_labels(labels)

    def _set_labels(self, labels: list[str]) -> None:
        definitions = {k: v for k, v in self._definitions.items() if k in labels}
        self.label_set = LabelSet(labels, definitions)
        self.builder = PromptBuilder(self.label_set, self._template)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.label_set.labels)

    def add_label(self, label: str, label_definition: str | None = None) -> int:
        if label in self.label_set:
            return 0
        if label_definition:
            self._definitions[label] = label_definition
        self._set_labels([*self.labels, label])
        return 1

    def clear(self) -> None:
        raise ValueError(f"{JSON_NER_TASK_NAME} needs at least one label; it cannot be cleared.")

    @property
    def prompt_template(self) -> str:
        return self.builder.system

    def messages(self, text: str) -> Prompt:
        """The chat messages the model gets for `text` (exactly the training prompt)."""
        return self.builder.messages(text)

    def generate_prompts(
        self, docs: Iterable[Doc], context_length: int | None = None
    ) -> Iterable[Tuple[Iterable[str], Iterable[Doc]]]:  # noqa: UP006
        """One prompt per document, the document as its only shard: the synthetic texts are
        short, and `medllm_ner` is the component that splits long documents."""
        for doc in docs:
            yield [encode_chat(self.messages(doc.text))], [doc]

    def parse_responses(
        self, shards: Iterable[Iterable[Doc]], responses: Iterable[Iterable[str]]
    ) -> Iterable[Doc]:
        for doc_shards, doc_responses in zip(shards, responses, strict=True):
            (doc,) = doc_shards
            (response,) = doc_responses
            yield self.assign(doc, response)

    def assign(self, doc: Doc, response: str) -> Doc:
        """Parse one response, align its entities to `doc` and set them as `doc.ents`."""
        parsed = parse_response(response, self.label_set)
        aligned, not_found = find_entities(
            doc.text,
            parsed.entities,
            case_sensitive=self.case_sensitive,
            fuzzy=self.fuzzy_match,
            repeated=self.repeated_mentions,
        )
        spans, misaligned = snap_to_tokens(doc, aligned, mode=self.alignment_mode)
        spans = sorted(set(spans), key=lambda s: (s.start, -s.end, s.label_))
        kept = filter_spans(spans)
        rejected = [r.to_dict() for r in (*parsed.rejections, *not_found, *misaligned)]
        rejected.extend(
            {"text": s.text, "label": s.label_, "reason": "overlap", "detail": ""}
            for s in spans
            if s not in set(kept)
        )
        doc.ents = kept
        store = doc._.get(RECORD_ATTR) or {}
        store[self.record_key] = {
            "parse_error": None if parsed.ok else parsed.error,
            "repairs": list(parsed.repairs),
            "n_emitted": len(parsed.entities) + len(parsed.rejections),
            "n_spans": len(kept),
            "rejected": rejected,
        }
        doc._.set(RECORD_ATTR, store)
        return doc

    def scorer(self, examples: Iterable[Example]) -> dict[str, Any]:
        return Scorer.score_spans(examples, "ents", allow_overlap=False)


@registry.llm_tasks(JSON_NER_TASK_NAME)
def make_json_ner_task(
    labels: list[str] | str | None = None,
    label_definitions: dict[str, str] | None = None,
    adapter: str | None = None,
    alignment_mode: str = "expand",
    case_sensitive: bool = False,
    fuzzy_match: bool = True,
    repeated_mentions: str = "all",
    record_key: str = "llm",
) -> JSONNERTask:
    """The JSON NER task. `adapter`: a LoRA adapter folder (or its training output folder) whose
    `prompt_template.json` gives labels, definitions and prompt: the prompt it was trained with.
    Given `labels` (a list or a comma-separated string) replace the adapter's labels."""
    template = None
    definitions = dict(label_definitions or {})
    trained_labels: list[str] = []
    if adapter:
        from spacy_medllm.core.adapter_settings import PROMPT_TEMPLATE_FILE, load_prompt_settings

        folder = Path(adapter)
        if (folder / "adapter" / PROMPT_TEMPLATE_FILE).is_file():
            folder = folder / "adapter"
        if not (folder / PROMPT_TEMPLATE_FILE).is_file():
            raise FileNotFoundError(
                f"{JSON_NER_TASK_NAME}: {str(folder)!r} holds no {PROMPT_TEMPLATE_FILE}; give "
                "the adapter folder a fine-tuning run wrote, or labels without an adapter."
            )
        settings = load_prompt_settings(folder)
        template = settings["template"]
        trained_labels = settings["labels"]
        definitions = {**settings["label_definitions"], **definitions}
        if settings["max_chunk_tokens"] is not None:
            logger.warning(
                "%s: the adapter in %s was trained on pieces of at most %d text tokens, and this "
                "task prompts whole texts; for longer texts use medllm_ner, which reads them in "
                "those pieces.",
                JSON_NER_TASK_NAME,
                folder,
                settings["max_chunk_tokens"],
            )
    if isinstance(labels, str):
        labels = [label.strip() for label in labels.split(",") if label.strip()]
    chosen = list(labels or trained_labels)
    if not chosen:
        raise ValueError(f"{JSON_NER_TASK_NAME} needs labels, or an adapter that names them.")
    return JSONNERTask(
        labels=chosen,
        label_definitions={k: v for k, v in definitions.items() if k in chosen},
        template=template,
        alignment_mode=alignment_mode,
        case_sensitive=case_sensitive,
        fuzzy_match=fuzzy_match,
        repeated_mentions=repeated_mentions,
        record_key=record_key,
    )
