"""Pieces whose answer fits: the cap a generator's answer budget puts on the size of a piece, and
cutting a piece in two when its answer still ran out (the JSON list was cut off).

A document cut only by the prompt budget can give pieces of thousands of tokens whose list of
entities cannot fit an answer of a few hundred tokens: the answer is cut off and the entities of
the rest of the piece are lost. A generator that says how many tokens an answer may take
(`answer_token_budget()`, the OpenAI-compatible backend) gets pieces of at most that many text
tokens (less the answer's fixed part), and a piece whose answer was cut off all the same is cut in
two at a sentence (or word) near its middle and asked again, up to `MAX_HALVINGS` times. A piece
still cut off then is kept with what its answer gave, and flagged.
"""

from __future__ import annotations

import re
from typing import Any

from spacy_medllm.generators.base import ANSWER_BASE_TOKENS

Range = tuple[int, int]

# Text tokens of a piece per answer token: an answer lists each entity with its label in JSON
# (about 12 tokens of markup and label, plus the entity's own tokens), and clinical text seldom
# has an entity in more than one word of three. The seed e-mails' answers take a third of their
# text's tokens at most (0.59 the densest); 1.0 leaves room.
TEXT_TOKENS_PER_ANSWER_TOKEN = 1.0
MIN_PIECE_TEXT_TOKENS = 32
MAX_HALVINGS = 4  # a piece is cut in two at most this many times (down to 1/16)
# A piece shorter than this (about MIN_PIECE_TEXT_TOKENS tokens) is never cut: the list of its
# entities fits any answer budget, so an answer that ran out there is the model repeating or
# inventing, and asking again for halves would only multiply the requests.
MIN_HALVED_CHARS = 4 * MIN_PIECE_TEXT_TOKENS
CUT_OFF = "truncated"  # the parser's repair for an answer that ended inside the JSON

_SENTENCE_END = re.compile(r"(?<=[.!?;。！？])[\"')\]]*\s+|\n\s*\n")
_SPACE = re.compile(r"\s+")


def answer_budget(generator: Any) -> int | None:
    """The generator's answer budget in tokens, if it tells (`answer_token_budget()`)."""
    method = getattr(generator, "answer_token_budget", None)
    if not callable(method):
        return None
    value = method()
    return int(value) if value is not None else None


def text_cap(generator: Any) -> int | None:
    """The most text tokens of a piece whose list of entities fits the generator's answer
    budget, or None when the generator does not say."""
    budget = answer_budget(generator)
    if budget is None:
        return None
    room = int((budget - ANSWER_BASE_TOKENS) * TEXT_TOKENS_PER_ANSWER_TOKEN)
    return max(MIN_PIECE_TEXT_TOKENS, room)


def halve(text: str, start: int, end: int) -> list[Range]:
    """text[start:end] in two pieces cut near the middle: at the sentence end nearest to it in the
    middle half, else at the white space nearest to it, else (no white space, e.g. Chinese) in
    the middle. White space at the cut belongs to neither piece; [] when the range is blank, one
    range when it cannot be cut (a single character)."""
    piece = text[start:end]
    lead = len(piece) - len(piece.lstrip())
    trail = len(piece.rstrip())
    if trail <= lead:
        return []
    start, end = start + lead, start + trail
    if end - start < 2:
        return [(start, end)]
    middle = (start + end) // 2
    quarter = (end - start) // 4
    breaks = [
        m for m in _SENTENCE_END.finditer(text, start, end) if abs(m.start() - middle) <= quarter
    ]
    if not breaks:
        breaks = list(_SPACE.finditer(text, start, end))
    if breaks:
        cut = min(breaks, key=lambda m: abs(m.start() - middle))
        # A sentence end's closing quotes or brackets (`?" `) stay with the left piece.
        closing = len(cut.group()) - len(cut.group().lstrip("\"')]"))
        left, right = (start, cut.start() + closing), (cut.end(), end)
    else:
        left, right = (start, middle), (middle, end)
    pieces = []
    for a, b in (left, right):
        chunk = text[a:b]
        a, b = a + (len(chunk) - len(chunk.lstrip())), a + len(chunk.rstrip())
        if b > a:
            pieces.append((a, b))
    return pieces
