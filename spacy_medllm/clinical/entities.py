"""An entity's assertion status and its medspaCy attributes, normalised text, and plain records.

medspaCy's ConText sets five boolean Span attributes: `is_negated`, `is_hypothetical`,
`is_historical`, `is_family` and `is_uncertain`. This module registers the same attributes (with
the same names and defaults, so medspaCy and `medllm_assertion` fill one set), reads them as one
status and writes a status back:

- `status_of(span)`: "negated", "family", "hypothetical", "uncertain", "historical" or "present",
  the first attribute set in that order (`STATUS_PRECEDENCE`): "no family history of X" is
  negated, "mother had a history of X" is family, "if you have a history of X" hypothetical.
- `set_status(span, status)`: the status's attribute True and the others False ("present": all
  False); `combine="union"` only adds the status's attribute.

spaCy and the standard library only.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any

from spacy.tokens import Doc, Span

PRESENT = "present"
NEGATED = "negated"
HYPOTHETICAL = "hypothetical"
HISTORICAL = "historical"
FAMILY = "family"
UNCERTAIN = "uncertain"

# Every status, in the order reports list them.
STATUSES = (PRESENT, NEGATED, HYPOTHETICAL, HISTORICAL, FAMILY, UNCERTAIN)

# medspaCy's attribute for each status (medspacy/_extensions.py; ConText's DEFAULT_ATTRIBUTES).
STATUS_ATTRIBUTES = {
    NEGATED: "is_negated",
    HYPOTHETICAL: "is_hypothetical",
    HISTORICAL: "is_historical",
    FAMILY: "is_family",
    UNCERTAIN: "is_uncertain",
}

ASSERTION_ATTRIBUTES = tuple(STATUS_ATTRIBUTES.values())

# When several attributes are set, the status is the first of these that is.
STATUS_PRECEDENCE = (NEGATED, FAMILY, HYPOTHETICAL, UNCERTAIN, HISTORICAL)

# What models and people write for a status, normalised (lower case, "_" between words).
STATUS_ALIASES = {
    "present": PRESENT,
    "positive": PRESENT,
    "affirmed": PRESENT,
    "current": PRESENT,
    "yes": PRESENT,
    "negated": NEGATED,
    "negative": NEGATED,
    "absent": NEGATED,
    "denied": NEGATED,
    "not_present": NEGATED,
    "no": NEGATED,
    "hypothetical": HYPOTHETICAL,
    "conditional": HYPOTHETICAL,
    "potential": HYPOTHETICAL,
    "future": HYPOTHETICAL,
    "historical": HISTORICAL,
    "history": HISTORICAL,
    "past": HISTORICAL,
    "previous": HISTORICAL,
    "family": FAMILY,
    "family_history": FAMILY,
    "other_person": FAMILY,
    "someone_else": FAMILY,
    "uncertain": UNCERTAIN,
    "possible": UNCERTAIN,
    "possibly": UNCERTAIN,
    "probable": UNCERTAIN,
    "suspected": UNCERTAIN,
}


def register_assertion_attributes() -> None:
    """Register medspaCy's five Span attributes (default False) unless already there."""
    for attribute in ASSERTION_ATTRIBUTES:
        if not Span.has_extension(attribute):
            Span.set_extension(attribute, default=False)


register_assertion_attributes()


def resolve_status(value: Any) -> str | None:
    """A status name from what was written ("Negative", "family history"), or None."""
    if not isinstance(value, str):
        return None
    key = re.sub(r"[^0-9a-z]+", "_", value.strip().lower()).strip("_")
    return STATUS_ALIASES.get(key)


def status_of(span: Span) -> str:
    """The span's status from its medspaCy attributes (see STATUS_PRECEDENCE)."""
    for status in STATUS_PRECEDENCE:
        if span._.get(STATUS_ATTRIBUTES[status]):
            return status
    return PRESENT


def set_status(span: Span, status: str, combine: str = "replace") -> None:
    """Write a status as medspaCy's attributes. "replace": the status's attribute True, the
    others False ("present" clears them all); "union": only set the status's attribute True."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
    if combine not in ("replace", "union"):
        raise ValueError(f'combine must be "replace" or "union", not {combine!r}')
    for name, attribute in STATUS_ATTRIBUTES.items():
        if name == status:
            span._.set(attribute, True)
        elif combine == "replace":
            span._.set(attribute, False)


def attributes_of(span: Span) -> dict[str, bool]:
    """The five attributes as a dict (only those set)."""
    return {a: True for a in ASSERTION_ATTRIBUTES if span._.get(a)}


_SPACES = re.compile(r"\s+")
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")


def normalise(text: str) -> str:
    """What entity texts are compared by: Unicode NFKC, case-folded, whitespace collapsed,
    punctuation at either end dropped ("Lexapro," and "LEXAPRO" are "lexapro")."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _EDGE_PUNCT.sub("", _SPACES.sub(" ", text).strip())


def doc_entities(doc: Doc, spans_key: str | None = None) -> list[Span]:
    """The Doc's entities: `doc.ents`, or `doc.spans[spans_key]` when a key is given."""
    if spans_key is None:
        return list(doc.ents)
    return list(doc.spans[spans_key]) if spans_key in doc.spans else []


def entity_records(doc: Doc, spans_key: str | None = None) -> list[dict[str, Any]]:
    """Each entity as plain data: start, end (characters), label, text, norm, status and the
    attributes set."""
    return [
        {
            "start": span.start_char,
            "end": span.end_char,
            "label": span.label_,
            "text": span.text,
            "norm": normalise(span.text),
            "status": status_of(span),
            "attributes": attributes_of(span),
        }
        for span in doc_entities(doc, spans_key)
    ]


def drop_context_graph(doc: Doc) -> Doc:
    """Remove medspaCy's ConText graph objects (`span._.modifiers`, `doc._.context_graph`) from
    the Doc's user data, keeping the five attributes, so the Doc can go into a DocBin
    (`DocBin(store_user_data=True)`); msgpack cannot write the graph's Span objects."""
    for key in [k for k in doc.user_data if _is_graph_key(k)]:
        del doc.user_data[key]
    return doc


def _is_graph_key(key: Any) -> bool:
    return (
        isinstance(key, tuple)
        and len(key) == 4
        and key[0] == "._."
        and key[1] in ("modifiers", "context_graph")
    )


def docs_from_records(
    nlp: Any, records: Iterable[dict[str, Any]], *, run_pipeline: bool = False
) -> Iterator[Doc]:
    """Docs of records `{"id", "text", "entities" | "spans": [{"start", "end", "label",
    "status"?}]}` with those entities (snapped outwards to tokens; overlaps keep the longest) and
    their statuses, the id in `doc.user_data["id"]`. `run_pipeline`: then run `nlp`'s
    components on each Doc (ConText, to set statuses the records do not give)."""
    from spacy.util import filter_spans

    for number, record in enumerate(records, start=1):
        doc = nlp.make_doc(record["text"])
        spans, wanted = [], {}
        for entity in record.get("entities") or record.get("spans") or []:
            span = doc.char_span(
                entity["start"], entity["end"], label=entity["label"], alignment_mode="expand"
            )
            if span is None:
                continue
            spans.append(span)
            if entity.get("status"):
                wanted[(span.start, span.end)] = entity["status"]
        doc.ents = filter_spans(spans)
        for span in doc.ents:
            if (span.start, span.end) in wanted:
                set_status(span, wanted[(span.start, span.end)])
        doc.user_data["id"] = str(record.get("id") or f"doc-{number}")
        if run_pipeline:
            for _, component in nlp.pipeline:
                doc = component(doc)
        yield doc
