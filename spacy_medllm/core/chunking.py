"""Cutting documents too long for the model's context into sentence pieces, never truncating."""

from __future__ import annotations

import re
from collections.abc import Callable

from spacy.tokens import Doc

Range = tuple[int, int]

# Sentence ends (., !, ?, ; or a closing bracket/quote after them) followed by white space, and
# blank lines. Used only when the Doc has no sentence boundaries from a parser or senter.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?;])[\"')\]]*\s+|\n\s*\n")


class ChunkingError(ValueError):
    """A document does not fit the model's context and may not (or cannot) be split."""


def sentence_ranges(doc: Doc) -> list[Range]:
    """Character ranges of the sentences, from the Doc's own boundaries or a punctuation rule."""
    if doc.has_annotation("SENT_START"):
        return [(sent.start_char, sent.end_char) for sent in doc.sents]
    ranges, start = [], 0
    for match in _SENTENCE_BREAK.finditer(doc.text):
        # closing quotes and brackets after the sentence end belong to the sentence (`?" `)
        end = match.start() + len(match.group()) - len(match.group().lstrip("\"')]"))
        if end > start:
            ranges.append((start, end))
        start = match.end()
    if start < len(doc.text):
        ranges.append((start, len(doc.text)))
    return ranges


def _word_windows(text: str, start: int, end: int, fits: Callable[[int, int], bool]) -> list[Range]:
    """Split text[start:end] at white space into the longest pieces that fit."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text[start:end])]
    words = [(start + a, start + b) for a, b in words]
    pieces: list[Range] = []
    i = 0
    while i < len(words):
        j = i + 1
        if not fits(words[i][0], words[i][1]):
            raise ChunkingError(
                f"the single word at characters {words[i][0]}-{words[i][1]} does not fit the "
                "model's context"
            )
        # Grow the window by doubling, then bisect back to the largest fitting size.
        step = 1
        while j < len(words) and fits(words[i][0], words[min(len(words), j + step) - 1][1]):
            j = min(len(words), j + step)
            step *= 2
        lo, hi = j, min(len(words), j + step)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(words[i][0], words[mid - 1][1]):
                lo = mid
            else:
                hi = mid - 1
        j = max(j, lo)
        pieces.append((words[i][0], words[j - 1][1]))
        i = j
    return pieces


def piece_budget(
    count_tokens: Callable[[str], int], max_chunk_tokens: int | None, budget: int | None = None
) -> int | None:
    """The prompt budget of one piece: the context's `budget` (None: no limit), capped at the
    prompt head (what `count_tokens("")` counts: system prompt, template) plus `max_chunk_tokens`
    tokens of text when that is set. `medllm_ner` plans its pieces with it, and fine-tuning on
    pieces (`finetune.chunk_examples`) too, so that both cut a text the same way."""
    if max_chunk_tokens is None:
        return budget
    cap = count_tokens("") + max_chunk_tokens
    return cap if budget is None else min(budget, cap)


def plan_chunks(
    doc: Doc,
    *,
    budget: int,
    count_tokens: Callable[[str], int],
    allow_split: bool = True,
) -> list[Range]:
    """Character ranges to prompt separately so that every prompt fits within `budget` tokens.

    `count_tokens(text)` is the size of the full prompt for `text`. A document that fits is one
    range. Otherwise sentences are packed greedily into ranges that fit; a sentence that alone is
    too long is cut at white space. Together the ranges cover every non-space character.
    """
    text = doc.text
    if count_tokens(text) <= budget:
        return [(0, len(text))]
    if not allow_split:
        raise ChunkingError(
            f"the document ({len(text)} characters, {count_tokens(text)} prompt tokens) is longer "
            f'than the model\'s prompt budget of {budget} tokens. Set long_documents = "split" to '
            "process it in sentence-aligned pieces."
        )

    def fits(start: int, end: int) -> bool:
        return count_tokens(text[start:end]) <= budget

    pieces: list[Range] = []
    for start, end in sentence_ranges(doc):
        if fits(start, end):
            pieces.append((start, end))
        else:
            pieces.extend(_word_windows(text, start, end, fits))
    # Pack pieces by their summed token counts (one tokenisation per piece, not per candidate
    # chunk), then check each packed chunk exactly and fall back to finer packing if needed.
    overhead = count_tokens("")
    costs = [max(0, count_tokens(text[s:e]) - overhead) + 1 for s, e in pieces]
    chunks: list[Range] = []
    group: list[int] = []
    used = overhead
    for index, cost in enumerate(costs):
        if group and used + cost > budget:
            chunks.extend(_checked(pieces, group, fits))
            group, used = [], overhead
        group.append(index)
        used += cost
    if group:
        chunks.extend(_checked(pieces, group, fits))
    return chunks


def _checked(
    pieces: list[Range], group: list[int], fits: Callable[[int, int], bool]
) -> list[Range]:
    """Join the pieces of `group` into one range if it fits, else into greedily grown ranges."""
    first, last = pieces[group[0]], pieces[group[-1]]
    if fits(first[0], last[1]):
        return [(first[0], last[1])]
    ranges: list[Range] = []
    for index in group:
        start, end = pieces[index]
        if ranges and fits(ranges[-1][0], end):
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges
