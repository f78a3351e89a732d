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
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

CONSTRAINED_MODES = ("off", "schema", "grounded")

# The canonical layout, as json.dumps writes it.
_OPEN_ITEM = b'{"text": "'
_NEXT_ITEM = b', {"text": "'
_TEXT_TO_LABEL = b', "label": "'
_CLOSE_ITEM = b'"}'
_LITERALS = {"item": _OPEN_ITEM, "next": _NEXT_ITEM, "label": _TEXT_TO_LABEL, "close": _CLOSE_ITEM}
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
_QUOTE, _BACKSLASH = ord('"'), ord("\\")

State = tuple  # automaton states are hashable tuples; their first item names the phase
DONE: State = ("done",)


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
            for char, piece in zip(document, pieces, strict=True):
                boundaries.add(offset)
                if not char.isspace():
                    starts.append(offset)
                    first_costs.append(len(piece))
                for k in range(len(piece)):
                    to_boundary[offset + k] = len(piece) - k
                offset += len(piece)
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
            if byte == _QUOTE and prefix in self.labels:
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
            if phase == "open" and byte == _OPEN_ITEM[0]:
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
        if byte == _QUOTE:
            return ("lit", "label", 0) if has_text else None
        if byte == _BACKSLASH:
            return ("text", has_text, b"\\")
        if byte < 0x20:
            return None  # raw control characters are not allowed in JSON strings
        if byte < 0x80:
            return ("text", has_text or byte != 0x20, b"")
        return ("text", has_text, bytes([byte])) if _utf8_length(byte) else None

    def _step_grounded(self, state: State, byte: int) -> State | None:
        _, offsets, started = state
        if byte == _QUOTE and started and any(o in self._boundaries for o in offsets):
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
                result[_QUOTE] = ("lit", "label", 0)
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
                candidates.add(_QUOTE)
        elif phase == "list":
            candidates = {ord("[")}
        elif phase == "open":
            candidates = {ord("]"), _OPEN_ITEM[0]}
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


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the character a byte is written as -> the byte."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _decoder_type(tokenizer: Any) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, AttributeError):
        return None
    if decoder.get("type") == "Sequence":
        types = {d.get("type") for d in decoder.get("decoders", [])}
        return "ByteFallback" if "ByteFallback" in types else "Sequence"
    return decoder.get("type")


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """The bytes each token id writes into the text; None for special tokens (never in answers).

    Byte-level BPE tokens map back through GPT-2's byte alphabet (so tokens holding part of a
    UTF-8 character are exact); SentencePiece tokens turn "▁" into a space and `<0xNN>` into a
    byte; otherwise a token is decoded on its own.
    """
    size = len(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = {
        i: token for i, token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items()
    }
    kind = _decoder_type(tokenizer)
    decoder = _byte_decoder()
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    result: list[bytes | None] = []
    for i, piece in enumerate(pieces):
        if i in special or piece is None:
            result.append(None)
            continue
        if i in added:
            token = added[i]
            result.append(None if token.special else token.content.encode("utf8") or None)
            continue
        value: bytes | None = None
        if kind == "ByteLevel" and all(c in decoder for c in piece):
            value = bytes(decoder[c] for c in piece)
        elif kind == "ByteFallback" and len(piece) == 6 and piece.startswith("<0x"):
            value = bytes([int(piece[3:5], 16)])
        elif kind in ("ByteFallback", "Sequence", "Metaspace"):
            value = piece.replace("▁", " ").encode("utf8")
        else:
            text = tokenizer.decode([i])
            value = None if "\ufffd" in text else text.encode("utf8")
        result.append(value or None)
    return result


class _TrieNode:
    __slots__ = ("children", "ids")

    def __init__(self) -> None:
        self.children: dict[int, _TrieNode] = {}
        self.ids: list[int] = []


class TokenConstraint:
    """The allowed tokens of an automaton state, found by walking a trie of the vocabulary.

    One instance per tokenizer (building the trie takes about a second for 49k tokens); it is
    shared by every document and row. `stop_ids` are the end-of-sequence tokens.
    """

    def __init__(self, tokenizer: Any, stop_ids: Iterable[int]) -> None:
        self.stop_ids = sorted(set(int(i) for i in stop_ids))
        if not self.stop_ids:
            raise ValueError("Constrained decoding needs at least one end-of-sequence token id.")
        self.tokenizer = tokenizer
        self.token_bytes = token_bytes(tokenizer)
        self._forced_memo: dict[bytes, list[int]] = {}
        self.root = _TrieNode()
        for token_id, data in enumerate(self.token_bytes):
            if not data:
                continue
            node = self.root
            for byte in data:
                child = node.children.get(byte)
                if child is None:
                    child = node.children[byte] = _TrieNode()
                node = child
            node.ids.append(token_id)
        # Allowed tokens of document-free states: (ids, their distances, the largest distance).
        self._cache: dict[tuple[tuple[bytes, ...], State], tuple[Any, Any, float]] = {}

    def advance(self, automaton: AnswerAutomaton, state: State, token_id: int) -> State | None:
        """The state after the bytes of `token_id` (None if they are not allowed)."""
        data = self.token_bytes[token_id] if 0 <= token_id < len(self.token_bytes) else None
        if data is None:
            return state if automaton.is_done(state) and token_id in self.stop_ids else None
        for byte in data:
            state = automaton.step(state, byte)
            if state is None:
                return None
        return state

    def tokenize_forced(self, data: bytes) -> list[int]:
        """The tokenizer's own tokens for `data`, or [] if they would not write exactly `data`
        (a part of a UTF-8 character, a tokenizer that adds or normalises characters)."""
        if data not in self._forced_memo:
            tokens: list[int] = []
            try:
                text = data.decode("utf8")
            except UnicodeDecodeError:
                text = None
            if text:
                ids = list(self.tokenizer.encode(text, add_special_tokens=False))
                table = self.token_bytes
                written = [table[i] if 0 <= i < len(table) else None for i in ids]
                if all(written) and b"".join(written) == data:  # type: ignore[arg-type]
                    tokens = ids
            self._forced_memo[data] = tokens
        return self._forced_memo[data]

    def forced_tokens(self, automaton: AnswerAutomaton, state: State, left: int) -> list[int]:
        """Draft tokens for the bytes the schema forces after `state` (`"text": "` once `{` is
        written, `, "label": "` after an entity's closing quote, the rest of a label once its
        start is unique): the tokenizer's own tokens for them, as the answers a model is trained
        on are tokenized; at most `left`. Drafts are checked against the model before they count
        (the model may prefer another split, or merge the last one with what follows)."""
        data, _ = automaton.forced(state)
        if not data or left <= 0:
            return []
        return self.tokenize_forced(data)[:left]

    def allowed(self, automaton: AnswerAutomaton, state: State) -> tuple[list[int], list[float]]:
        """Token ids that may come next in `state`, each with the distance it leaves to DONE."""
        if automaton.is_done(state):
            return list(self.stop_ids), [0.0] * len(self.stop_ids)
        ids: list[int] = []
        dists: list[float] = []
        step_memo: dict[tuple[State, int], State | None] = {}
        stack = [(self.root, state)]
        while stack:
            node, current = stack.pop()
            if node.ids:
                dist = automaton.distance(current)
                ids.extend(node.ids)
                dists.extend([dist] * len(node.ids))
            successors = automaton.successors(current)
            if successors is None:  # free text: every child is a candidate
                for byte, child in node.children.items():
                    memo_key = (current, byte)
                    if memo_key in step_memo:
                        nxt = step_memo[memo_key]
                    else:
                        nxt = step_memo[memo_key] = automaton.step(current, byte)
                    if nxt is not None:
                        stack.append((child, nxt))
            else:
                for byte, nxt in successors.items():
                    child = node.children.get(byte)
                    if child is not None:
                        stack.append((child, nxt))
        return ids, dists

    def allowed_ids(self, automaton: AnswerAutomaton, state: State, left: int) -> Any:
        """A LongTensor of the tokens allowed in `state` when `left` tokens may still be generated.

        Results for states without a document are cached (they recur in every answer).
        """
        import torch

        key = (tuple(automaton.labels), state)
        cached = self._cache.get(key) if automaton.document is None else None
        if cached is None:
            ids, dists = self.allowed(automaton, state)
            cached = (
                torch.tensor(ids, dtype=torch.long),
                torch.tensor(dists, dtype=torch.float64),
                max(dists, default=0.0),
            )
            if automaton.document is None:
                self._cache[key] = cached
        ids_t, dists_t, largest = cached
        if left - 1 < largest:
            ids_t = ids_t[dists_t <= left - 1]
        return ids_t


class DocumentDrafts:
    """Draft tokens copied from the document while the model writes an entity's text.

    Entity texts are mostly copies of the document. Once the model has written the start of one,
    the document's bytes that follow the same start (JSON-escaped, as the answer writes them) are
    a good guess at what comes next, as in prompt-lookup decoding. The guess is tokenized as the
    entity text would be: the text so far and the guess together, keeping the tokens after the
    text so far when the split falls on it. Occurrences at or after the previous entity's match
    come first (answers list entities in order of appearance).
    """

    LOOKAHEAD_BYTES = 64

    def __init__(self, constraint: TokenConstraint, document: str, max_tokens: int) -> None:
        self.constraint = constraint
        self.encoded = json_string_bytes(document)
        self.max_tokens = max_tokens
        self._entity_at = -1  # where the current entity text starts in the answer
        self._cursor = 0  # where the previous entity's match ended in the encoded document
        self._match_end = 0  # where the current entity's match ends

    @staticmethod
    def current_entity(answer: bytes) -> tuple[int, bytes] | None:
        """Where the entity text being written starts in `answer`, and its bytes so far; None
        outside an entity text.

        `"text": "` cannot occur inside a JSON string (its quotes would be escaped), so the last
        one opens the current entity; its text is open while no unescaped `"` follows."""
        key = _OPEN_ITEM[1:]
        found = answer.rfind(key)
        if found < 0:
            return None
        start = found + len(key)
        escaped = False
        for byte in answer[start:]:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                return None
        return start, answer[start:]

    def draft(self, answer: bytes, left: int) -> list[int]:
        """Up to min(max_tokens, left) draft tokens for an answer written up to `answer` (bytes)."""
        limit = min(self.max_tokens, left)
        current = self.current_entity(answer)
        if current is None or not current[1] or limit <= 0:
            return []
        start, so_far = current
        if start != self._entity_at:  # a new entity: search after the previous one's match
            self._entity_at = start
            self._cursor = self._match_end
        found = self.encoded.find(so_far, self._cursor)
        if found < 0:
            found = self.encoded.find(so_far)
        if found < 0:
            return []
        self._match_end = found + len(so_far)
        guess = self.encoded[self._match_end : self._match_end + self.LOOKAHEAD_BYTES]
        if not guess:
            return []
        tokens = self._after(so_far, guess)
        # The last token may be cut by the lookahead window; keep it only at the document's end.
        if self._match_end + len(guess) < len(self.encoded):
            tokens = tokens[:-1]
        return tokens[:limit]

    def _after(self, so_far: bytes, guess: bytes) -> list[int]:
        """Tokens for `guess` as they follow `so_far` inside one entity text."""
        tokenizer, table = self.constraint.tokenizer, self.constraint.token_bytes
        text = (so_far + guess).decode("utf8", errors="ignore")
        ids = list(tokenizer.encode(text, add_special_tokens=False))
        written = 0
        for k, token_id in enumerate(ids):
            if written == len(so_far):
                return ids[k:]
            data = table[token_id] if 0 <= token_id < len(table) else None
            if not data:
                break
            written += len(data)
        alone = guess.decode("utf8", errors="ignore")
        return list(tokenizer.encode(alone, add_special_tokens=False)) if alone else []


# ---------------------------------------------------------------------------------------------
# transformers hooks
# ---------------------------------------------------------------------------------------------


class JsonAnswerLogitsProcessor:
    """A transformers logits processor: each row continues its answer only as its automaton allows.

    automata: one `AnswerAutomaton` per row (grounded ones carry the row's document).
    prompt_length: the padded prompt width; tokens after it are the answer.
    max_new_tokens: the length limit; answers are steered to close before it.
    """

    def __init__(
        self,
        constraint: TokenConstraint,
        automata: Sequence[AnswerAutomaton],
        prompt_length: int,
        max_new_tokens: int,
    ) -> None:
        self.constraint = constraint
        self.automata = list(automata)
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.states: list[State | None] = [a.start() for a in self.automata]
        self._seen = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        generated = input_ids.shape[1] - self.prompt_length
        if generated > self._seen:
            last = input_ids[:, -1].tolist()
            for row, token_id in enumerate(last):
                state = self.states[row]
                if state is not None:
                    self.states[row] = self.constraint.advance(self.automata[row], state, token_id)
            self._seen = generated
        left = self.max_new_tokens - generated  # tokens still to come, this one included
        mask = torch.full_like(scores, -math.inf)
        stop = torch.tensor(self.constraint.stop_ids, dtype=torch.long)
        for row, state in enumerate(self.states):
            # A row that left the automaton (it cannot happen) may only stop.
            ids = stop
            if state is not None:
                ids = self.constraint.allowed_ids(self.automata[row], state, left)
                if ids.numel() == 0:
                    ids = stop
            ids = ids[ids < scores.shape[1]].to(scores.device)
            mask[row, ids] = 0.0
        return scores + mask


class JsonScanner:
    """Follows a response byte by byte and says when its top-level JSON list has closed.

    Only a response whose first non-space character is `[` can close: anything else (prose, a
    `<think>` block, an object) is never cut. Brackets inside JSON strings do not count.
    """

    __slots__ = ("closed", "depth", "escaped", "in_string", "skipped")

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.closed = False
        self.skipped = False  # the response does not start with `[`

    def feed(self, data: bytes) -> bool:
        for byte in data:
            if self.closed or self.skipped:
                break
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif byte == _BACKSLASH:
                    self.escaped = True
                elif byte == _QUOTE:
                    self.in_string = False
            elif self.depth == 0:
                if byte == ord("["):
                    self.depth = 1
                elif byte not in b" \t\r\n":
                    self.skipped = True
            elif byte == _QUOTE:
                self.in_string = True
            elif byte in (ord("["), ord("{")):
                self.depth += 1
            elif byte in (ord("]"), ord("}")):
                self.depth -= 1
                self.closed = self.depth == 0
        return self.closed


class JsonEndStopping:
    """A transformers stopping criterion: a row is finished once its top-level JSON list closed."""

    def __init__(self, token_bytes_table: Sequence[bytes | None], batch: int, prompt_length: int):
        self.table = token_bytes_table
        self.scanners = [JsonScanner() for _ in range(batch)]
        self.prompt_length = prompt_length
        self._seen = 0

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        generated = input_ids.shape[1] - self.prompt_length
        if generated > self._seen:
            for row, token_id in enumerate(input_ids[:, -1].tolist()):
                data = self.table[token_id] if 0 <= token_id < len(self.table) else None
                if data:
                    self.scanners[row].feed(data)
            self._seen = generated
        return torch.tensor(
            [s.closed for s in self.scanners], dtype=torch.bool, device=input_ids.device
        )


class TokenLogprobRecorder:
    """A pass-through logits processor that keeps the log-probability of each chosen token.

    Put first in the list so it sees the model's raw logits. It holds one step's log-softmax at a
    time and reads off the chosen token at the next step, so memory stays batch x vocab (unlike
    generate's output_logits, which keeps every step).
    """

    def __init__(self) -> None:
        self._previous: Any = None
        self._steps: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self._previous is not None:
            self._steps.append(self._previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self._previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def logprobs(self, sequences: Any) -> Any:
        """A (batch, generated tokens) tensor, given generate's output sequences."""
        import torch

        steps = list(self._steps)
        if self._previous is not None:
            steps.append(self._previous.gather(1, sequences[:, -1:]).squeeze(1))
        if not steps:
            return torch.zeros((sequences.shape[0], 0))
        return torch.stack(steps, dim=1)
