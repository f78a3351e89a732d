"""Constrained decoding: answers always valid JSON in the trained schema, optionally grounded.

The answer a model is trained to give (`PromptBuilder.answer`) is the JSON list
`[{"text": "...", "label": "LABEL"}, ...]` written by `json.dumps(..., ensure_ascii=False)`.
`AnswerAutomaton` accepts exactly that layout, byte by byte:

- "schema": the entity text is any JSON string with at least one non-space character (escapes and
  UTF-8 checked), the label one of the configured labels, nothing after the closing `]`;
- "grounded": in addition the entity text is a substring of the document, written with the
  canonical JSON escapes, starting at a non-space character. Its state keeps the set of positions
  in the encoded document that the text so far matches.

`TokenConstraint` lifts the automaton to tokens. Each token id is decoded once into its bytes
(byte-level BPE, SentencePiece byte fallback, added tokens) and put into a trie; the allowed tokens
of a state are found by walking that trie jointly with the automaton, so only the branches the
automaton accepts are visited, instead of testing every one of the ~49k tokens. Allowed sets of
states that do not depend on the document are cached. End-of-sequence tokens are allowed only
after the closing `]`.

A budget keeps answers whole: every state knows how many bytes it needs at least to close the
answer, and a token is allowed only if what remains fits in the tokens left (`max_new_tokens`),
so an answer is never cut off by the length limit (single-byte tokens exist in byte-level
vocabularies, so a closing path always fits).

`JsonAnswerLogitsProcessor` applies it per row of a batch during `generate`; `JsonEndStopping`
stops rows of unconstrained generation as soon as their top-level JSON list closes.

Draft tokens for `HFGenerator`'s draft-and-check loop come from here too: the bytes the automaton
forces next (`AnswerAutomaton.forced`, tokenized by `TokenConstraint.forced_tokens`) and, inside an
entity text, the document's continuation of it (`DocumentDrafts`).

Pure Python at import time; torch is imported where tensors are made.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

CONSTRAINED_MODES = ("off", "schema", "grounded")

# The canonical layout, as json.dumps writes it.
OPEN_ITEM = b'{"text": "'

_NEXT_ITEM = b', {"text": "'

_TEXT_TO_LABEL = b', "label": "'

_CLOSE_ITEM = b'"}'

_LITERALS = {"item": OPEN_ITEM, "next": _NEXT_ITEM, "label": _TEXT_TO_LABEL, "close": _CLOSE_ITEM}

# Where each literal leads once written.
_AFTER_LITERAL = {"item": "text", "next": "text", "label": "label", "close": "after"}

_SHORT_ESCAPES = {
    ord('"'): '"',
    ord("\\"): "\\",
    ord("/"): "/",
    ord("b"): "\b",
    ord("f"): "\f",
    ord("n"): "\n",
    ord("r"): "\r",
    ord("t"): "\t",
}

_HEX = frozenset(b"0123456789abcdefABCDEF")

QUOTE, BACKSLASH = ord('"'), ord("\\")

State = tuple  # automaton states are hashable tuples; their first item names the phase

DONE: State = ("done",)


# Scripts written without spaces between words: an entity may start at any of their characters.
# Thai and Lao, Myanmar, Khmer, kana, CJK.
_UNSPACED = (
    (0x0E00, 0x0EFF),
    (0x1000, 0x109F),
    (0x1780, 0x17FF),
    (0x3040, 0x30FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
)


def _may_start_entity(previous: str, char: str) -> bool:
    """Grounded entity texts start at a word: a non-space character that does not continue a word
    (a letter after a letter, a digit after a digit), except in scripts written without spaces. A
    model that meant a word the text does not have could otherwise copy a piece of another word
    ("tart" from "started"), which alignment would then widen to that whole word."""
    if char.isspace():
        return False
    if not (previous.isalpha() and char.isalpha()) and not (previous.isdigit() and char.isdigit()):
        return True
    return any(low <= ord(char) <= high for low, high in _UNSPACED)


def _utf8_length(lead: int) -> int:
    """The length of a UTF-8 sequence starting with byte `lead`, or 0 if it cannot start one."""
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def json_string_bytes(text: str) -> bytes:
    """`text` as it appears between the quotes of a JSON string written by json.dumps."""
    return json.dumps(text, ensure_ascii=False)[1:-1].encode("utf8")


class AnswerAutomaton:
    """A deterministic byte automaton for the canonical answer of `labels` (see module docstring).

    `document` switches on grounded mode. States are tuples: ("list",) before `[`, ("open",)
    after it, ("lit", name, i), ("text", has_non_space, pending_bytes), ("grounded", offsets,
    started), ("label", prefix), ("after",) after an item, DONE after `]`.
    """

    def __init__(self, labels: Sequence[str], document: str | None = None) -> None:
        if not labels:
            raise ValueError("Constrained decoding needs at least one label.")
        self.labels = [json_string_bytes(label) for label in labels]
        self._min_label = min(len(label) for label in self.labels)
        # Bytes needed, at least, from just after an entity text's closing quote to the final `]`.
        self._after_text = len(_TEXT_TO_LABEL) + self._min_label + len(_CLOSE_ITEM) + 1
        self.document = document
        if document is not None:
            pieces = [json_string_bytes(char) for char in document]
            self.encoded = b"".join(pieces)
            starts: list[int] = []
            boundaries: set[int] = set()
            # to_boundary[o]: bytes from offset o to the end of the character it is inside
            to_boundary = [0] * (len(self.encoded) + 1)
            offset = 0
            first_costs = []
            previous = ""
            for char, piece in zip(document, pieces, strict=True):
                boundaries.add(offset)
                if _may_start_entity(previous, char):
                    starts.append(offset)
                    first_costs.append(len(piece))
                for k in range(len(piece)):
                    to_boundary[offset + k] = len(piece) - k
                offset += len(piece)
                previous = char
            boundaries.add(offset)
            self._starts = tuple(starts)
            self._boundaries = frozenset(boundaries)
            self._to_boundary = to_boundary
            self._first_cost = min(first_costs) if first_costs else math.inf

    # -- states --------------------------------------------------------------------------------

    def start(self) -> State:
        return ("list",)

    def _text_start(self) -> State:
        if self.document is None:
            return ("text", False, b"")
        return ("grounded", self._starts, False)

    def _enter(self, phase: str) -> State | None:
        if phase == "text":
            state = self._text_start()
            return None if state[0] == "grounded" and not state[1] else state
        if phase == "label":
            return ("label", b"")
        return ("after",)

    def step(self, state: State, byte: int) -> State | None:
        """The state after `byte`, or None if the answer cannot continue with it."""
        phase = state[0]
        if phase == "lit":
            _, name, i = state
            literal = _LITERALS[name]
            if literal[i] != byte:
                return None
            if i + 1 < len(literal):
                return ("lit", name, i + 1)
            return self._enter(_AFTER_LITERAL[name])
        if phase == "text":
            return self._step_text(state, byte)
        if phase == "grounded":
            return self._step_grounded(state, byte)
        if phase == "label":
            prefix = state[1]
            if byte == QUOTE and prefix in self.labels:
                return ("lit", "close", 1)
            longer = prefix + bytes([byte])
            return ("label", longer) if any(lab.startswith(longer) for lab in self.labels) else None
        if phase == "list":
            return ("open",) if byte == ord("[") else None
        if phase in ("open", "after"):
            if byte == ord("]"):
                return DONE
            if self.document is not None and not self._starts:
                return None  # a blank document has nothing to copy: only `[]` fits
            if phase == "open" and byte == OPEN_ITEM[0]:
                return ("lit", "item", 1)
            if phase == "after" and byte == _NEXT_ITEM[0]:
                return ("lit", "next", 1)
            return None
        return None  # DONE: nothing may follow the closing bracket

    @staticmethod
    def _step_text(state: State, byte: int) -> State | None:
        _, has_text, pending = state
        if pending[:1] == b"\\":
            if len(pending) == 1:
                if byte in _SHORT_ESCAPES:
                    return ("text", has_text or not _SHORT_ESCAPES[byte].isspace(), b"")
                return ("text", has_text, b"\\u") if byte == ord("u") else None
            if byte not in _HEX:
                return None
            pending += bytes([byte])
            if len(pending) < 6:
                return ("text", has_text, pending)
            code = int(pending[2:], 16)
            if 0xD800 <= code <= 0xDFFF:  # lone surrogates are not text
                return None
            return ("text", has_text or not chr(code).isspace(), b"")
        if pending:  # inside a multi-byte UTF-8 character
            if not 0x80 <= byte <= 0xBF:
                return None
            pending += bytes([byte])
            if len(pending) < _utf8_length(pending[0]):
                return ("text", has_text, pending)
            try:
                char = pending.decode("utf8")
            except UnicodeDecodeError:
                return None
            return ("text", has_text or not char.isspace(), b"")
        if byte == QUOTE:
            return ("lit", "label", 0) if has_text else None
        if byte == BACKSLASH:
            return ("text", has_text, b"\\")
        if byte < 0x20:
            return None  # raw control characters are not allowed in JSON strings
        if byte < 0x80:
            return ("text", has_text or byte != 0x20, b"")
        return ("text", has_text, bytes([byte])) if _utf8_length(byte) else None

    def _step_grounded(self, state: State, byte: int) -> State | None:
        _, offsets, started = state
        if byte == QUOTE and started and any(o in self._boundaries for o in offsets):
            return ("lit", "label", 0)
        encoded = self.encoded
        size = len(encoded)
        moved = tuple(o + 1 for o in offsets if o < size and encoded[o] == byte)
        return ("grounded", moved, True) if moved else None

    def successors(self, state: State) -> dict[int, State] | None:
        """All (byte, next state) pairs of a state with few of them; None for free text."""
        phase = state[0]
        if phase == "text":
            return None
        if phase == "grounded":
            _, offsets, started = state
            encoded, size = self.encoded, len(self.encoded)
            grouped: dict[int, list[int]] = {}
            for o in offsets:
                if o < size:
                    grouped.setdefault(encoded[o], []).append(o + 1)
            result: dict[int, State] = {
                b: ("grounded", tuple(os), True) for b, os in grouped.items()
            }
            if started and any(o in self._boundaries for o in offsets):
                result[QUOTE] = ("lit", "label", 0)
            return result
        if phase == "lit":
            _, name, i = state
            byte = _LITERALS[name][i]
            nxt = self.step(state, byte)
            return {byte: nxt} if nxt is not None else {}
        if phase == "label":
            candidates = {
                lab[len(state[1])]
                for lab in self.labels
                if len(lab) > len(state[1]) and lab.startswith(state[1])
            }
            if state[1] in self.labels:
                candidates.add(QUOTE)
        elif phase == "list":
            candidates = {ord("[")}
        elif phase == "open":
            candidates = {ord("]"), OPEN_ITEM[0]}
        elif phase == "after":
            candidates = {ord("]"), _NEXT_ITEM[0]}
        else:
            return {}
        result = {}
        for byte in candidates:
            nxt = self.step(state, byte)
            if nxt is not None:
                result[byte] = nxt
        return result

    def is_done(self, state: State) -> bool:
        return state[0] == "done"

    def forced(self, state: State) -> tuple[bytes, State]:
        """The bytes every answer must continue with from `state` (empty if there is a choice),
        and the state after them: e.g. `"text": "` once `{` is written, or the rest of the only
        label that starts with the label's bytes so far."""
        run = bytearray()
        while not self.is_done(state):
            successors = self.successors(state)
            if successors is None or len(successors) != 1:
                break
            ((byte, state),) = successors.items()
            run.append(byte)
        return bytes(run), state

    def distance(self, state: State) -> float:
        """The fewest bytes that take `state` to DONE (the closing `]` included)."""
        phase = state[0]
        if phase == "done":
            return 0
        if phase in ("open", "after"):
            return 1
        if phase == "list":
            return 2
        if phase == "lit":
            _, name, i = state
            rest = len(_LITERALS[name]) - i
            if name in ("item", "next"):
                return rest + self._text_distance(self._text_start())
            if name == "label":
                return rest + self._min_label + len(_CLOSE_ITEM) + 1
            return rest + 1
        if phase == "label":
            prefix = state[1]
            left = min(len(lab) - len(prefix) for lab in self.labels if lab.startswith(prefix))
            return left + len(_CLOSE_ITEM) + 1
        return self._text_distance(state)

    def _text_distance(self, state: State) -> float:
        """Bytes to finish an entity text, close its quote, add the shortest label and `]`."""
        close = 1 + self._after_text
        if state[0] == "grounded":
            _, offsets, started = state
            if not started:
                return self._first_cost + close
            return min(self._to_boundary[o] for o in offsets) + close
        _, has_text, pending = state
        if pending[:2] == b"\\u":
            left = 6 - len(pending)
        elif pending[:1] == b"\\":
            left = 1  # `\"` writes a non-space character
        elif pending:
            left = _utf8_length(pending[0]) - len(pending)
        else:
            left = 0 if has_text else 1
        return left + close


def answer_automata(
    prompts: Sequence[Sequence[dict[str, str]]], labels: Sequence[str], mode: str
) -> list[AnswerAutomaton]:
    """One automaton per prompt for constrained decoding in `mode` ("schema" or "grounded": the
    document is the prompt's last user message)."""
    from spacy_medllm.generators.base import GenerationError

    if not labels:
        raise GenerationError(
            f"constrained = {mode!r} needs the labels answers may use: "
            "HFGenerator(labels=[...]) or generator.set_labels([...]) (medllm_ner does this)."
        )
    automata = []
    for i, prompt in enumerate(prompts):
        document = None
        if mode == "grounded":
            if not prompt or prompt[-1].get("role") != "user":
                raise GenerationError(
                    f'constrained = "grounded": prompt {i} does not end with a user message '
                    "holding the document"
                )
            document = prompt[-1]["content"]
        automata.append(AnswerAutomaton(labels, document))
    return automata
