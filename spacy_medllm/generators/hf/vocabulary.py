"""The tokenizer's vocabulary as bytes, and `TokenConstraint`: which token ids an automaton allows.

`token_bytes` decodes every token id to the bytes it writes (byte-level BPE, SentencePiece and
byte-fallback vocabularies); `TokenConstraint` keeps them in a trie so that the tokens an
`AnswerAutomaton` state allows are found without scanning the whole vocabulary each step.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from spacy_medllm.generators.hf.automaton import AnswerAutomaton, State


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
        self._empty_ids: dict[bytes, Any] = {}

    def empty_answer_ids(self, written: bytes) -> Any:
        """Token ids that would make the answer `written` so far the empty list `[]` (a tensor),
        or None when it can no longer become one: "]" after an opened "[", "[]" (in one token,
        with any whitespace) before anything is written."""
        stage = written.strip()
        if stage not in (b"", b"["):
            return None
        if self._empty_ids.get(stage) is None:
            import torch

            def empties(data: bytes | None) -> bool:
                if not data:
                    return False
                rest = data.lstrip(b" \t\r\n")
                if stage == b"":
                    if not rest.startswith(b"["):
                        return False
                    rest = rest[1:].lstrip(b" \t\r\n")
                return rest.startswith(b"]")

            ids = [i for i, data in enumerate(self.token_bytes) if empties(data)]
            self._empty_ids[stage] = torch.tensor(ids, dtype=torch.long)
        return self._empty_ids[stage]

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
