"""Finds the entity strings a model emitted in the document text and snaps them to spaCy tokens.

`find_entities` turns each `ParsedEntity` (a string and a label) into character offsets. It tries,
in order, these match steps:

- "exact": the string as written;
- "case_insensitive" (unless `case_sensitive`): `re.IGNORECASE` on the escaped string, so the
  offsets are those of the document even where `str.lower()` would change the length ("İ", "ß");
- "fuzzy" (if `fuzzy`): the string's words, with any short run of whitespace, punctuation or
  hyphens between them ("heart attack" finds "heart-attack" and "heart\\n attack").

A standalone occurrence (not preceded or followed by a letter or digit that continues a word)
always wins over one inside a longer word, whatever its step: "ache" finds the word "ache", not the
end of "headache", and "nausea" finds "Nausea" before "nauseated". An entity that only occurs
inside a longer word is still found there (the lemma "metformiin" inside the Estonian inflected
form "metformiini"): `snap_to_tokens` then expands (or contracts) it to whole tokens.

`repeated` says what a repeated string means:

- "all": each distinct (text, label) is mapped to every non-overlapping occurrence, of the best
  step that finds one; emitting the same (text, label) again gives a DUPLICATE rejection;
- "cursor": entities are mapped in order, each to the first occurrence (standalone before
  in-word, any step) at or after the end of the previous match, or, when there is none, from the
  start of the text (models sometimes list out of order); two "nausea" entities map to the first
  and the second "nausea". When every occurrence is already taken by an earlier entity with the
  same label, the entity is a DUPLICATE.

`snap_to_tokens` turns the character offsets into `Span`s of a `Doc` with `Doc.char_span`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from spacy.tokens import Doc, Span

from spacy_medllm.core.records import (
    DUPLICATE,
    EMPTY_TEXT,
    NOT_IN_TEXT,
    TOKEN_MISALIGNED,
    AlignedEntity,
    ParsedEntity,
    Rejection,
)

EXACT = "exact"
CASE_INSENSITIVE = "case_insensitive"
FUZZY = "fuzzy"
REPEATED_MODES = ("all", "cursor")
ALIGNMENT_MODES = ("strict", "contract", "expand")

# What may stand between two words of an entity in a fuzzy match: up to 10 characters of
# whitespace, punctuation, symbols or underscores.
FUZZY_SEPARATOR = r"[\W_]{1,10}"
_WORD_PIECE = re.compile(r"[^\W_]+")

Match = tuple[int, int]  # character offsets, end exclusive


@dataclass(frozen=True)
class _Occurrence:
    """Where an entity string occurs, by which step, and whether it stands as a word of its own."""

    start: int
    end: int
    step: str
    step_rank: int  # 0 exact, 1 case-insensitive, 2 fuzzy
    standalone: bool


def _patterns(needle: str, case_sensitive: bool, fuzzy: bool) -> list[tuple[str, re.Pattern]]:
    """The match steps for an entity string, in order of preference."""
    escaped = re.escape(needle)
    steps: list[tuple[str, re.Pattern]] = [(EXACT, re.compile(escaped))]
    if not case_sensitive:
        steps.append((CASE_INSENSITIVE, re.compile(escaped, re.IGNORECASE)))
    if fuzzy:
        pieces = _WORD_PIECE.findall(needle)
        if pieces:
            pattern = FUZZY_SEPARATOR.join(re.escape(piece) for piece in pieces)
            steps.append((FUZZY, re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)))
    return steps


def _all_matches(pattern: re.Pattern, text: str) -> list[Match]:
    """Every match of `pattern`, one per start position (so overlapping matches are included)."""
    found: list[Match] = []
    pos = 0
    while pos <= len(text):
        match = pattern.search(text, pos)
        if match is None:
            break
        if match.end() > match.start():
            found.append((match.start(), match.end()))
        pos = match.start() + 1
    return found


def _is_standalone(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] does not begin or end in the middle of a word."""
    if start > 0 and text[start - 1].isalnum() and text[start].isalnum():
        return False
    return not (end < len(text) and text[end].isalnum() and text[end - 1].isalnum())


def _occurrences(text: str, needle: str, case_sensitive: bool, fuzzy: bool) -> list[_Occurrence]:
    """Every occurrence of `needle` by every step, best first: standalone before in-word, then
    by step (exact, case-insensitive, fuzzy), then by position."""
    found = [
        _Occurrence(start, end, step, rank, _is_standalone(text, start, end))
        for rank, (step, pattern) in enumerate(_patterns(needle, case_sensitive, fuzzy))
        for start, end in _all_matches(pattern, text)
    ]
    found.sort(key=lambda o: (not o.standalone, o.step_rank, o.start, -o.end))
    return found


def _best_tier(occurrences: list[_Occurrence]) -> list[_Occurrence]:
    """The non-overlapping occurrences of the best (standalone, step) tier, left to right."""
    best = occurrences[0]
    kept: list[_Occurrence] = []
    for occurrence in occurrences:  # sorted by tier, then position
        if (occurrence.standalone, occurrence.step_rank) != (best.standalone, best.step_rank):
            break
        if not kept or occurrence.start >= kept[-1].end:
            kept.append(occurrence)
    return kept


def find_entities(
    text: str,
    entities: Sequence[ParsedEntity],
    *,
    case_sensitive: bool = False,
    fuzzy: bool = True,
    repeated: str = "all",
) -> tuple[list[AlignedEntity], list[Rejection]]:
    """Locate each entity string in `text`. Returns the aligned entities sorted by (start, -end)
    and a rejection for every entity that could not be placed (NOT_IN_TEXT, DUPLICATE, or
    EMPTY_TEXT for an empty string). Every entity is accounted for, also when `text` is empty."""
    if repeated not in REPEATED_MODES:
        raise ValueError(f"repeated must be one of {REPEATED_MODES}, got {repeated!r}")
    aligned: list[AlignedEntity] = []
    rejections: list[Rejection] = []
    if not entities:
        return aligned, rejections
    cache: dict[str, list[_Occurrence]] = {}

    def occurrences_of(needle: str) -> list[_Occurrence]:
        if needle not in cache:
            cache[needle] = _occurrences(text, needle, case_sensitive, fuzzy)
        return cache[needle]

    # "all": what each (text, label) yielded the first time: the number of mapped occurrences.
    mapped: dict[tuple[str, str], int] = {}
    # "cursor": the occurrences taken, per label, and where the previous match ended.
    taken: set[tuple[int, int, str]] = set()
    cursor = 0
    for entity in entities:
        needle = entity.text.strip() if isinstance(entity.text, str) else ""
        if not needle:
            rejections.append(
                Rejection(entity.text, entity.label, EMPTY_TEXT, "entity text is empty")
            )
            continue
        occurrences = occurrences_of(needle)
        if not occurrences:
            rejections.append(
                Rejection(
                    entity.text, entity.label, NOT_IN_TEXT, "the string does not occur in the text"
                )
            )
            continue
        if repeated == "all":
            key = (entity.text, entity.label)
            if key in mapped:
                rejections.append(
                    Rejection(
                        entity.text,
                        entity.label,
                        DUPLICATE,
                        f"already mapped to {mapped[key]} occurrence(s) by an earlier emission",
                    )
                )
                continue
            kept = _best_tier(occurrences)
            mapped[key] = len(kept)
            aligned.extend(
                AlignedEntity(o.start, o.end, entity.label, entity.text, o.step) for o in kept
            )
            continue
        choice = _next_free(occurrences, entity.label, taken, cursor)
        if choice is None:
            rejections.append(
                Rejection(
                    entity.text,
                    entity.label,
                    DUPLICATE,
                    "every occurrence is already taken by an earlier entity with the same label",
                )
            )
            continue
        taken.add((choice.start, choice.end, entity.label))
        cursor = choice.end
        aligned.append(
            AlignedEntity(choice.start, choice.end, entity.label, entity.text, choice.step)
        )
    aligned.sort(key=lambda a: (a.start, -a.end))
    return aligned, rejections


def _next_free(
    occurrences: list[_Occurrence], label: str, taken: set[tuple[int, int, str]], cursor: int
) -> _Occurrence | None:
    """The next occurrence not yet taken for `label`: the first standalone one at or after
    `cursor` (any step; the better step on a tie), else the first in-word one after it; failing
    both, the same search from the start of the text."""
    ordered = sorted(occurrences, key=lambda o: (not o.standalone, o.start, o.step_rank, -o.end))
    for from_start in (False, True):
        for occurrence in ordered:
            if (from_start or occurrence.start >= cursor) and (
                occurrence.start,
                occurrence.end,
                label,
            ) not in taken:
                return occurrence
    return None


def snap_to_tokens(
    doc: Doc, aligned: Sequence[AlignedEntity], *, mode: str = "expand", offset: int = 0
) -> tuple[list[Span], list[Rejection]]:
    """Turn character offsets (relative to `doc.text[offset:]`) into labelled spans of `doc`.

    `mode` is the `alignment_mode` of `Doc.char_span`: "strict" keeps only offsets on token
    boundaries, "contract" keeps the tokens inside the offsets, "expand" every token they touch.
    An entity that gives no span (or an empty one) is a TOKEN_MISALIGNED rejection; one that
    gives the same (start, end, label) span as an earlier one is a DUPLICATE rejection.
    Overlapping spans are all returned.
    """
    if mode not in ALIGNMENT_MODES:
        raise ValueError(f"mode must be one of {ALIGNMENT_MODES}, got {mode!r}")
    spans: list[Span] = []
    rejections: list[Rejection] = []
    seen: dict[tuple[int, int, str], AlignedEntity] = {}
    # len(doc.text) without Doc.text, which joins every token (costly per chunk of a long doc).
    n_chars = doc[-1].idx + len(doc[-1].text_with_ws) if len(doc) else 0
    for entity in aligned:
        start, end = entity.start + offset, entity.end + offset
        span = None
        if 0 <= start < end <= n_chars:
            span = doc.char_span(start, end, label=entity.label, alignment_mode=mode)
        if span is None or len(span) == 0:
            rejections.append(
                Rejection(
                    entity.text,
                    entity.label,
                    TOKEN_MISALIGNED,
                    f"characters {start}-{end} ({doc.text[start:end]!r}) do not give whole "
                    f"tokens with alignment_mode={mode!r}",
                )
            )
            continue
        key = (span.start, span.end, entity.label)
        if key in seen:
            earlier = seen[key]
            rejections.append(
                Rejection(
                    entity.text,
                    entity.label,
                    DUPLICATE,
                    f"gives the same tokens {span.text!r} as {earlier.text!r} "
                    f"at characters {earlier.start + offset}-{earlier.end + offset}",
                )
            )
            continue
        seen[key] = entity
        spans.append(span)
    spans.sort(key=lambda s: (s.start, -s.end, s.label_))
    return spans, rejections
