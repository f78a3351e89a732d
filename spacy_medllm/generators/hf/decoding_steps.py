"""Pieces of a decoding step that transformers calls: logits processors, stopping criteria, drafts.

`JsonAnswerLogitsProcessor` masks every token an `AnswerAutomaton` does not allow (schema or
grounded constrained decoding); `JsonEndStopping` and `JsonScanner` end a row when its JSON list
closes; `DocumentDrafts` proposes the document's continuation of an entity text as draft tokens;
`TokenLogprobRecorder` keeps the model's own log-probabilities for confidence scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from spacy_medllm.generators.hf.automaton import (
    BACKSLASH,
    OPEN_ITEM,
    QUOTE,
    AnswerAutomaton,
    State,
    json_string_bytes,
)
from spacy_medllm.generators.hf.vocabulary import TokenConstraint


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
        key = OPEN_ITEM[1:]
        found = answer.rfind(key)
        if found < 0:
            return None
        start = found + len(key)
        escaped = False
        for byte in answer[start:]:
            if escaped:
                escaped = False
            elif byte == BACKSLASH:
                escaped = True
            elif byte == QUOTE:
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


class JsonAnswerLogitsProcessor:
    """A transformers logits processor: each row continues its answer only as its automaton allows.

    automata: one `AnswerAutomaton` per row (grounded ones carry the row's document).
    prompt_length: the padded prompt width; tokens after it are the answer.
    max_new_tokens: the length limit (one for all rows, or one per row); answers are steered to
        close before it.
    """

    def __init__(
        self,
        constraint: TokenConstraint,
        automata: Sequence[AnswerAutomaton],
        prompt_length: int,
        max_new_tokens: int | Sequence[int],
    ) -> None:
        self.constraint = constraint
        self.automata = list(automata)
        self.prompt_length = prompt_length
        if isinstance(max_new_tokens, int):
            max_new_tokens = [max_new_tokens] * len(self.automata)
        self.limits = list(max_new_tokens)
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
        mask = torch.full_like(scores, -math.inf)
        stop = torch.tensor(self.constraint.stop_ids, dtype=torch.long)
        for row, state in enumerate(self.states):
            left = self.limits[row] - generated  # tokens still to come, this one included
            # A row that left the automaton (it cannot happen), or is past its limit, may only stop.
            ids = stop
            if state is not None and left > 0:
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
                elif byte == BACKSLASH:
                    self.escaped = True
                elif byte == QUOTE:
                    self.in_string = False
            elif self.depth == 0:
                if byte == ord("["):
                    self.depth = 1
                elif byte not in b" \t\r\n":
                    self.skipped = True
            elif byte == QUOTE:
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


class EmptyAnswerDecision:
    """A transformers logits processor: `empty_decision` (below) for the rows whose answer can
    still become the empty list (nothing or `[` written), with the threshold (None: record only,
    into `store` under each row's key, at the steps where the answer can still become `[]`)."""

    def __init__(
        self,
        constraint: TokenConstraint,
        prompt_length: int,
        threshold: float | None,
        generator: Any = None,
        store: dict[str, float] | None = None,
        keys: list[str] | None = None,
    ) -> None:
        self.constraint = constraint
        self.prompt_length = prompt_length
        self.threshold = threshold
        self.generator = generator
        self.store = store
        self.keys = keys or []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        table = self.constraint.token_bytes
        if self.threshold is None and self.store is None:
            return scores
        for row in range(input_ids.shape[0]):
            written = b"".join(
                table[int(t)] or b"" for t in input_ids[row, self.prompt_length :].tolist()
            )
            empties = self.constraint.empty_answer_ids(written)
            if empties is None:
                continue
            record = None
            if self.store is not None and row < len(self.keys):
                record = (self.store, self.keys[row])
            scores[row] = empty_decision(
                scores[row], empties.to(scores.device), self.threshold, self.generator, record
            )
        return scores


def empty_decision(
    row_logits: Any,
    empties: Any,
    threshold: float | None,
    generator: Any = None,
    record: tuple[dict[str, float], str] | None = None,
) -> Any:
    """The logits for the decision between the empty answer and an entity: `empties` are the
    tokens that would make the answer `[]` ("]" after "[", or "[]" at the start). With a
    threshold the answer is `[]` exactly when the model's probability of them is at least the
    threshold: below it they are masked (the model must name an entity), at or above it every
    other token is (the model must answer `[]`). The probability is over the tokens still
    possible (masked ones are -inf); a forced choice (a blank document, a spent budget) is left
    alone. `record`: (store, key): the probability is written to store[key] (for `calibrate`);
    an answer decides twice when it opens with "[" alone ("[]" at the first step, "]" at the
    next), and store[key] keeps the larger probability: at a threshold up to it the answer is
    `[]`, above it not. Vetoes and forced empty answers are counted in the generator's stats."""
    import torch

    probabilities = torch.softmax(row_logits.float(), -1)
    p_empty = float(probabilities[empties].sum())
    if record is not None:
        store, key = record
        store[key] = max(store.get(key, 0.0), p_empty)
    if threshold is None:
        return row_logits
    greedy_empty = bool((empties == row_logits.argmax()).any())
    masked = row_logits.clone()
    if p_empty >= threshold and not greedy_empty:
        keep = masked[empties].clone()
        masked[:] = -float("inf")
        masked[empties] = keep
        what = "empty_answers_forced"
    elif p_empty < threshold and greedy_empty:
        masked[empties] = -float("inf")
        what = "empty_answers_vetoed"
    else:
        return row_logits
    if not torch.isfinite(masked).any():
        return row_logits
    if generator is not None:
        generator.stats[what] = generator.stats.get(what, 0) + 1
    return masked
