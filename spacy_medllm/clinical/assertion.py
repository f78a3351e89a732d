"""`medllm_assertion`: each entity's status as the generative model itself wrote it.

Asked with `ASSERTION_INSTRUCTION` (a `medllm_ner` prompt whose answer objects carry a
"status": present, negated, hypothetical, historical, family), a model answers
`[{"text": "rash", "label": "ADVERSE_EVENT", "status": "negated"}]`. `medllm_ner`'s parser keeps
text and label only, so this component reads the raw answers `medllm_ner` records with
`save_io = true` (`doc._.medllm[source]["chunks"][i]["response"]`), finds each entity object's
status with the same tolerant JSON reader, matches the objects to the chunk's entities (same
label, same normalised text, in order) and sets medspaCy's attributes (`ent._.is_negated`, ...),
the ones ConText sets, so either can be used, or both:

- `combine = "replace"` (default): the model's status replaces the attributes (ConText's too, if
  it ran before); entities the model gave no status keep theirs.
- `combine = "union"`: the model's status is added to what is set.

What it recorded goes to `doc._.medllm[name]`: statuses read, entities set, model objects left
unmatched, and "missing_io" when `medllm_ner` kept no raw answers.

Training a model to write statuses needs `medllm_ner`'s answers with the status key in the
training completions; `status_answer` writes that answer for gold entities (docs/clinical.md
says what is and is not trained). spaCy and the standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from spacy.language import Language
from spacy.tokens import Doc, Span

from spacy_medllm.clinical.entities import (
    STATUSES,
    doc_entities,
    normalise,
    resolve_status,
    set_status,
)
from spacy_medllm.core.json_reader import MISSING, JArr, JObj, JsonReader, JStr, TooDeep
from spacy_medllm.core.labels import DEFAULT_LABELS, LabelSet
from spacy_medllm.core.parsing import LABEL_KEYS, TEXT_KEYS
from spacy_medllm.core.prompts import DEFAULT_INSTRUCTION
from spacy_medllm.pipeline.component import RECORD_ATTR

ASSERTION_FACTORY = "medllm_assertion"

# Keys (normalised) under which a model writes an entity's status.
STATUS_KEYS = ("status", "assertion", "certainty", "context")

ASSERTION_INSTRUCTION = DEFAULT_INSTRUCTION.replace(
    '{{"text": ..., "label": ...}} objects',
    '{{"text": ..., "label": ..., "status": ...}} objects',
) + (
    "\nstatus is one of: present (the patient has it or takes it), negated (said not to exist "
    "or not taken), hypothetical (possible, planned or conditional), historical (in the "
    "patient's past), family (about a relative or another person)."
)

COMBINE_MODES = ("replace", "union")

_START = re.compile(r"[\[{]")
_THINK = re.compile(r"\s*<think>.*?(?:</think>|\Z)", re.DOTALL)


@dataclass
class StatedEntity:
    """An entity object of a model's answer that carries a status."""

    text: str
    label: str | None  # the label as written (None when the object had none)
    status: str


def _key(value: Any) -> str:
    raw = value.value if isinstance(value, JStr) else value
    return re.sub(r"[^0-9a-z]+", "_", str(raw).lower()).strip("_") if raw is not None else ""


def _field(obj: JObj, names: Sequence[str]) -> Any:
    for name in names:
        for key, value in obj.pairs:
            if _key(key) == name:
                return value
    return MISSING


def _walk(value: Any) -> Iterator[JObj]:
    """Every object of a parsed value, depth first, in the order written."""
    if isinstance(value, JObj):
        yield value
        for _, member in value.pairs:
            yield from _walk(member)
        for member in value.loose:
            yield from _walk(member)
    elif isinstance(value, JArr):
        for item in value.items:
            yield from _walk(item)


def read_statuses(response: str) -> list[StatedEntity]:
    """The entity objects of a raw answer that carry a readable status, in the order written.

    Objects need a text key (`parsing.TEXT_KEYS`) and a status key (`STATUS_KEYS`); a status
    that is not one of `STATUSES` (or an alias, `entities.STATUS_ALIASES`) is skipped. Never
    raises for a string.
    """
    if not isinstance(response, str):
        return []
    think = _THINK.match(response)
    text = response[think.end() :] if think else response
    found: list[StatedEntity] = []
    pos = 0
    while True:
        match = _START.search(text, pos)
        if match is None:
            break
        reader = JsonReader(text, match.start())
        try:
            value = reader.parse_value()
        except TooDeep:
            pos = match.start() + 1
            continue
        for obj in _walk(value):
            entity_text = _field(obj, TEXT_KEYS)
            status = resolve_status(getattr(_field(obj, STATUS_KEYS), "value", None))
            if not isinstance(entity_text, JStr) or not entity_text.value.strip() or not status:
                continue
            label = _field(obj, LABEL_KEYS)
            found.append(
                StatedEntity(
                    entity_text.value.strip(),
                    label.value if isinstance(label, JStr) else None,
                    status,
                )
            )
        pos = max(reader.pos, match.start() + 1)
    return found


def status_answer(entities: Sequence[dict[str, Any]]) -> str:
    """The answer a model trained for `medllm_assertion` should give: `[{"text", "label",
    "status"}]` for gold entities (dicts with text, label and status), each once, in order."""
    import json

    seen, items = set(), []
    for entity in entities:
        status = entity.get("status", "present")
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        key = (entity["text"], entity["label"], status)
        if key not in seen:
            seen.add(key)
            items.append({"text": entity["text"], "label": entity["label"], "status": status})
    return json.dumps(items, ensure_ascii=False)


class MedLLMAssertion:
    """Sets medspaCy's assertion attributes from the statuses in `medllm_ner`'s raw answers."""

    def __init__(
        self,
        nlp: Language,
        name: str = ASSERTION_FACTORY,
        *,
        source: str = "medllm_ner",
        combine: str = "replace",
        spans_key: str | None = None,
    ) -> None:
        if combine not in COMBINE_MODES:
            raise ValueError(f"medllm_assertion: combine must be one of {list(COMBINE_MODES)}")
        self.nlp = nlp
        self.name = name
        self.source = source
        self.combine = combine
        self.spans_key = spans_key
        self._labels: LabelSet | None = None

    def _label_set(self) -> LabelSet:
        if self._labels is None:
            pipe = self.nlp.get_pipe(self.source) if self.source in self.nlp.pipe_names else None
            self._labels = getattr(pipe, "label_set", None) or LabelSet(DEFAULT_LABELS)
        return self._labels

    def __call__(self, doc: Doc) -> Doc:
        store = doc._.get(RECORD_ATTR)
        source = (store or {}).get(self.source)
        record = {"n_statuses": 0, "n_set": 0, "unmatched": [], "missing_io": False}
        if store is None:
            store = {}
            doc._.set(RECORD_ATTR, store)
        store[self.name] = record
        if not source:
            return doc
        chunks = source.get("chunks") or []
        if chunks and not any("response" in chunk for chunk in chunks):
            record["missing_io"] = True  # medllm_ner ran with save_io = false
            return doc
        entities = doc_entities(doc, self.spans_key)
        for chunk in chunks:
            stated = read_statuses(chunk.get("response", ""))
            record["n_statuses"] += len(stated)
            inside = [e for e in entities if chunk["start"] <= e.start_char < chunk["end"]]
            self._assign(inside, stated, record)
        return doc

    def _assign(self, spans: list[Span], stated: list[StatedEntity], record: dict) -> None:
        """Each stated entity to the first unassigned span with its label and normalised text;
        spans of a string the model stated fewer times than it occurs take its last status."""
        labels = self._label_set()
        free = list(spans)
        last: dict[tuple[str, str], str] = {}
        for entity in stated:
            label = labels.resolve(entity.label) if entity.label else None
            norm = normalise(entity.text)
            match = next(
                (
                    s
                    for s in free
                    if normalise(s.text) == norm and (label is None or s.label_ == label)
                ),
                None,
            )
            if match is None:
                record["unmatched"].append(
                    {"text": entity.text, "label": entity.label, "status": entity.status}
                )
                continue
            free.remove(match)
            last[(match.label_, norm)] = entity.status
            set_status(match, entity.status, self.combine)
            record["n_set"] += 1
        for span in free:
            status = last.get((span.label_, normalise(span.text)))
            if status is not None:
                set_status(span, status, self.combine)
                record["n_set"] += 1


@Language.factory(
    ASSERTION_FACTORY,
    default_config={"source": "medllm_ner", "combine": "replace", "spans_key": None},
    assigns=[
        "span._.is_negated",
        "span._.is_hypothetical",
        "span._.is_historical",
        "span._.is_family",
        "span._.is_uncertain",
    ],
)
def make_medllm_assertion(
    nlp: Language, name: str, source: str, combine: str, spans_key: str | None
) -> MedLLMAssertion:
    """Build `medllm_assertion`: statuses from `source`'s raw answers (save_io = true)."""
    return MedLLMAssertion(nlp, name, source=source, combine=combine, spans_key=spans_key)
