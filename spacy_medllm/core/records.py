"""Plain records that travel along the path response -> parse -> align -> Doc, and onto the Doc."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# Why an entity the model emitted did not become a span. Every emitted entity ends either as a
# span or as a Rejection with one of these reasons.
UNKNOWN_LABEL = "unknown_label"  # label not in the configured set, nor an alias of one
EMPTY_TEXT = "empty_text"  # entity text empty, whitespace only or null
TRUNCATED = "truncated"  # the response ended inside this entity
MALFORMED = "malformed"  # an item of the answer that is not an entity (no text, wrong type)
NOT_IN_TEXT = "not_in_text"  # the string does not occur in the document (an invented entity)
TOKEN_MISALIGNED = "token_misaligned"  # found, but cannot be snapped to token boundaries
DUPLICATE = "duplicate"  # the same mention was already emitted
OVERLAP = "overlap"  # overlaps a longer span of this component (doc.ents only)
EXISTING_ENTITY = "existing_entity"  # overlaps an entity already on the Doc (overwrite_ents=False)

REASONS = (
    UNKNOWN_LABEL,
    EMPTY_TEXT,
    TRUNCATED,
    MALFORMED,
    NOT_IN_TEXT,
    TOKEN_MISALIGNED,
    DUPLICATE,
    OVERLAP,
    EXISTING_ENTITY,
)


@dataclass
class ParsedEntity:
    """An entity as the model wrote it, with its label resolved to the configured label set."""

    text: str
    label: str
    raw_label: str | None = None  # the label as the model wrote it, if different


@dataclass
class Rejection:
    """An emitted entity that did not become a span, and why."""

    text: Any
    label: Any
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ParseResult:
    """What a response yielded: usable entities, rejected items, and whether JSON could be read."""

    entities: list[ParsedEntity] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    error: str | None = None  # set when no JSON answer could be read at all
    repairs: list[str] = field(
        default_factory=list
    )  # what had to be repaired: "fence", "trailing_comma", ...

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class AlignedEntity:
    """An entity located in the text by character offsets (end exclusive)."""

    start: int
    end: int
    label: str
    text: str  # the entity string as the model wrote it
    match: str = "exact"  # "exact", "case_insensitive" or "fuzzy"


def summarise_records(records: Iterable[Mapping[str, Any] | None]) -> dict[str, Any]:
    """What a `medllm_ner` component recorded over many documents (`get_record` of each Doc), in
    counts: how many answers could be read, how many entities the model emitted, how many became
    spans and why the others did not (`rejected`, by reason; `not_in_text` are the invented ones),
    documents whose requests failed (`n_errors`) and answers that ran out (`n_truncated`).

    A document without a record (the component did not run on it) counts in `n_docs` only.
    """
    summary: dict[str, Any] = {
        "n_docs": 0,
        "n_docs_recorded": 0,
        "n_chunks": 0,
        "n_parse_errors": 0,
        "n_docs_with_parse_errors": 0,
        "n_emitted": 0,
        "n_spans": 0,
        "rejected": dict.fromkeys(REASONS, 0),
        "repairs": {},
        "n_skipped": 0,
        "n_errors": 0,
        "n_truncated": 0,
    }
    for record in records:
        summary["n_docs"] += 1
        if record is None:
            continue
        summary["n_docs_recorded"] += 1
        summary["n_chunks"] += len(record.get("chunks") or [])
        errors = len(record.get("parse_errors") or [])
        summary["n_parse_errors"] += errors
        summary["n_docs_with_parse_errors"] += bool(errors)
        summary["n_emitted"] += int(record.get("n_emitted") or 0)
        summary["n_spans"] += int(record.get("n_spans") or 0)
        for rejection in record.get("rejected") or []:
            reason = str(rejection.get("reason"))
            summary["rejected"][reason] = summary["rejected"].get(reason, 0) + 1
        for repair in record.get("repairs") or []:
            summary["repairs"][repair] = summary["repairs"].get(repair, 0) + 1
        summary["n_skipped"] += record.get("skipped") is not None
        summary["n_errors"] += record.get("error") is not None
        summary["n_truncated"] += int(record.get("n_truncated") or 0)  # answers that ran out
    chunks = summary["n_chunks"]
    summary["parseable"] = (chunks - summary["n_parse_errors"]) / chunks if chunks else None
    emitted = summary["n_emitted"]
    summary["not_in_text"] = summary["rejected"][NOT_IN_TEXT] / emitted if emitted else None
    return summary
