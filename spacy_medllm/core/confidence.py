"""Per-entity confidence from token log-probabilities of the answer. Standard library only.

A generator that can score (`HFGenerator.generate_scored`) returns, next to each response text, the
log-probability of every answer token under the model (before any constraint) and the characters
of the response each token wrote. An entity's confidence is the mean log-probability of the tokens
that wrote its text and its label in the answer: 0 is certain, more negative is less sure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

# The record reason for entities dropped by medllm_ner's confidence_threshold.
LOW_CONFIDENCE = "low_confidence"


@dataclass
class ScoredResponse:
    """A response with, for each generated token, its id, log-probability and the characters
    [start, end) of the response it wrote.

    Tokens that wrote no visible characters (special tokens) have start == end.
    """

    text: str
    logprobs: list[float] = field(default_factory=list)
    offsets: list[tuple[int, int]] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)

    def mean_logprob(self, start: int, end: int) -> float | None:
        """Mean log-probability of the tokens overlapping characters [start, end), None if none."""
        values = [
            lp
            for lp, (s, e) in zip(self.logprobs, self.offsets, strict=True)
            if s < end and e > start and e > s
        ]
        return sum(values) / len(values) if values else None


def _find_value(response: str, value: str, cursor: int) -> tuple[int, int] | None:
    """Where the JSON string `value` is written in `response` at or after `cursor`."""
    for written in (json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(value)[1:-1], value):
        index = response.find(written, cursor)
        if index >= 0:
            return index, index + len(written)
    return None


def entity_confidences(
    scored: ScoredResponse, entities: Sequence[tuple[str, str]]
) -> list[float | None]:
    """The confidence of each (text, label) entity, in the order the parser read them.

    Entities are looked up left to right in the response text (their JSON-escaped text, then their
    label after it), so repeated strings map to their own mentions. None where the entity's text
    cannot be found in the response (a reshaped answer).
    """
    result: list[float | None] = []
    cursor = 0
    for text, label in entities:
        found = _find_value(scored.text, text, cursor)
        if found is None:
            result.append(None)
            continue
        start, end = found
        cursor = end
        spans = [(start, end)]
        label_at = _find_value(scored.text, label, end)
        # The label belongs to this entity only if it comes before the next entity's text.
        if label_at is not None and label_at[0] - end <= len(', "label": "') + 4:
            spans.append(label_at)
            cursor = label_at[1]
        values = [
            lp
            for lp, (s, e) in zip(scored.logprobs, scored.offsets, strict=True)
            if e > s and any(s < b and e > a for a, b in spans)
        ]
        result.append(sum(values) / len(values) if values else None)
    return result
