"""Reads a generative model's JSON answer, however sloppy or truncated, into labelled entities.

`parse_response(response, labels)` never raises for a string. It finds the JSON answer in the
response (skipping code fences, prose and `<think>` blocks), reads it with a tolerant JSON5-ish
parser and turns whatever shape the model chose into `ParsedEntity` records, and everything it
could not use into `Rejection` records. Every fix it had to make is named in `ParseResult.repairs`.

The tolerant reader is `spacy_medllm.core.json_reader.JsonReader`.

Answer shapes (keys compared case-insensitively; `labels.resolve` maps label names):

- the canonical list `[{"text": ..., "label": ...}, ...]`, with other key names for the text
  (`entity`, `name`, `span`, `value`, `mention`, ...) and the label (`type`, `category`, `tag`,
  `entity_type`, ...), `["text", "LABEL"]` pairs, and `{"LABEL": "text"}` single-key items;
- an object wrapping such a list (`{"entities": [...]}`, or any key whose value is a list);
- a label-keyed object `{"DRUG": ["a", "b"], "DISEASE": "c"}`, such as the seed project's
  `{"drug_name": "Abilify", "adverse_events": ["nausea"]}`.

Several JSON values in one response: values that follow each other with nothing but whitespace
or commas between them are one answer and are merged (JSON Lines, or objects listed without the
enclosing brackets: repair "merged_values"). Otherwise the first value that yields at least one
entity is the answer and later values are ignored (repair "extra_values"); when no value yields
an entity, the first value that looks like an answer (a list, an entity object, a label-keyed or
wrapping object, e.g. `[]`) is used, so `[]` is a valid empty answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from spacy_medllm.core.json_reader import MISSING, JArr, JObj, JsonReader, JStr, TooDeep
from spacy_medllm.core.labels import LabelSet
from spacy_medllm.core.records import (
    EMPTY_TEXT,
    MALFORMED,
    TRUNCATED,
    UNKNOWN_LABEL,
    ParsedEntity,
    ParseResult,
    Rejection,
)

# How many places that look like the start of a JSON value are tried before giving up.
MAX_CANDIDATES = 64

# Key names (normalised: lower case, non-alphanumerics as "_") of an entity item's text ...
TEXT_KEYS = (
    "text",
    "entity",
    "entity_text",
    "span",
    "span_text",
    "mention",
    "name",
    "value",
    "word",
    "term",
    "phrase",
    "string",
)

# ... and of its label.
LABEL_KEYS = (
    "label",
    "type",
    "entity_type",
    "category",
    "tag",
    "class",
    "entity_label",
    "ent_type",
    "entity_group",
    "kind",
    "labels",
)

# Keys of an object that wraps the entity list.
WRAPPER_KEYS = (
    "entities",
    "ents",
    "entity_list",
    "extracted_entities",
    "named_entities",
    "medical_entities",
    "results",
    "result",
    "annotations",
    "output",
    "answer",
    "data",
    "items",
    "predictions",
    "spans",
    "mentions",
    "ner",
    "response",
)

# Keys whose scalar values are commentary, not entities with an unknown label.
IGNORED_KEYS = (
    "note",
    "notes",
    "explanation",
    "comment",
    "comments",
    "reasoning",
    "reason",
    "count",
    "total",
    "language",
    "confidence",
    "score",
    "id",
    "start",
    "end",
    "source",
    "input",
    "document",
    "sentence",
    "status",
)


def _norm_key(key: Any) -> str:
    """A key for comparison with the key lists: lower case, words joined by "_"."""
    if isinstance(key, JStr):
        key = key.value
    if not isinstance(key, str):
        return ""
    return re.sub(r"[^0-9a-z]+", "_", key.lower()).strip("_")


def plain(value: Any) -> Any:
    """The parsed value as plain Python data (for rejections and debugging)."""
    if isinstance(value, JStr):
        return value.value
    if isinstance(value, JArr):
        return [plain(v) for v in value.items]
    if isinstance(value, JObj):
        data = {str(plain(k)): plain(v) for k, v in value.pairs}
        if value.loose:
            data["..."] = [plain(v) for v in value.loose]
        return data
    if value is MISSING:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf": a rejection stays comparable and JSON-safe
    return value


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, JArr):
        return "a list"
    if isinstance(value, JObj):
        return "an object"
    if value is None or value is MISSING:
        return "null"
    return type(value).__name__


@dataclass
class _Extraction:
    entities: list[ParsedEntity] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    shaped: bool = False  # the value has the shape of an answer (list, entity or label object)

    @property
    def is_answer(self) -> bool:
        return bool(self.entities or self.shaped)


class _Extractor:
    """Walks a parsed value and collects entities and rejections."""

    def __init__(self, labels: LabelSet) -> None:
        self.labels = labels
        self.out = _Extraction()

    def run(self, value: Any) -> _Extraction:
        if isinstance(value, JArr):
            # `[]` and lists of objects, lists or quoted strings; not `[1]` or `[see below]`.
            self.out.shaped = not value.items or any(
                isinstance(v, (JObj, JArr)) or (isinstance(v, JStr) and v.quoted)
                for v in value.items
            )
            self.items(value, None)
        elif isinstance(value, JObj):
            # `{}` and any object with a key and a value; not `{see below}`.
            self.out.shaped = (not value.pairs and not value.loose) or any(
                isinstance(k, JStr) and v is not MISSING for k, v in value.pairs
            )
            self.obj(value, None)
        return self.out

    # -- helpers ------------------------------------------------------------------------------

    def reject(self, text: Any, label: Any, reason: str, detail: str) -> None:
        self.out.rejections.append(Rejection(text=text, label=label, reason=reason, detail=detail))

    @staticmethod
    def _find(obj: JObj, names: tuple[str, ...]) -> tuple[Any, Any] | None:
        """The first (key, value) pair whose key is in `names`, by the order of `names`."""
        normalised = [(_norm_key(k), k, v) for k, v in obj.pairs]
        for name in names:
            for norm, key, value in normalised:
                if norm == name:
                    return key, value
        return None

    # -- shapes -------------------------------------------------------------------------------

    def items(self, array: JArr, context: str | None) -> None:
        """A list of entity items; `context` is the raw label of the key that holds the list."""
        for item in array.items:
            self.item(item, context)

    def item(self, item: Any, context: str | None) -> None:
        if isinstance(item, JObj):
            self.obj(item, context)
        elif isinstance(item, JStr):
            if context is not None:
                self.entity(item, JStr(context), incomplete=False)
            elif not item.complete:
                if item.value.strip():
                    self.reject(
                        item.value.strip(), None, TRUNCATED, "the response ended in this entity"
                    )
            elif not item.value.strip():
                self.reject(item.value, None, EMPTY_TEXT, "entity text is empty")
            else:
                self.reject(item.value.strip(), None, MALFORMED, "a bare string with no label")
        elif isinstance(item, JArr):
            strings = [v for v in item.items if isinstance(v, JStr)]
            if len(item.items) == 2 and len(strings) == 2:  # a ["text", "LABEL"] pair
                first, second = strings
                if self.labels.resolve(second.value) is None and self.labels.resolve(first.value):
                    first, second = second, first  # ["DRUG", "aspirin"]
                if context is None or self.labels.resolve(second.value):
                    self.entity(first, second, incomplete=False)
                    return
            if context is None and not item.complete and len(item.items) < 2:
                # `["aspirin", ` cut before its label: the text of a pair, not a bare string
                self.entity(strings[0] if strings else MISSING, MISSING, incomplete=True)
                return
            self.items(item, context)
        elif item is not MISSING:
            self.reject(
                plain(item), context, MALFORMED, f"an item of the answer is {_type_name(item)}"
            )

    def obj(self, obj: JObj, context: str | None) -> None:
        text_pair = self._find(obj, TEXT_KEYS)
        label_pair = self._find(obj, LABEL_KEYS)
        label_keys = [
            (k, v)
            for k, v in obj.pairs
            if isinstance(k, JStr) and self.labels.resolve(k.value) is not None
        ]
        wrapper = any(
            _norm_key(k) in WRAPPER_KEYS and isinstance(v, (JArr, JObj)) for k, v in obj.pairs
        )
        if text_pair is not None and (label_pair is not None or not (label_keys or wrapper)):
            self.item_object(obj, text_pair, label_pair, context)
            return
        for key, value in obj.pairs:
            if text_pair is not None and key is text_pair[0]:
                continue  # the document text echoed next to the entities
            self.member(key, value)
        for value in obj.loose:
            self.item(value, context)

    def item_object(
        self,
        obj: JObj,
        text_pair: tuple[Any, Any],
        label_pair: tuple[Any, Any] | None,
        context: str | None,
    ) -> None:
        """`{"text": ..., "label": ...}` in any of its spellings."""
        text = text_pair[1]
        if label_pair is not None and label_pair[1] not in (None, MISSING):
            label = label_pair[1]
        elif context is not None:
            label = JStr(context)
        else:
            label = label_pair[1] if label_pair is not None else MISSING
        # Unfinished: the object was cut before its text and label were both read.
        incomplete = not obj.complete and (text is MISSING or label is MISSING)
        self.entity(text, label, incomplete=incomplete)

    def member(self, key: Any, value: Any) -> None:
        """One key of a label-keyed or wrapping object."""
        if not isinstance(key, JStr):
            self.reject(plain(value), plain(key), MALFORMED, "an object key that is not a string")
            return
        if not key.complete:
            return  # the answer was cut inside the key: nothing to report
        raw = key.value
        label = self.labels.resolve(raw)
        norm = _norm_key(key)
        if label is not None:
            self.label_values(value, raw)
        elif isinstance(value, (JArr, JObj)):
            context = None if norm in WRAPPER_KEYS else raw
            if isinstance(value, JArr):
                self.items(value, context)
            else:
                self.obj(value, context)
        elif norm in IGNORED_KEYS or norm in WRAPPER_KEYS or not isinstance(value, JStr):
            return
        elif value.value.strip():
            self.entity(value, key, incomplete=False)

    def label_values(self, value: Any, raw_label: str) -> None:
        """The value of a label key: a string, a list of strings, or entity objects."""
        if isinstance(value, JStr):
            self.entity(value, JStr(raw_label), incomplete=False)
        elif isinstance(value, JArr):
            self.items(value, raw_label)
        elif isinstance(value, JObj):
            self.obj(value, raw_label)
        elif value is None or value is MISSING:
            return  # `"adverse_events": null`: nothing found
        else:
            self.reject(plain(value), raw_label, MALFORMED, f"entity text is {_type_name(value)}")

    def entity(self, text: Any, label: Any, incomplete: bool) -> None:
        """Check one (text, label) pair and record it as an entity or a rejection."""
        if isinstance(label, JArr) and len(label.items) == 1:
            label = label.items[0]  # "labels": ["DRUG"]
        raw_label = label.value if isinstance(label, JStr) else plain(label)
        if isinstance(text, JStr) and not text.complete:
            incomplete = True
        if isinstance(label, JStr) and not label.complete:
            incomplete = True
        if incomplete:
            if isinstance(text, JStr) and text.value.strip():
                self.reject(
                    text.value.strip(), raw_label, TRUNCATED, "the response ended in this entity"
                )
            return
        if text is MISSING or text is None:
            self.reject(None, raw_label, EMPTY_TEXT, "entity text is null")
            return
        if not isinstance(text, JStr):
            self.reject(plain(text), raw_label, MALFORMED, f"entity text is {_type_name(text)}")
            return
        value = text.value.strip()
        if not value:
            self.reject(text.value, raw_label, EMPTY_TEXT, "entity text is empty")
            return
        if (
            label is MISSING
            or label is None
            or (isinstance(label, JStr) and not label.value.strip())
        ):
            self.reject(value, None, MALFORMED, "the entity has no label")
            return
        resolved = self.labels.resolve(raw_label)
        if resolved is None:
            self.reject(
                value,
                raw_label,
                UNKNOWN_LABEL,
                f"label {raw_label!r} is not one of {', '.join(self.labels.labels)}",
            )
            return
        self.out.entities.append(
            ParsedEntity(
                text=value, label=resolved, raw_label=None if raw_label == resolved else raw_label
            )
        )


_START = re.compile(r"[\[{]")

_THINK = re.compile(r"\s*<think>.*?(?:</think>|\Z)", re.DOTALL)

_FENCE = re.compile(r"```[\w+-]*")

_BETWEEN_VALUES = re.compile(r"[\s,]*")


@dataclass
class _Candidate:
    """A JSON value found in the response, with what its extraction yielded."""

    start: int
    end: int
    complete: bool
    repairs: list[str]
    extraction: _Extraction


def _candidates(text: str, labels: LabelSet) -> Iterator[_Candidate]:
    """Every JSON value that starts at a `[` or `{`, from left to right.

    After a value that ends cleanly the search goes on after it; after one that ran to the end of
    the text (perhaps a stray bracket in prose) it goes on just after its first character.
    """
    pos = 0
    for _ in range(MAX_CANDIDATES):
        match = _START.search(text, pos)
        if match is None:
            return
        start = match.start()
        parser = JsonReader(text, start)
        try:
            value = parser.parse_value()
        except TooDeep:
            pos = start + 1
            continue
        complete = isinstance(value, (JArr, JObj)) and value.complete
        extraction = _Extractor(labels).run(value)
        yield _Candidate(start, parser.pos, complete, parser.repairs, extraction)
        pos = parser.pos if complete and parser.pos > start else start + 1


def _runs(text: str, labels: LabelSet) -> Iterator[list[_Candidate]]:
    """Candidates grouped into runs: answer-like values with only whitespace or commas between
    them (JSON Lines, `{...}, {...}`) form one run; any other candidate is a run of its own."""
    run: list[_Candidate] = []
    for candidate in _candidates(text, labels):
        if (
            run
            and run[-1].complete
            and run[-1].extraction.is_answer
            and candidate.extraction.is_answer
            and candidate.start >= run[-1].end
            and _BETWEEN_VALUES.fullmatch(text, run[-1].end, candidate.start)
        ):
            run.append(candidate)
            continue
        if run:
            yield run
        run = [candidate]
    if run:
        yield run


def _preview(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _decode_string_answer(text: str) -> str | None:
    """The inner text of an answer that is one JSON string holding JSON ("[{\\"text\\": ...}]")."""
    stripped = text.strip()
    if len(stripped) < 2 or stripped[0] not in "\"'":
        return None
    parser = JsonReader(stripped)
    value = parser.parse_string(stripped[0])
    if value.value.strip()[:1] in ("[", "{") and not stripped[parser.pos :].strip():
        return value.value
    return None


def parse_response(response: str, labels: LabelSet) -> ParseResult:
    """Read the entities of a model's answer. Never raises: problems are reported in the result.

    `result.error` is set when no JSON answer could be found at all (empty or pure prose);
    `[]` is a valid answer with no entities.
    """
    try:
        return _parse_response(response, labels)
    except Exception as error:  # a last-resort guard: a bug here must not stop a pipeline
        return ParseResult(
            error=f"internal parser error ({type(error).__name__}: {error}) on "
            f"{_preview(str(response))}"
        )


def _parse_response(response: str, labels: LabelSet) -> ParseResult:
    if not isinstance(response, str):
        return ParseResult(error=f"the response is {type(response).__name__}, not a string")
    repairs: list[str] = []
    text = response
    think = _THINK.match(text)
    if think:
        text = text[think.end() :]
        repairs.append("think_block")
    if not text.strip():
        what = "has nothing after its <think> block" if think else "is empty"
        return ParseResult(error=f"the response {what}", repairs=repairs)
    decoded = _decode_string_answer(text)
    if decoded is not None:
        text = decoded
        repairs.append("double_encoded")

    chosen: list[_Candidate] | None = None
    fallback: list[_Candidate] | None = None
    for run in _runs(text, labels):
        if any(c.extraction.entities for c in run):
            chosen = run
            break
        if fallback is None and run[0].extraction.is_answer:
            fallback = run
    chosen = chosen or fallback
    if chosen is None:
        if _START.search(text) is None:
            error = f"no JSON list or object in the response {_preview(response)}"
        else:
            error = f"no entity list or label-keyed object in the response {_preview(response)}"
        return ParseResult(error=error, repairs=repairs)

    result = ParseResult()
    for candidate in chosen:
        result.entities.extend(candidate.extraction.entities)
        result.rejections.extend(candidate.extraction.rejections)
    if len(chosen) > 1:
        repairs.append("merged_values")
    before = text[: chosen[0].start]
    after = text[chosen[-1].end :]
    if "```" in before or "```" in after:
        repairs.append("fence")
    if _FENCE.sub("", before).strip():
        repairs.append("prose_before")
    rest = _FENCE.sub("", after).strip()
    if rest:
        repairs.append("prose_after")
        if _START.search(rest):
            repairs.append("extra_values")
    for candidate in chosen:
        repairs.extend(candidate.repairs)
    for tag in repairs:
        if tag not in result.repairs:
            result.repairs.append(tag)
    return result
