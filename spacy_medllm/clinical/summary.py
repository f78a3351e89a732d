"""Grounded summaries of a processed Doc: structured items, and free text checked against them.

- `structured_summary(doc)`: medications, adverse events, diseases and procedures, each grouped
  by status (present, negated, ...), each item once per normalised text, linked to its spans.
- `template_summary(structured)`: a few English sentences made from those items only, so every
  name in it is an entity of the Doc (the default free-text summary; no model needed).
- `llm_summaries(docs, generator, detector)`: a generator (the project's: an OpenAI-compatible
  server or a Hugging Face model, `generators.registry`) writes a short summary from the text and
  the items; `check_summary` then finds the drugs and events the summary names (with `detector`,
  an NER pipeline or a word list) and every name that is not an entity of the Doc is removed with
  its sentence ("remove") or the summary is replaced by the template one ("reject"). What was
  removed or rejected is recorded in the result.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from spacy.language import Language
from spacy.tokens import Doc

from spacy_medllm.clinical.entities import (
    FAMILY,
    HISTORICAL,
    HYPOTHETICAL,
    NEGATED,
    PRESENT,
    STATUSES,
    UNCERTAIN,
    doc_entities,
    normalise,
    status_of,
)

GROUPS = {
    "DRUG": "medications",
    "ADVERSE_EVENT": "adverse_events",
    "DISEASE": "diseases",
    "PROCEDURE": "procedures",
}
GROUP_ORDER = ("medications", "adverse_events", "diseases", "procedures")

# The labels whose names a free-text summary may only use when they are entities of the Doc.
CHECKED_LABELS = ("DRUG", "ADVERSE_EVENT")

ON_UNGROUNDED = ("remove", "reject")

# How the template says each status, per group: (lead-in, joiner of the last name).
_PHRASES: dict[str, dict[str, tuple[str, str]]] = {
    "medications": {
        PRESENT: ("Medications: {}.", "and"),
        NEGATED: ("Not taking: {}.", "or"),
        HYPOTHETICAL: ("Considered or planned: {}.", "and"),
        UNCERTAIN: ("Possibly taking: {}.", "or"),
        HISTORICAL: ("Past medications: {}.", "and"),
        FAMILY: ("Taken by relatives: {}.", "and"),
    },
    "adverse_events": {
        PRESENT: ("Adverse events: {}.", "and"),
        NEGATED: ("No {}.", "or"),
        HYPOTHETICAL: ("Possible or anticipated: {}.", "and"),
        UNCERTAIN: ("Possibly: {}.", "or"),
        HISTORICAL: ("Past adverse events: {}.", "and"),
        FAMILY: ("In relatives: {}.", "and"),
    },
    "diseases": {
        PRESENT: ("Conditions: {}.", "and"),
        NEGATED: ("No {}.", "or"),
        HYPOTHETICAL: ("Possible: {}.", "or"),
        UNCERTAIN: ("Possible: {}.", "or"),
        HISTORICAL: ("Past history: {}.", "and"),
        FAMILY: ("Family history: {}.", "and"),
    },
    "procedures": {
        PRESENT: ("Procedures: {}.", "and"),
        NEGATED: ("Not done: {}.", "or"),
        HYPOTHETICAL: ("Planned or considered: {}.", "and"),
        UNCERTAIN: ("Possibly done: {}.", "or"),
        HISTORICAL: ("Past procedures: {}.", "and"),
        FAMILY: ("In relatives: {}.", "and"),
    },
}

SUMMARY_INSTRUCTION = (
    "You summarise a clinical text for a clinician in one to three short sentences. Use only "
    "the findings listed after the text: name no medicine, adverse event or disease that is not "
    "listed. Say which adverse events the patient has and which are absent. Answer with the "
    "summary only."
)


def structured_summary(
    doc: Doc, spans_key: str | None = None, groups: Mapping[str, str] = GROUPS
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The Doc's entities as {group: {status: [item]}}; an item is {"text" (as first written),
    "norm", "label", "status", "spans": [[start, end], ...]}. Labels not in `groups` go to
    "other:<LABEL>". Groups and statuses come in a fixed order; empty ones are left out."""
    items: dict[tuple[str, str, str], dict[str, Any]] = {}
    for span in doc_entities(doc, spans_key):
        group = groups.get(span.label_, f"other:{span.label_}")
        status = status_of(span)
        key = (group, status, normalise(span.text))
        item = items.setdefault(
            key,
            {
                "text": span.text,
                "norm": key[2],
                "label": span.label_,
                "status": status,
                "spans": [],
            },
        )
        item["spans"].append([span.start_char, span.end_char])
    order = [*GROUP_ORDER, *sorted({g for g, _, _ in items} - set(GROUP_ORDER))]
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for group in order:
        by_status = {
            status: [item for (g, s, _), item in items.items() if g == group and s == status]
            for status in STATUSES
        }
        by_status = {s: found for s, found in by_status.items() if found}
        if by_status:
            out[group] = by_status
    return out


def summary_names(structured: Mapping[str, Mapping[str, Sequence[Any]]]) -> dict:
    """{group: {status: [name]}}: a structured summary's names only (the reference format)."""
    return {
        group: {
            status: [item["text"] if isinstance(item, Mapping) else item for item in items]
            for status, items in by_status.items()
        }
        for group, by_status in structured.items()
    }


def _join(names: Sequence[str], last: str) -> str:
    if len(names) == 1:
        return names[0]
    return f"{', '.join(names[:-1])} {last} {names[-1]}"


def template_summary(structured: Mapping[str, Mapping[str, Sequence[Any]]]) -> str:
    """Sentences made from the structured items only: "Medications: metformin and ramipril.
    Adverse events: diarrhoea. No hypoglycaemia." (names as first written in the text)."""
    sentences = []
    for group, by_status in summary_names(structured).items():
        phrases = _PHRASES.get(group)
        for status in STATUSES:
            names = by_status.get(status)
            if not names:
                continue
            if phrases is None:
                label = group.split(":", 1)[-1].replace("_", " ").lower()
                sentences.append(f"{label.capitalize()} ({status}): {_join(names, 'and')}.")
                continue
            lead, last = phrases[status]
            sentences.append(lead.format(_join(names, last)))
    if not sentences:
        return "No medications, adverse events, diseases or procedures were found."
    text = " ".join(sentences)
    return text[0].upper() + text[1:]


# -- checking a free-text summary ----------------------------------------------------------------

Detector = Callable[[str], Iterable[tuple[int, int, str]]]


def lexicon_detector(names: Iterable[tuple[str, str]], lang: str = "en") -> Detector:
    """A detector finding the given (name, label) pairs in a text, case-insensitive (spaCy's
    PhraseMatcher on lower-cased tokens); overlapping finds keep the longest."""
    import spacy
    from spacy.matcher import PhraseMatcher
    from spacy.util import filter_spans

    nlp = spacy.blank(lang)
    matcher = PhraseMatcher(nlp.vocab, attr="LOWER")
    by_label: dict[str, list[str]] = {}
    for name, label in names:
        if name.strip():
            by_label.setdefault(label, []).append(name)
    for label, group in by_label.items():
        matcher.add(label, list(nlp.tokenizer.pipe(sorted(set(group)))))

    def detect(text: str) -> list[tuple[int, int, str]]:
        doc = nlp.make_doc(text)
        spans = filter_spans(matcher(doc, as_spans=True))
        return [(s.start_char, s.end_char, s.label_) for s in spans]

    return detect


def as_detector(detector: Detector | Language) -> Detector:
    """A detector from a spaCy pipeline (its entities) or a function returning (start, end,
    label) triples."""
    if isinstance(detector, Language):
        nlp = detector
        return lambda text: [(e.start_char, e.end_char, e.label_) for e in nlp(text).ents]
    return detector


def _mentions(name: str, text: str) -> bool:
    """Whether normalised `name` occurs in normalised `text` as whole words."""
    return re.search(r"(?<!\w)" + re.escape(name) + r"(?!\w)", text) is not None


def ungrounded_names(
    summary: str,
    doc: Doc,
    detector: Detector | Language,
    labels: Sequence[str] = CHECKED_LABELS,
    spans_key: str | None = None,
) -> list[dict[str, Any]]:
    """The names with one of `labels` that `detector` finds in `summary` and that are not
    entities of `doc`: a name is grounded when it equals, contains or is contained in (whole
    words, normalised) the text of one of the Doc's entities, whatever its label (a word list
    may call "anxiety" an adverse event where the Doc has it as a disease)."""
    allowed = [normalise(e.text) for e in doc_entities(doc, spans_key)]
    found = []
    for start, end, label in as_detector(detector)(summary):
        if label not in labels:
            continue
        name = normalise(summary[start:end])
        if any(name == a or _mentions(a, name) or _mentions(name, a) for a in allowed):
            continue
        found.append({"start": start, "end": end, "label": label, "text": summary[start:end]})
    return found


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class SummaryResult:
    """A free-text summary and how it came about. `source`: "template", "llm" (as written),
    "llm_edited" (sentences with ungrounded names removed) or "template_fallback" (rejected, or
    nothing left). `ungrounded`: the names the check found; `removed`: the sentences removed;
    `response`: the model's raw answer."""

    text: str
    source: str
    ungrounded: list[dict[str, Any]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    response: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_summary(
    response: str,
    doc: Doc,
    detector: Detector | Language,
    on_ungrounded: str = "remove",
    spans_key: str | None = None,
) -> SummaryResult:
    """Check a model's summary of `doc`; remove or reject what names non-entities."""
    if on_ungrounded not in ON_UNGROUNDED:
        raise ValueError(f"on_ungrounded must be one of {', '.join(ON_UNGROUNDED)}")
    text = _clean(response)
    fallback = template_summary(structured_summary(doc, spans_key))
    bad = ungrounded_names(text, doc, detector, spans_key=spans_key)
    if not text:
        return SummaryResult(fallback, "template_fallback", response=response)
    if not bad:
        return SummaryResult(text, "llm", response=response)
    if on_ungrounded == "reject":
        return SummaryResult(fallback, "template_fallback", bad, [text], response)
    kept, removed = [], []
    for sentence in _SENTENCE_END.split(text):
        if ungrounded_names(sentence, doc, detector, spans_key=spans_key):
            removed.append(sentence)
        else:
            kept.append(sentence)
    if not kept:
        return SummaryResult(fallback, "template_fallback", bad, removed, response)
    return SummaryResult(" ".join(kept), "llm_edited", bad, removed, response)


def _clean(response: str, max_sentences: int = 4) -> str:
    """The summary part of an answer: no `<think>` block or "Summary:" lead, at most
    `max_sentences` sentences, whitespace collapsed."""
    text = re.sub(r"<think>.*?(?:</think>|\Z)", "", response or "", flags=re.DOTALL)
    text = re.sub(r"^\s*(?:\*\*)?summary(?:\*\*)?\s*:\s*", "", text, flags=re.IGNORECASE)
    text = " ".join(text.split()).strip().strip('"')
    return " ".join(_SENTENCE_END.split(text)[:max_sentences]) if text else ""


def summary_prompt(doc: Doc, spans_key: str | None = None) -> list[dict[str, str]]:
    """The chat messages asking a model for a summary of `doc` from its text and items."""
    findings = template_summary(structured_summary(doc, spans_key))
    return [
        {"role": "system", "content": SUMMARY_INSTRUCTION},
        {"role": "user", "content": f"Text:\n{doc.text}\n\nFindings:\n{findings}"},
    ]


def llm_summaries(
    docs: Sequence[Doc],
    generator: Any,
    detector: Detector | Language,
    on_ungrounded: str = "remove",
    spans_key: str | None = None,
) -> list[SummaryResult]:
    """Free-text summaries by `generator` (called once with every prompt; it batches), each
    checked by `check_summary`."""
    responses = generator([summary_prompt(doc, spans_key) for doc in docs])
    return [
        check_summary(response, doc, detector, on_ungrounded, spans_key)
        for response, doc in zip(responses, docs, strict=True)
    ]


def summarize(
    doc: Doc,
    generator: Any = None,
    detector: Detector | Language | None = None,
    on_ungrounded: str = "remove",
    spans_key: str | None = None,
) -> dict[str, Any]:
    """{"structured": ..., "summary": SummaryResult as a dict}: the template summary, or with a
    `generator` the model's, checked with `detector` (required then)."""
    structured = structured_summary(doc, spans_key)
    if generator is None:
        result = SummaryResult(template_summary(structured), "template")
    else:
        if detector is None:
            raise ValueError(
                "a model's summary is checked for names that are not entities of the document: "
                "pass a detector (an NER pipeline or lexicon_detector(names))"
            )
        result = llm_summaries([doc], generator, detector, on_ungrounded, spans_key)[0]
    return {"structured": structured, "summary": result.to_dict()}
