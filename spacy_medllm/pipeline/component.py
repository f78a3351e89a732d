"""The `medllm_ner` spaCy component: prompt a generative model, parse its JSON, set aligned spans.

This module is imported by spaCy's `spacy_factories` entry point every time any pipeline is built,
so it imports only spaCy and the standard library; models load lazily in the generators.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from spacy.language import Language
from spacy.pipeline import Pipe
from spacy.tokens import Doc, Span
from spacy.training import Example
from spacy.util import ensure_path, minibatch

from spacy_medllm.core.alignment import find_entities, snap_to_tokens
from spacy_medllm.core.chunking import ChunkingError, piece_budget, plan_chunks
from spacy_medllm.core.confidence import LOW_CONFIDENCE, ScoredResponse, entity_confidences
from spacy_medllm.core.labels import DEFAULT_LABELS, LabelSet
from spacy_medllm.core.language import LanguageCheck
from spacy_medllm.core.parsing import parse_response
from spacy_medllm.core.prompts import PromptBuilder, PromptTemplate
from spacy_medllm.core.records import ParseResult, Rejection
from spacy_medllm.generators import Generator
from spacy_medllm.pipeline.cache import ResponseCache, resolve_cache_dir
from spacy_medllm.pipeline.pieces import (
    CUT_OFF,
    MAX_HALVINGS,
    MIN_HALVED_CHARS,
    halve,
    text_cap,
)
from spacy_medllm.pipeline.resilience import Job, Resilience
from spacy_medllm.pipeline.spans import assign_spans

logger = logging.getLogger("spacy_medllm")


RECORD_ATTR = "medllm"

if not Doc.has_extension(RECORD_ATTR):
    # {component name: record}. Plain JSON-like data, so it survives DocBin and Doc.to_bytes.
    Doc.set_extension(RECORD_ATTR, default=None)

CONFIDENCE_ATTR = "medllm_confidence"

if not Span.has_extension(CONFIDENCE_ATTR):
    # Mean log-probability of the answer tokens of the span's entity (confidence = true only).
    Span.set_extension(CONFIDENCE_ATTR, default=None)

OUTPUT_MODES = ("ents", "spans")

ALIGNMENT_MODES = ("strict", "contract", "expand")

REPEATED_MODES = ("all", "cursor")

LONG_DOCUMENT_MODES = ("split", "error")

UNTRAINED_LABEL_MODES = ("error", "allow")

_warned_zero_shot: set[str] = set()  # base models already warned about (once per process)


class MedLLMParseError(ValueError):
    """Raised in strict mode when a model response holds no readable JSON answer."""


def _choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"medllm_ner: {name} must be one of {list(allowed)}, got {value!r}")
    return value


class MedLLMNER(Resilience, Pipe):
    """Generative entity extraction as a spaCy pipe.

    text -> prompt (PromptBuilder) -> generator -> response -> parse_response -> find_entities
    -> snap_to_tokens -> doc.ents or doc.spans[spans_key]. What could not be used is recorded in
    `doc._.medllm[component name]`: parse errors with the response, and every emitted entity that
    did not become a span, with its reason.

    labels, label_definitions, prompt: None (the defaults) takes what the generator's adapter
        was trained with (its prompt_template.json); with no adapter settings, the default
        medical labels and prompt. The default generator is SmolLM2-135M-Instruct with the
        packaged English adapter "medllm-en" (DRUG, ADVERSE_EVENT) and grounded constrained
        decoding, so `nlp.add_pipe("medllm_ner")` works offline with no config.
    untrained_labels: "error" refuses labels the adapter was not trained on, saying what to do;
        "allow" prompts for them anyway.
    output: "ents" (overlaps resolved, longest span wins) or "spans" (all spans kept, in
        doc.spans[spans_key]).
    overwrite_ents: with "ents", replace the Doc's existing entities instead of keeping them and
        adding only non-conflicting new ones.
    alignment_mode: how found character offsets snap to tokens ("strict", "contract", "expand").
    case_sensitive / fuzzy_match: which fallbacks the string search may use after an exact match.
    repeated_mentions: "all" marks every occurrence of an entity string; "cursor" maps the
        model's mentions in order onto successive occurrences.
    long_documents: "split" cuts documents longer than the model's context at sentence
        boundaries and merges the spans back; "error" raises a clear error instead.
    max_chunk_tokens: prompt at most this many tokens of document text at once (sentence-aligned
        pieces, as for long documents; the instructions and examples come on top). None: as much
        as the model's context allows. Meant for models trained on pieces of that size
        (`finetune --max-chunk-tokens`, whose adapter sets it when assembled): a model trained on
        whole abstracts, given pieces, still writes abstract-length lists (README, NCBI-disease).
        Needs long_documents = "split".
    save_io: keep each prompt and raw response in the record.
    strict: raise instead of recording: MedLLMParseError when a response cannot be parsed, and
        the generator's error when a request fails. Not strict (the default), a failed request
        (server down, timeout, HTTP error) is recorded on its document (record "error", and the
        pieces in "failed_chunks"), counted (`summarise_records`: n_errors) and logged, and
        `nlp.pipe` goes on with the next documents; a batch that fails as a whole is retried
        one document at a time, so one bad document does not take the others down.
    Answers that ran out (the JSON list cut off at the answer budget) are flagged: the chunk's
    "truncated" and the record's "n_truncated". With a generator that tells its answer budget
    (`answer_token_budget()`, the OpenAI-compatible backend), pieces are at most as long as an
    answer can list (`pipeline.pieces`), and a piece whose answer ran out all the same is cut in
    two and asked again ("split_again").
    The pipeline's language (`nlp.lang`) is what the model is taken to read: text that looks
    like another language (`core.language`) is noted in the record ("language") and warned
    about once per component.
    confidence: score each entity by the mean log-probability of its answer tokens (needs a
        generator with `generate_scored`, such as medllm.HFGenerator.v1): `span._.medllm_confidence`
        and the record's chunks[i]["confidence"].
    confidence_threshold: drop entities scored below it (implies confidence); they are recorded
        as rejected with reason "low_confidence".
    cache_dir: a folder for the response cache (`spacy_medllm.pipeline.cache`), shared between runs
    and
        pipelines; None uses $SPACY_MEDLLM_RESPONSE_CACHE if set, else no cache. Each chunk's
        record says "cache": "hit", "miss" or "corrupt"; the record's "cache" counts them.
    """

    def __init__(
        self,
        vocab,
        name: str = "medllm_ner",
        *,
        generator: Generator,
        labels: Sequence[str] | None = None,
        label_definitions: dict[str, str] | None = None,
        label_aliases: dict[str, str] | None = None,
        prompt: PromptTemplate | None = None,
        output: str = "ents",
        spans_key: str = "medllm",
        overwrite_ents: bool = False,
        alignment_mode: str = "expand",
        case_sensitive: bool = False,
        fuzzy_match: bool = True,
        repeated_mentions: str = "all",
        long_documents: str = "split",
        save_io: bool = False,
        strict: bool = False,
        scorer: Callable | None = None,
        confidence: bool = False,
        confidence_threshold: float | None = None,
        cache_dir: str | None = None,
        max_chunk_tokens: int | None = None,
        untrained_labels: str = "error",
    ) -> None:
        self.vocab = vocab
        self.name = name
        self.generator = generator
        self.output = _choice("output", output, OUTPUT_MODES)
        self.spans_key = spans_key
        self.overwrite_ents = overwrite_ents
        self.alignment_mode = _choice("alignment_mode", alignment_mode, ALIGNMENT_MODES)
        self.case_sensitive = case_sensitive
        self.fuzzy_match = fuzzy_match
        self.repeated_mentions = _choice("repeated_mentions", repeated_mentions, REPEATED_MODES)
        self.long_documents = _choice("long_documents", long_documents, LONG_DOCUMENT_MODES)
        self.untrained_labels = _choice("untrained_labels", untrained_labels, UNTRAINED_LABEL_MODES)
        trained = _trained_settings(generator)
        if trained is not None:
            labels, label_definitions, prompt = self._as_trained(
                trained, labels, label_definitions, prompt
            )
            if max_chunk_tokens is None:
                max_chunk_tokens = trained["max_chunk_tokens"]
        else:
            _warn_zero_shot(generator)
        if labels is None:
            labels = list(DEFAULT_LABELS)
        if max_chunk_tokens is not None:
            if isinstance(max_chunk_tokens, bool) or not isinstance(max_chunk_tokens, int):
                raise ValueError(
                    f"medllm_ner: max_chunk_tokens must be a whole number, got {max_chunk_tokens!r}"
                )
            if max_chunk_tokens < 1:
                raise ValueError(
                    f"medllm_ner: max_chunk_tokens must be >= 1, got {max_chunk_tokens}"
                )
            if self.long_documents != "split":
                raise ValueError(
                    "medllm_ner: max_chunk_tokens cuts documents into pieces; it needs "
                    f'long_documents = "split", not {self.long_documents!r}'
                )
        self.max_chunk_tokens = max_chunk_tokens
        self.save_io = save_io
        self.strict = strict
        self.scorer = scorer
        self.confidence_threshold = confidence_threshold
        self.confidence = bool(confidence) or confidence_threshold is not None
        if self.confidence and not callable(getattr(generator, "generate_scored", None)):
            raise ValueError(
                f"medllm_ner: confidence needs a generator that scores tokens (generate_scored), "
                f"such as medllm.HFGenerator.v1; {type(generator).__name__} does not."
            )
        self.cache_dir = cache_dir
        resolved_cache = resolve_cache_dir(cache_dir)
        self.response_cache = ResponseCache(resolved_cache) if resolved_cache else None
        self._label_definitions = dict(label_definitions or {})
        self._label_aliases = dict(label_aliases or {})
        self._template = prompt or PromptTemplate()
        lang = getattr(vocab, "lang", None)
        self._language = LanguageCheck(lang) if lang and lang != "xx" else None
        self._warned_language = False
        self._warned_cut_off = False
        self.n_failed_docs = 0  # documents with a failed request, since the component was built
        # Definitions for labels that are not predicted are almost always a typo: say so.
        LabelSet(labels, self._label_definitions, self._label_aliases)
        self._set_labels(labels)

    # -- labels and prompt -------------------------------------------------------------------

    def _as_trained(
        self,
        trained: dict[str, Any],
        labels: Sequence[str] | None,
        definitions: dict[str, str] | None,
        prompt: PromptTemplate | None,
    ) -> tuple[list[str], dict[str, str], PromptTemplate]:
        """The labels, definitions and prompt of the adapter's training, unless given; labels
        it was not trained on are refused (untrained_labels = "error") with what to do."""
        known = list(trained["labels"])
        if labels is None:
            labels = known
        unknown = [label for label in labels if label not in known]
        if unknown and self.untrained_labels == "error":
            raise ValueError(
                f"medllm_ner: the adapter was trained to find {', '.join(known)}; it was not "
                f"trained on {', '.join(unknown)}, and would answer [] for them or guess. Train "
                "an adapter that knows them (python -m spacy_medllm finetune --labels ...; "
                "docs/your-own-corpus.md), keep to the labels it knows, or set untrained_labels "
                '= "allow" to prompt for them anyway (quality not measured).'
            )
        merged = {k: v for k, v in trained["label_definitions"].items() if k in labels}
        merged.update(definitions or {})
        return list(labels), merged, prompt or trained["template"]

    def _set_labels(self, labels: Sequence[str]) -> None:
        definitions = {k: v for k, v in self._label_definitions.items() if k in labels}
        self.label_set = LabelSet(labels, definitions, self._label_aliases)
        self.prompt_builder = PromptBuilder(self.label_set, self._template)
        set_labels = getattr(self.generator, "set_labels", None)
        if callable(set_labels):  # constrained decoding may answer with these labels only
            set_labels(list(self.label_set.labels))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.label_set.labels)

    def add_label(self, label: str, definition: str = "") -> int:
        """Add a label to the prompt. Returns 0 if it was there already, 1 otherwise."""
        if label in self.label_set:
            return 0
        if definition:
            self._label_definitions[label] = definition
        self._set_labels([*self.labels, label])
        return 1

    # -- processing ----------------------------------------------------------------------------

    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]] | None = None,
        *,
        nlp: Language | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        """Load the model now. `labels` (from `[initialize.components]`) replaces the label set."""
        if labels is not None:
            self._set_labels(labels)
        self.generator.initialize()

    def __call__(self, doc: Doc) -> Doc:
        return self._process_batch([doc])[0]

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128) -> Iterator[Doc]:
        """Process docs in batches of the generator's batch size; every doc comes out again."""
        error_handler = self.get_error_handler()
        for docs in minibatch(stream, size=max(1, self.generator.batch_size)):
            try:
                yield from self._process_batch(docs)
            except Exception as error:
                error_handler(self.name, self, docs, error)
                # The handler chose not to raise: nothing is lost, each doc says what happened.
                for doc in docs:
                    self._record(doc)["error"] = f"{type(error).__name__}: {error}"
                    yield doc

    def _record(self, doc: Doc) -> dict[str, Any]:
        store = doc._.get(RECORD_ATTR)
        if store is None:
            store = {}
            doc._.set(RECORD_ATTR, store)
        return store.setdefault(self.name, {})

    def _new_record(self, doc: Doc) -> dict[str, Any]:
        record = self._record(doc)
        record.clear()
        record.update(
            {
                "chunks": [],
                "n_emitted": 0,
                "n_spans": 0,
                "parse_errors": [],
                "repairs": [],
                "rejected": [],
                "skipped": None,
                "error": None,
                "failed_chunks": [],
                "n_truncated": 0,
                "split_again": [],
                "language": None,
                "cache": None,
            }
        )
        return record

    def _process_batch(self, docs: Sequence[Doc]) -> list[Doc]:
        # Doc.text joins all tokens on each access: read it once per doc, not once per chunk (a
        # 20,000-word document has thousands of chunks).
        texts = [doc.text for doc in docs]
        jobs: list[Job] = []
        planned: list[int] = []
        for i, doc in enumerate(docs):
            record = self._new_record(doc)
            if not texts[i].strip():
                record["skipped"] = "empty document"
                continue
            self._check_language(texts[i], record)
            try:
                ranges = self._chunks(doc)
            except ChunkingError as error:
                if self.strict or self.long_documents == "error":
                    raise
                self._fail(doc, error)
                continue
            planned.append(i)
            jobs.extend((i, start, end, 0) for start, end in ranges)
        found: dict[int, list[Span]] = {i: [] for i in planned}
        split_again = text_cap(self.generator) is not None
        while jobs:
            prompts, answers, lookups = self._generate(docs, texts, jobs)
            again: list[Job] = []
            for job, prompt, answer, lookup in zip(jobs, prompts, answers, lookups, strict=True):
                if answer is None:  # the request failed: recorded on the document
                    continue
                i, start, end, halved = job
                parsed = parse_response(answer.text, self.label_set)
                cut_off = CUT_OFF in parsed.repairs
                if (
                    cut_off
                    and split_again
                    and halved < MAX_HALVINGS
                    and end - start >= MIN_HALVED_CHARS
                ):
                    pieces = halve(texts[i], start, end)
                    if len(pieces) > 1:
                        self._record(docs[i])["split_again"].append({"start": start, "end": end})
                        again.extend((i, a, b, halved + 1) for a, b in pieces)
                        continue
                scores = answer if self.confidence else None
                found[i].extend(
                    self._read_response(
                        docs[i], start, end, prompt, answer.text, scores,
                        text=texts[i][start:end], parsed=parsed, cut_off=cut_off,
                    )
                )  # fmt: skip
                if lookup is not None:
                    self._count_cache(self._record(docs[i]), lookup)
            jobs = again
        for i in planned:
            record = self._record(docs[i])
            if record["error"] is None or record["chunks"]:
                self._assign(docs[i], found[i])
        return list(docs)

    @staticmethod
    def _count_cache(record: dict[str, Any], lookup: Any) -> None:
        """Note the last chunk's cache lookup in the chunk and in the record's counts."""
        chunk = record["chunks"][-1]
        chunk["cache"] = lookup.status
        counts = record["cache"] or {"hit": 0, "miss": 0, "corrupt": 0, "problems": []}
        counts[lookup.status] += 1
        if lookup.detail and lookup.status != "hit":
            counts["problems"].append({"start": chunk["start"], "detail": lookup.detail})
        record["cache"] = counts

    def _chunks(self, doc: Doc) -> list[tuple[int, int]]:
        def count_tokens(text: str) -> int:
            return self.generator.count_prompt_tokens(self.prompt_builder.messages(text))

        cap = self.max_chunk_tokens
        answer_cap = text_cap(self.generator)  # pieces whose list of entities fits the answer
        if answer_cap is not None:
            cap = answer_cap if cap is None else min(cap, answer_cap)
        budget = piece_budget(count_tokens, cap, self.generator.prompt_token_budget())
        if budget is None:
            return [(0, len(doc.text))]
        try:
            return plan_chunks(
                doc,
                budget=budget,
                count_tokens=count_tokens,
                allow_split=self.long_documents == "split",
            )
        except ChunkingError as error:
            raise ChunkingError(f"medllm_ner ({self.name}): {error}") from error

    def _read_response(
        self,
        doc: Doc,
        start: int,
        end: int,
        prompt: list[dict[str, str]],
        response: str,
        scores: ScoredResponse | None = None,
        *,
        text: str | None = None,
        parsed: ParseResult | None = None,
        cut_off: bool = False,
    ) -> list[Span]:
        """Parse one chunk's response (unless `parsed`) and align it; `text` is
        doc.text[start:end] if known; `cut_off`: the answer ran out (flagged in the record)."""
        record = self._record(doc)
        chunk: dict[str, Any] = {"start": start, "end": end}
        if self.save_io:
            chunk["prompt"] = prompt
            chunk["response"] = response
        if cut_off:
            chunk["truncated"] = True
            record["n_truncated"] += 1
            self._warn_cut_off()
        record["chunks"].append(chunk)
        if parsed is None:
            parsed = parse_response(response, self.label_set)
        record["repairs"].extend(r for r in parsed.repairs if r not in record["repairs"])
        chunk["n_emitted"] = len(parsed.entities) + len(parsed.rejections)
        record["n_emitted"] += chunk["n_emitted"]
        if not parsed.ok:
            if self.strict:
                raise MedLLMParseError(
                    f"medllm_ner ({self.name}) could not parse the model's answer for characters "
                    f"{start}-{end}: {parsed.error}. Response: {response!r}"
                )
            record["parse_errors"].append(
                {"start": start, "end": end, "error": parsed.error, "response": response}
            )
        entities, confidences, low = parsed.entities, {}, []
        if scores is not None:
            entities, confidences, low = self._score_entities(chunk, parsed.entities, scores)
        aligned, not_found = find_entities(
            doc.text[start:end] if text is None else text,
            entities,
            case_sensitive=self.case_sensitive,
            fuzzy=self.fuzzy_match,
            repeated=self.repeated_mentions,
        )
        spans, misaligned = snap_to_tokens(doc, aligned, mode=self.alignment_mode, offset=start)
        self._reject(record, [*parsed.rejections, *low, *not_found, *misaligned])
        if scores is not None:
            by_span: dict[tuple[int, int, str], float] = {}
            for entity in aligned:
                value = confidences.get((entity.text, entity.label))
                span = doc.char_span(
                    entity.start + start,
                    entity.end + start,
                    label=entity.label,
                    alignment_mode=self.alignment_mode,
                )
                if value is not None and span is not None:
                    key = (span.start, span.end, entity.label)
                    by_span[key] = min(value, by_span.get(key, value))
            for span in spans:
                span._.set(CONFIDENCE_ATTR, by_span.get((span.start, span.end, span.label_)))
        return spans

    def _score_entities(
        self, chunk: dict[str, Any], entities: list[Any], scores: ScoredResponse
    ) -> tuple[list[Any], dict[tuple[str, str], float], list[Rejection]]:
        """Each parsed entity's confidence (into the chunk record); those under the threshold out.

        A string emitted twice with one label keeps its lower score.
        """
        values = entity_confidences(scores, [(e.text, e.raw_label or e.label) for e in entities])
        chunk["confidence"] = [
            {"text": e.text, "label": e.label, "confidence": v}
            for e, v in zip(entities, values, strict=True)
        ]
        confidences: dict[tuple[str, str], float] = {}
        for entity, value in zip(entities, values, strict=True):
            if value is not None:
                key = (entity.text, entity.label)
                confidences[key] = min(value, confidences.get(key, value))
        threshold = self.confidence_threshold
        if threshold is None:
            return list(entities), confidences, []
        kept, low = [], []
        for entity, value in zip(entities, values, strict=True):
            if value is not None and value < threshold:
                low.append(
                    Rejection(
                        entity.text,
                        entity.label,
                        LOW_CONFIDENCE,
                        f"confidence {value:.3f} is below the threshold {threshold}",
                    )
                )
            else:
                kept.append(entity)
        return kept, confidences, low

    def _reject(self, record: dict[str, Any], rejections: Iterable[Rejection]) -> None:
        record["rejected"].extend(r.to_dict() for r in rejections)

    def _assign(self, doc: Doc, spans: list[Span]) -> None:
        assign_spans(
            doc,
            spans,
            self._record(doc),
            output=self.output,
            spans_key=self.spans_key,
            overwrite_ents=self.overwrite_ents,
        )

    # -- scoring -------------------------------------------------------------------------------

    def score(self, examples: Iterable[Example], **kwargs) -> dict[str, Any]:
        if self.scorer is None:
            raise NotImplementedError("medllm_ner was built without a scorer")
        return self.scorer(examples, output=self.output, spans_key=self.spans_key, **kwargs)

    # -- serialization -------------------------------------------------------------------------

    def to_disk(self, path, *, exclude: Iterable[str] = tuple()) -> None:
        path = ensure_path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {
            "labels": list(self.labels),
            "label_definitions": self.label_set.definitions,
            "label_aliases": self._label_aliases,
            "template": self._template.to_dict(),
        }
        (path / "cfg.json").write_text(json.dumps(state, indent=2, ensure_ascii=False), "utf8")
        if "generator" not in exclude:
            self.generator.to_disk(path / "generator")

    def from_disk(self, path, *, exclude: Iterable[str] = tuple()) -> MedLLMNER:
        path = ensure_path(path)
        state = json.loads((path / "cfg.json").read_text("utf8"))
        self._label_definitions = dict(state.get("label_definitions", {}))
        self._label_aliases = dict(state.get("label_aliases", {}))
        self._template = PromptTemplate.from_dict(state["template"])
        self._set_labels(state["labels"])
        if "generator" not in exclude and (path / "generator").exists():
            self.generator.from_disk(path / "generator")
        return self


def _trained_settings(generator: Any) -> dict[str, Any] | None:
    """The prompt settings the generator's adapter was trained with, if it can say."""
    method = getattr(generator, "trained_settings", None)
    return method() if callable(method) else None


def _warn_zero_shot(generator: Any) -> None:
    """Say once per base model that a small model without an adapter answers poorly."""
    if getattr(generator, "adapter", "n/a") is not None:  # an adapter, or not the HF backend
        return
    model = str(getattr(generator, "model", ""))
    if model in _warned_zero_shot:
        return
    _warned_zero_shot.add(model)
    logger.warning(
        "medllm_ner: %s runs without an adapter. Zero-shot answers of a small base model are "
        "poor (SmolLM2-135M: seed F1 0.00 zero-shot, docs/seed-benchmark.md); answers stay "
        "bounded in time (answers sized to the text, constrained decoding if set). Use the "
        'packaged adapter (adapter = "medllm-en") or your own.',
        model,
    )


def get_record(doc: Doc, component: str = "medllm_ner") -> dict[str, Any] | None:
    """What `component` recorded for `doc` (parse errors, rejected entities, prompts), or None."""
    store = doc._.get(RECORD_ATTR) or {}
    return store.get(component)
